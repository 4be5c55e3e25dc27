"""Installed as sitecustomize.py by bench/gpu_vs_unsloth.sh: at exit, a process that trained through Unsloth's
offloaded gradient checkpointing prints how the offloaded layer inputs were reloaded in the backward pass.

    GCSTATS prefetch True {'issued': 1470, 'consumed': 1470, 'dropped': 0} double_buffer ...

`UNSLOTH_GC_PREFETCH=1` asks Unsloth to queue the reload of the next layer's input while the current layer's
backward runs, instead of when the host reaches that layer; `issued` and `consumed` show that it happened.
A process that never imported Unsloth prints nothing.
"""

import atexit
import sys


def _print_stats() -> None:
    checkpointing = sys.modules.get("unsloth_zoo.gradient_checkpointing")
    if checkpointing is None:
        return
    print("GCSTATS prefetch", getattr(checkpointing, "GC_PREFETCH", None),
          getattr(checkpointing, "GC_PREFETCH_STATS", None),
          "double_buffer", getattr(checkpointing, "USE_DOUBLE_BUFFER", None), file=sys.stderr, flush=True)


atexit.register(_print_stats)
