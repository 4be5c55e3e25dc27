"""What bench/profile_*.py print: the kernels that take the most GPU time, the CPU ops that take the most
host time, and how busy the GPU was over the profiled steps (kernel time against wall time: a GPU
that waits on the host is the first thing to fix, METHOD.md)."""

import os


def report(profiler, steps: int, wall_seconds: float) -> None:
    events = profiler.key_averages()
    print(events.table(sort_by="self_cuda_time_total", row_limit=int(os.environ.get("ROWS", "30")),
                       max_name_column_width=70), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70), flush=True)
    kernels = [e for e in profiler.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kernels) / 1e6  # microseconds; one stream, so no overlap to subtract
    print(f"profiled {steps} steps: wall {wall_seconds / steps * 1e3:.0f} ms/step, GPU kernels "
          f"{busy / steps * 1e3:.0f} ms/step ({busy / wall_seconds:.0%} busy), {len(kernels) // steps} kernels/step",
          flush=True)
