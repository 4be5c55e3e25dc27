"""bench/profiling.py: GPU idle time charged to the host phase that ended each wait. The profiler puts each
phase's range on the GPU timeline too; those ranges are not GPU work and must not hide the gaps they span."""

import importlib.util
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

spec = importlib.util.spec_from_file_location("profiling", ROOT / "bench" / "profiling.py")
profiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profiling)


def event(device, name, start, end):
    return SimpleNamespace(device_type=SimpleNamespace(name=device), name=name,
                           time_range=SimpleNamespace(start=start, end=end))


def test_idle_gaps_inside_an_annotated_phase_are_counted(capsys):
    events = [
        event("CPU", "phase:backward", 0, 1000),
        event("CUDA", "phase:backward", 10, 1000),  # the phase's range on the GPU timeline
        event("CUDA", "kernel_a", 10, 100),
        event("CUDA", "kernel_b", 400, 500),  # 300 us idle before it, while the host was in backward
    ]
    profiling.idle_by_phase(events, steps=1)
    out = capsys.readouterr().out
    assert "GPU idle 0.3 ms/step" in out
    assert "backward" in out


def a_synchronizing_call():
    import warnings

    warnings.warn("called a synchronizing CUDA operation", stacklevel=1)


def test_sync_trace_names_the_caller_of_each_sync(monkeypatch, capsys):
    import warnings

    modes = []
    monkeypatch.setattr(profiling.torch.cuda, "set_sync_debug_mode", modes.append)
    trace = profiling.SyncTrace()
    trace.start()
    for _ in range(4):
        a_synchronizing_call()
    loop = {}  # Unsloth's training loop is compiled from a string: no source line to show, so the names it loads
    exec("def compiled_loop(step):\n    return step()\n", {}, loop)
    loop["compiled_loop"](a_synchronizing_call)
    warnings.warn("the use_reentrant parameter should be passed explicitly", stacklevel=1)  # shown, not counted
    trace.stop(steps=2)
    out = capsys.readouterr().out
    assert modes == ["warn", 0]
    assert "host syncs: 2.5 per step over 2 steps" in out
    assert "<string>:2 compiled_loop [step]" in out
    assert "2.0/step at test_bench_profiling.py:" in out
    assert "a_synchronizing_call <- test_bench_profiling.py" in out
    assert "use_reentrant" not in out
