"""Run a command and account for the host CPU its threads used, waited for, and lost to throttling.

Issue 6's profiles found the same ops taking 20-35% more host time in one process than in another on the
same machine (session 7, machine G). This tells apart the causes that leave such a trace: a busy thread of
our own (OpenMP workers spinning, a loader thread), time spent runnable but not running (other load on the
machine, `schedstat`'s run-queue wait), and the container's CPU quota pausing the whole process (cgroup
`cpu.stat` throttling). It reads only /proc and /sys, so it needs no privileges and no profiler.

    python3 bench/host_load.py --out host.txt -- python3 -m kotune train ...

Writes the per-thread table (grouped by thread name, over the command's whole life) to --out and prints it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

CGROUP_CPU_STATS = ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat", "/sys/fs/cgroup/cpu,cpuacct/cpu.stat")


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the command may be a shell that starts python)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def read_threads(pids: list[int]) -> dict[tuple[int, int], dict]:
    """(pid, tid) -> name, ns on CPU, ns runnable but waiting, involuntary context switches."""
    threads = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                run_ns, wait_ns, _ = (int(x) for x in (task / "schedstat").read_text().split())
                status = (task / "status").read_text()
            except (OSError, ValueError):
                continue
            involuntary = next((int(line.split()[1]) for line in status.splitlines()
                                if line.startswith("nonvoluntary_ctxt_switches")), 0)
            threads[(pid, int(task.name))] = {"name": name, "run": run_ns, "wait": wait_ns, "inv": involuntary}
    return threads


def read_throttling() -> dict[str, int]:
    for path in CGROUP_CPU_STATS:
        try:
            return {k: int(v) for k, v in (line.split() for line in Path(path).read_text().splitlines())}
        except OSError:
            continue
    return {}


def read_machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, as /proc/stat shows them (the host's, in most containers)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def thread_groups(threads: dict[tuple[int, int], dict], since: dict[tuple[int, int], dict]) -> dict[str, dict]:
    """Per thread name (numbered workers together, each process's main thread apart): count, and the counters'
    growth since `since`."""
    groups: dict[str, dict] = defaultdict(lambda: {"n": 0, "run": 0, "wait": 0, "inv": 0})
    for key, t in threads.items():
        before = since.get(key, {"run": 0, "wait": 0, "inv": 0})
        # The main thread apart: OpenMP workers and Python's own threads carry the same name as it.
        name = "main thread" if key[0] == key[1] else t["name"].rstrip("0123456789").rstrip("_-") or t["name"]
        g = groups[name]
        g["n"] += 1
        for counter in ("run", "wait", "inv"):
            g[counter] += t[counter] - before[counter]
    return groups


def table(title: str, groups: dict[str, dict], wall: float) -> list[str]:
    lines = [f"{title}: {wall:.1f} s",
             f"{'thread name':<24}{'count':>6}{'CPU s':>9}{'CPU %wall':>10}{'runq wait s':>12}{'involuntary':>12}"]
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["run"]):
        lines.append(f"{name:<24}{g['n']:>6}{g['run'] / 1e9:>9.2f}{100 * g['run'] / 1e9 / wall:>9.0f}%"
                     f"{g['wait'] / 1e9:>12.2f}{g['inv']:>12}")
    return lines


def report(snapshots: list[tuple[float, dict]], tail: float, throttle_before: dict, throttle_after: dict,
           machine: tuple[int, int, int, int]) -> str:
    """The whole run, then its last `tail` seconds (the steady steps, once loading and compiling are over)."""
    started, last = snapshots[0][0], snapshots[-1]
    lines = table("whole run", thread_groups(last[1], {}), last[0] - started)
    window_start = next(((at, threads) for at, threads in snapshots if at >= last[0] - tail), snapshots[0])
    lines += table(f"last {tail:.0f} s", thread_groups(last[1], window_start[1]), last[0] - window_start[0])
    if throttle_after:
        delta = {k: throttle_after[k] - throttle_before.get(k, 0) for k in throttle_after}
        lines.append("cgroup cpu.stat over the run: " + ", ".join(f"{k} {v}" for k, v in delta.items()))
    else:
        lines.append("cgroup cpu.stat: not readable here")
    busy0, total0, busy1, total1 = machine
    lines.append("all CPUs busy over the whole run (/proc/stat, this command included): "
                 f"{100 * (busy1 - busy0) / max(1, total1 - total0):.0f}%")
    return "\n".join(lines)


def write_series(path: Path, snapshots: list[tuple[float, dict]]) -> None:
    rows = ["seconds,thread,count,cpu_s,runq_wait_s"]
    for at, threads in snapshots[1:]:
        for name, g in sorted(thread_groups(threads, {}).items()):
            rows.append(f"{at - snapshots[0][0]:.2f},{name},{g['n']},{g['run'] / 1e9:.3f},{g['wait'] / 1e9:.3f}")
    path.write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--tail", type=float, default=20.0, help="seconds at the end to report on their own")
    parser.add_argument("--series", type=Path, help="CSV of each sample's cumulative CPU and wait per thread name, "
                        "to pick the steady window afterwards")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    throttle_before, machine_before, started = read_throttling(), read_machine_busy(), time.monotonic()
    child = subprocess.Popen(command)
    # A thread's counters only exist while it lives: each snapshot holds the last reading of every thread seen.
    snapshots: list[tuple[float, dict]] = [(started, {})]
    while child.poll() is None:
        snapshots.append((time.monotonic(), {**snapshots[-1][1], **read_threads(descendants(child.pid))}))
        time.sleep(args.interval)
    if args.series:
        write_series(args.series, snapshots)
    text = report(snapshots, args.tail, throttle_before, read_throttling(), (*machine_before, *read_machine_busy()))
    args.out.write_text(text + "\n")
    print(text, file=sys.stderr, flush=True)
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
