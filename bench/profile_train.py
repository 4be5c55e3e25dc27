"""Profile steady steps of the real train stage (transformers backend): python bench/profile_train.py ARGS

Same arguments as `kotune train`. Builds the trainer through the stage's own functions, profiles steps
PROFILE_FROM..PROFILE_FROM+3 with torch.profiler and prints the CUDA kernels and CPU ops that take the
most time (METHOD.md: profile before optimizing). Writes nothing but the stage's checkpoint folder.
"""

import os
import time
from pathlib import Path

import torch
from profiling import report
from transformers import TrainerCallback

from kotune.config import load_params
from kotune.modeling import resolve_device
from kotune.stages import train

FIRST = int(os.environ.get("PROFILE_FROM", "6"))


class Profile(TrainerCallback):
    def __init__(self):
        self.profiler = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == FIRST:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == FIRST + 3:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            report(self.profiler, 3, wall)
            self.profiler = None


def main() -> None:
    args = train.parse_args()
    params = load_params(args.params)
    if params.train.backend == "unsloth":
        from kotune import unsloth_backend

        unsloth_backend.import_first()
    device = resolve_device(params.train.device)
    data = train.load_data(Path(args.data))
    trainer, _, _ = train.build_trainer(params, args, device, "profile", data)
    trainer.add_callback(Profile())
    trainer.train()


if __name__ == "__main__":
    main()
