"""bench/unsloth_gc_stats.py: a process that used Unsloth's offloaded checkpointing says at exit whether the
reloads were prefetched; any other process says nothing (it is installed for every process on the device)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

FAKE_UNSLOTH = """
import sys, types
import unsloth_gc_stats
module = types.ModuleType("unsloth_zoo.gradient_checkpointing")
module.GC_PREFETCH, module.USE_DOUBLE_BUFFER = True, True
module.GC_PREFETCH_STATS = {"issued": 3, "consumed": 2, "dropped": 1}
sys.modules[module.__name__] = module
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT / "bench")})


def test_prints_the_reload_counts_at_exit():
    stderr = run(FAKE_UNSLOTH).stderr
    assert "GCSTATS prefetch True {'issued': 3, 'consumed': 2, 'dropped': 1} double_buffer True" in stderr


def test_silent_without_unsloth():
    assert run("import unsloth_gc_stats").stderr == ""
