"""Profile steady steps of the real train stage (transformers backend): python bench/profile_train.py ARGS

Same arguments as `kotune train`. Builds the trainer through the stage's own functions, profiles steps
PROFILE_FROM..PROFILE_FROM+3 with torch.profiler and prints the CUDA kernels and CPU ops that take the
most time (METHOD.md: profile before optimizing); with SYNC_TRACE=1 it counts those steps' host syncs by
their Python caller instead (profiling.SyncTrace). Writes nothing but the stage's checkpoint folder.
"""

import os
import time
from pathlib import Path

import torch
from profiling import SyncTrace, phase, report

from kotune.config import load_params
from kotune.modeling import resolve_device
from kotune.stages import train

FIRST = int(os.environ.get("PROFILE_FROM", "6"))
TRACE_SYNCS = os.environ.get("SYNC_TRACE") == "1"


class Profile:  # a transformers TrainerCallback; transformers is imported in main(), after Unsloth
    """Profiles steps FIRST..FIRST+3 and marks the host phases of every step, so the report can say which
    phase the GPU waited on."""

    def __init__(self, trainer):
        self.profiler, self.step = None, None
        trainer.get_batch_samples = phase("data", trainer.get_batch_samples)
        trainer.compute_loss = phase("loss and metrics", trainer.compute_loss)
        trainer.accelerator.backward = phase("backward", trainer.accelerator.backward)
        trainer.accelerator.clip_grad_norm_ = phase("clip", trainer.accelerator.clip_grad_norm_)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        model.forward = phase("forward", model.forward)
        optimizer.step = phase("optimizer", optimizer.step)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == FIRST and TRACE_SYNCS:
            self.profiler = SyncTrace()  # counts syncs instead of profiling (SYNC_TRACE=1)
            self.profiler.start()
        elif state.global_step == FIRST:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.started = time.perf_counter()
        self.step = torch.profiler.record_function("phase:step (other)")
        self.step.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is not None:
            self.step.__exit__(None, None, None)
        if self.profiler is None or state.global_step != FIRST + 3:
            return
        if TRACE_SYNCS:
            self.profiler.stop(3)
        else:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            report(self.profiler, 3, wall)
            # Between steps only what lives across steps is allocated: weights, LoRA, optimizer state.
            print(f"allocated between steps {torch.cuda.memory_allocated() / 2**30:.2f} GiB, peak "
                  f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
        self.profiler = None


def main() -> None:
    args = train.parse_args()
    params = load_params(args.params)
    if params.train.backend == "unsloth":
        from kotune import unsloth_backend

        unsloth_backend.import_first()
    from transformers import TrainerCallback

    profile = type("Profile", (Profile, TrainerCallback), {})
    device = resolve_device(params.train.device)
    data = train.load_data(Path(args.data))
    trainer, _, _ = train.build_trainer(params, args, device, "profile", data)
    trainer.add_callback(profile(trainer))
    trainer.train()


if __name__ == "__main__":
    main()
