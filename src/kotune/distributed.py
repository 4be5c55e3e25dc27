"""The train stage on several processes (GPUs): launched through `accelerate launch`, rank 0 writes.

    train.num_processes: 2    train.distributed: ddp | fsdp-qlora    (params.yaml)

With train.num_processes > 1 and no launcher around it, `kotune train ARGS` runs itself again as

    accelerate launch --config_file conf/accelerate/<train.distributed>.yaml --num_processes N -m kotune train ARGS

and exits with its status, so dvc.yaml's command is the same for one GPU or eight. Under a launcher
(`accelerate launch` or `torchrun` set WORLD_SIZE and LOCAL_RANK: the command above, or one a user runs on
each machine of a multi-node job) it is one of the processes: PyTorch DDP or FSDP does the work, through
the Trainer; rank 0 alone deletes and marks checkpoints, writes TensorBoard events, the adapter, metrics and
plots, and the other ranks log warnings only.

Signals: the launching process runs accelerate in a session of its own and forwards SIGTERM/SIGINT to it
once (a terminal's Ctrl-C would otherwise reach accelerate twice, directly and forwarded, and a second signal
stops the ranks at once, unsaved); torchrun passes it to every rank, which all stop at the same step
(kotune.checkpoints.SaveOnSignal), and kills ranks that have not exited 30 s later.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from kotune.config import TrainSection
from kotune.errors import KotuneError

log = logging.getLogger("kotune.train")
ACCELERATE_CONFIGS = Path("conf/accelerate")  # relative to the repository root, where dvc runs the stage


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 of all processes (of every machine): the one that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def fsdp() -> bool:
    """Launched with FSDP (conf/accelerate/fsdp-qlora.yaml): FSDP, not a device map, places the model."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def should_launch(train: TrainSection) -> bool:
    return train.num_processes > 1 and not under_launcher()


def accelerate_config(train: TrainSection) -> Path:
    path = ACCELERATE_CONFIGS / f"{train.distributed}.yaml"
    if not path.is_file():
        raise KotuneError(f"train.num_processes {train.num_processes} needs {path} (accelerate's settings for "
                          f"train.distributed {train.distributed}): run kotune from the repository root")
    return path


def launch_command(train: TrainSection, argv: list[str]) -> list[str]:
    """`accelerate launch` (through this interpreter, so the same environment) of `kotune train ARGV`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(train)),
            "--num_processes", str(train.num_processes), "-m", "kotune", "train", *argv]


def check(train: TrainSection, device: str) -> None:
    """Before anything loads: the processes asked for can run here (or, under a launcher, are the ones running)."""
    if train.distributed == "fsdp-qlora" and device != "cuda" and (train.num_processes > 1 or fsdp()):
        raise KotuneError("train.distributed fsdp-qlora needs CUDA GPUs (accelerate's FSDP plugin refuses the CPU); "
                          "use ddp on the CPU")
    if under_launcher():
        if world_size() != train.num_processes:
            raise KotuneError(f"launched as {world_size()} processes (WORLD_SIZE) but train.num_processes is "
                              f"{train.num_processes}: set train.num_processes: {world_size()} (params.yaml records "
                              "what ran, and the batch per step depends on it)")
        if fsdp() != (train.distributed == "fsdp-qlora"):
            raise KotuneError(f"train.distributed is {train.distributed} but the launcher was started "
                              f"{'with' if fsdp() else 'without'} FSDP: launch with --config_file "
                              f"{ACCELERATE_CONFIGS / train.distributed}.yaml")
        return
    if device == "cuda" and train.num_processes > 1:
        import torch

        if train.num_processes > torch.cuda.device_count():
            raise KotuneError(f"train.num_processes is {train.num_processes} but {torch.cuda.device_count()} GPU(s) "
                              "are visible (CUDA_VISIBLE_DEVICES): lower it, or run on a machine with more GPUs")


def launch(train: TrainSection, argv: list[str]) -> int:
    """Run `accelerate launch … kotune train ARGV`; its exit status, or 128 + the signal that stopped it."""
    command = launch_command(train, argv)
    log.info("train.num_processes %d (%s): running %s", train.num_processes, train.distributed,
             shlex.join(["accelerate", "launch", *command[3:]]))
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_stop_with_parent)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        log.warning("%s: passing it to the %d training processes", signal.Signals(signum).name, train.num_processes)
        os.killpg(child.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)
                if signal.getsignal(signum) is not signal.SIG_IGN}  # `nohup`, background jobs: keep ignoring
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status != 0 and received:
        return 128 + received[0]  # accelerate reports a stopped rank as a failure (1); the shell's convention instead
    return status if status >= 0 else 128 - status


def _stop_with_parent() -> None:
    """In the launcher's child: if this process dies (even by SIGKILL), the kernel sends SIGTERM to accelerate,
    whose ranks save a checkpoint and stop, rather than training on unwatched (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(device: str) -> None:
    """In a launched process: join the process group (gloo on the CPU, NCCL on GPUs; accelerate picks it) and
    keep the other ranks' logs to warnings."""
    if world_size() == 1:
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)


def on_main(function, *args):
    """`function(*args)` on rank 0 only (it deletes or rewrites shared files); every rank gets its result."""
    if world_size() == 1:
        return function(*args)
    import torch.distributed as dist

    box = [function(*args) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """`value` from every rank, in rank order (every rank must call it)."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Every rank waits for the others here (every rank must call it); nothing on one process."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def max_over_processes(value: int) -> int:
    """The largest `value` of all processes. SaveOnSignal asks it after every step: a signal reaches the ranks
    at different steps, and a rank that saved and stopped alone would leave the others waiting forever in
    their next collective; so every rank stops at the same step, with the signal any of them got."""
    if world_size() == 1:
        return value
    import torch
    import torch.distributed as dist

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
