"""What bench/profile_*.py print: the kernels that take the most GPU time, the CPU ops that take the most
host time, how busy the GPU was over the profiled steps (kernel time against wall time: a GPU that waits
on the host is the first thing to fix, METHOD.md), and where in the step the GPU waited.

`phase(name)` marks a stretch of host work (data, forward, loss, backward, optimizer...). Each idle
stretch of the GPU is charged to the innermost phase the host was in when the kernel that ended the
wait was launched: that phase is what kept the GPU waiting (a host sync before it, or host work slower
than the kernels it queues)."""

import bisect
import collections
import dis
import functools
import os
import sys
import traceback
import warnings
from pathlib import Path

import torch

PREFIX = "phase:"


def phase(name: str, function):
    """`function`, run inside a profiler range named phase:<name>."""
    @functools.wraps(function)
    def marked(*args, **kwargs):
        with torch.profiler.record_function(PREFIX + name):
            return function(*args, **kwargs)
    return marked


def is_gpu_work(event) -> bool:
    """A kernel or a copy on the GPU. The profiler also puts each phase's range on the GPU timeline (a user
    annotation spanning its kernels and the gaps between them), which is neither busy time nor a kernel."""
    return event.device_type.name == "CUDA" and not event.name.startswith(PREFIX)


def report(profiler, steps: int, wall_seconds: float) -> None:
    events = profiler.key_averages()
    print(events.table(sort_by="self_cuda_time_total", row_limit=int(os.environ.get("ROWS", "30")),
                       max_name_column_width=70), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70), flush=True)
    kernels = [e for e in profiler.events() if is_gpu_work(e)]
    busy = sum(e.device_time for e in kernels) / 1e6  # microseconds
    print(f"profiled {steps} steps: wall {wall_seconds / steps * 1e3:.0f} ms/step, GPU kernels "
          f"{busy / steps * 1e3:.0f} ms/step ({busy / wall_seconds:.0%} busy), {len(kernels) // steps} kernels/step",
          flush=True)
    idle_by_phase(profiler.events(), steps)


def idle_by_phase(events, steps: int, threshold_us: float = 5.0) -> None:
    """GPU idle time per step, charged to the host phase that launched the kernel ending each wait."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events if is_gpu_work(e))
    phases = sorted((e.time_range.start, e.time_range.end, e.name[len(PREFIX):])
                    for e in events if e.device_type.name == "CPU" and e.name.startswith(PREFIX))
    if not kernels:
        return
    starts = [p[0] for p in phases]
    idle: dict[str, float] = {}
    waits: dict[str, int] = {}
    busy_until = kernels[0][1]
    for start, end in kernels[1:]:
        gap = start - busy_until
        if gap > threshold_us:
            # The launch came shortly before the kernel started; the innermost open phase at that moment.
            moment = start - 2.0
            name, latest = "outside the phases", -1.0
            for index in range(bisect.bisect_right(starts, moment) - 1, -1, -1):
                first, last, candidate = phases[index]
                if last >= moment and first > latest:
                    name, latest = candidate, first
                if moment - first > 60e6:  # phases are shorter than a minute: stop looking further back
                    break
            idle[name] = idle.get(name, 0.0) + gap
            waits[name] = waits.get(name, 0) + 1
        busy_until = max(busy_until, end)
    total = sum(idle.values())
    print(f"GPU idle {total / steps / 1e3:.1f} ms/step (gaps over {threshold_us:.0f} us), by the host phase that "
          "ended each wait:", flush=True)
    for name, micros in sorted(idle.items(), key=lambda item: -item[1]):
        print(f"  {name:<28} {micros / steps / 1e3:7.1f} ms/step  {waits[name] / steps:7.0f} waits/step", flush=True)


SYNC_WARNING = "called a synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") says


# torch's own frames are left out of the callers; by its folder, as torch can itself be installed under a
# folder named torch (/opt/torch/.venv/... on the device), with transformers and everything else beside it.
TORCH_DIR = str(Path(torch.__file__).parent) + os.sep


def _where(frame) -> str:
    """file:line function; for code compiled from a string (Unsloth's training loop), which has no source to
    point at, also the names that line loads, which say what it calls."""
    code, line = frame.f_code, frame.f_lineno
    where = f"{Path(code.co_filename).name}:{line} {code.co_name}"
    if code.co_filename.startswith("<"):
        names = dict.fromkeys(str(i.argval) for i in dis.get_instructions(code)
                              if i.positions and i.positions.lineno == line and i.opname.startswith("LOAD_")
                              and isinstance(i.argval, str))
        where += f" [{' '.join(names)}]"
    return where


class SyncTrace:
    """Counts the host syncs of a stretch of steps by where in Python they were asked for: CUDA's sync
    debug mode warns at every synchronizing call (`.item()`, a blocking copy, nonzero...), and each
    warning's Python stack names the caller. A sync in the backward pass surfaces at `backward()`: the
    autograd engine hands its threads' warnings to the caller when it returns."""

    def __init__(self, frames: int = 4):
        self.frames, self.counts, self.catcher = frames, collections.Counter(), None

    def start(self) -> None:
        self.catcher = warnings.catch_warnings()
        self.catcher.__enter__()
        warnings.simplefilter("always")  # every sync, not the first per call site
        self.shown, warnings.showwarning = warnings.showwarning, self.record
        torch.cuda.set_sync_debug_mode("warn")

    def record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING not in str(message):  # other warnings of the steps (a deprecation...) are not syncs
            return self.shown(message, category, filename, lineno, file, line)
        # From this method's caller (given, since walk_stack's own starting frame differs between Pythons).
        stack = [f for f, _ in traceback.walk_stack(sys._getframe(1))
                 if not f.f_code.co_filename.startswith(TORCH_DIR)
                 and f.f_code.co_filename not in (__file__, warnings.__file__)]
        where = " <- ".join(_where(f) for f in stack[:self.frames])
        self.counts[where] += 1

    def stop(self, steps: int) -> None:
        torch.cuda.set_sync_debug_mode(0)
        self.catcher.__exit__(None, None, None)
        total = sum(self.counts.values())
        print(f"host syncs: {total / steps:.1f} per step over {steps} steps", flush=True)
        for where, count in self.counts.most_common():
            print(f"  {count / steps:5.1f}/step at {where}", flush=True)
