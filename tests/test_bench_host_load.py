"""bench/host_load.py: the CPU a command's threads used, by thread, over the whole run and its last seconds.
A busy worker thread must show apart from the main thread, and a child process's threads must be counted."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

BUSY_WORKER = """
import threading, time
def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
threading.Thread(target=spin, args=(1.5,)).start()
time.sleep(2.0)
"""


def rows(report: str, title: str) -> dict[str, float]:
    """CPU seconds per thread group in the report's table under `title`."""
    lines = report[report.index(title):].splitlines()[2:]
    table = {}
    for line in lines:
        if line.startswith(("last", "cgroup", "all CPUs")):
            break
        name, cpu = line[:24].strip(), line[24:].split()[1]  # after the thread count
        table[name] = float(cpu)
    return table


def test_a_busy_worker_thread_of_a_child_process_is_counted_apart(tmp_path):
    out = tmp_path / "host.txt"
    # `sh -c` puts the measured python one process below the command host_load starts.
    subprocess.run([sys.executable, str(ROOT / "bench" / "host_load.py"), "--out", str(out), "--series",
                    str(tmp_path / "host.csv"), "--interval", "0.1", "--tail", "1", "--",
                    "sh", "-c", f"{sys.executable} -c '{BUSY_WORKER}'"], check=True, capture_output=True)
    report = out.read_text()
    whole = rows(report, "whole run")
    workers = sum(cpu for name, cpu in whole.items() if name != "main thread")
    assert workers >= 1.0, report  # the worker spun 1.5 s
    assert whole["main thread"] < 0.5 * workers, report  # the main threads (sh, python) mostly slept
    assert "cgroup" in report and "all CPUs busy" in report
    series = (tmp_path / "host.csv").read_text().splitlines()
    assert series[0] == "seconds,thread,count,cpu_s,runq_wait_s" and len(series) > 5
