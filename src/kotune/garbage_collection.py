"""train.gc_every_n_steps: Python's garbage collector on a schedule, not in the middle of a step.

CPython's cyclic collector starts whenever allocations pass a threshold, which during training is
somewhere inside a forward or backward pass, and an older-generation collection walks every object
the process holds (torch, transformers, TRL, the compiled layers, the model's modules), while the GPU
waits for the host to queue its next kernels. torchtitan (`training.gc_freq`) and Megatron-LM
(`--manual-gc`) do the same as this: freeze what exists when training starts (it lives for the
whole run), switch automatic collection off, and collect the young generations every N steps.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

from transformers import TrainerCallback


class ScheduledGarbageCollection(TrainerCallback):
    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self.before: tuple[bool, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.before = collector_state()
        gc.collect()
        gc.freeze()  # model, optimizer and libraries: not garbage, so no collection needs to walk them
        gc.disable()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            gc.collect(1)  # the young generations: what the steps since the last collection left behind
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.before is not None:
            restore(*self.before)
            self.before = None
        return control


@contextmanager
def restored_afterwards():
    """Python's collector as it is now once the block ends, also when training fails inside it (the
    Trainer calls on_train_end only when training completes)."""
    before = collector_state()
    try:
        yield
    finally:
        restore(*before)


def collector_state() -> tuple[bool, int]:
    return gc.isenabled(), gc.get_freeze_count()


def restore(enabled: bool, frozen: int) -> None:
    if frozen == 0 and gc.get_freeze_count():  # frozen since (by on_train_begin)
        gc.unfreeze()
    if enabled:
        gc.enable()
