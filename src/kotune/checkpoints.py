"""Resumable, versioned checkpoints.

`models/checkpoints/` is a DVC output with `persist: true`: DVC keeps it across runs (so an
interrupted `dvc repro train` can resume) and still caches it (so `dvc push` keeps the checkpoints
and `dvc checkout` of an older commit brings them back). Because it persists, a folder left by a
different run must never be resumed from. Each complete checkpoint therefore carries a marker,
written only after the Trainer has finished saving it, holding the run's fingerprint: a hash of the
resolved model/quant/lora/train params, the processed data and the base model's identity.
At start-up, checkpoints without a marker (killed mid-save) or with another fingerprint are deleted,
each with a log line saying why.

Older checkpoints are deleted (train.save_total_limit) only once the newest is marked complete, and
SIGTERM or SIGINT (Ctrl-C) ends training with a checkpoint (SaveOnSignal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import signal
import threading
from pathlib import Path

from transformers import TrainerCallback

from kotune import distributed
from kotune.atomic import DiskFullError, disk_full, disk_full_error, write_json

log = logging.getLogger(__name__)
MARKER = "kotune_checkpoint.json"
FULL_HASH_BYTES = 2 * 2**30
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")  # also matches an unfinished tmp-checkpoint-N


def fingerprint(sections: dict, data_files: list[Path], base_model: str) -> str:
    """What makes a checkpoint's weights mean something: params, data bytes, base model identity."""
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True, ensure_ascii=False).encode())
    for path in data_files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(_model_identity(base_model).encode())
    return digest.hexdigest()[:20]


def _model_identity(name_or_path: str) -> str:
    """A Hub id names its weights (with model.revision in the params). A local folder is hashed: in full up
    to FULL_HASH_BYTES (a rebuilt tiny model has the same sizes and new weights); above that, names, sizes
    and modification times, since hashing 16 GB of weights on every start would cost minutes."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return name_or_path
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if sum(p.stat().st_size for p in files) <= FULL_HASH_BYTES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()
    return json.dumps([(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def step_of(path: Path) -> int:
    """N of checkpoint-N; -1 for anything else (tmp-checkpoint-N included)."""
    match = _CHECKPOINT.fullmatch(path.name)
    return int(match[1]) if match else -1


def resumable_checkpoint(folder: Path, current: str) -> Path | None:
    """The latest complete checkpoint of this run that has steps left to train; every other checkpoint
    folder is removed with a log line saying why. A finished run is not resumed: forcing the stage
    (`dvc repro -f train`) trains again from step 0."""
    if not folder.is_dir():
        return None
    kept = []
    for path in sorted((p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.search(p.name)), key=step_of):
        reason = _unusable(path, current)
        if reason:
            log.info("removing %s: %s", path, reason)
            shutil.rmtree(path)
        else:
            kept.append(path)
    if kept and _finished(kept[-1]):
        log.info("the checkpoints in %s are of a finished run: training again from step 0", folder)
        for path in kept:
            shutil.rmtree(path)
        return None
    return kept[-1] if kept else None


def _unusable(path: Path, current: str) -> str | None:
    marker = path / MARKER
    if step_of(path) < 0 or not marker.exists():
        return "incomplete (no completion marker: the run stopped while saving it)"
    if json.loads(marker.read_text())["fingerprint"] != current:
        return "made by a different run (params, data or base model changed)"
    return None


def _finished(path: Path) -> bool:
    state = json.loads((path / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"]


def checkpoint_disk_full(exc: BaseException, folder: Path, keep: int | None) -> DiskFullError | None:
    """If `exc` is a checkpoint that did not fit: remove what it left (it holds space, and resuming skips it
    anyway) and say what to change; the complete checkpoints stay, to resume from."""
    if not disk_full(exc, folder):
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / MARKER).exists()]
    for path in folder.glob("*checkpoint-*"):
        if path not in complete and _CHECKPOINT.search(path.name):
            log.info("removing %s: incomplete (its save failed)", path)
            shutil.rmtree(path, ignore_errors=True)
    each = max((sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in complete), default=0)
    return disk_full_error(folder, exc, (
        f"Each checkpoint takes {each / 2**20:.1f} MiB. Free space there (`df -h {folder}`), point --checkpoints "
        f"(paths.checkpoints in dvc.yaml) at a disk with room, or lower train.save_total_limit (now {keep}) to "
        "keep fewer checkpoints; then run the same command to resume from the last complete one."))


class MarkComplete(TrainerCallback):
    """After the Trainer has saved a checkpoint (on_save runs once saving is done): flush the logs, so they
    hold every step the checkpoint holds; write the marker; then delete the complete checkpoints beyond
    the newest `keep`. The Trainer itself deletes them before on_save, so a kill in between would leave
    keep - 1 complete checkpoints (none with train.save_total_limit: 1); training.sft_config turns that off.
    With several processes, rank 0 does it all once every rank has written its part of the checkpoint."""

    def __init__(self, current: str, keep: int | None = None, flush: tuple = ()):
        self.current, self.keep, self.flush = current, keep, flush

    def on_save(self, args, state, control, **kwargs):
        distributed.barrier()  # each rank writes its part (RNG state, FSDP shards): all done before the marker
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if distributed.is_main() and path.is_dir():
            for writer in self.flush:
                writer.flush()
            write_json(path / MARKER, {"fingerprint": self.current, "step": state.global_step})
            self._rotate(path.parent)
        return control

    def _rotate(self, folder: Path) -> None:
        if not self.keep or self.keep <= 0:
            return
        complete = sorted((p for p in folder.glob("checkpoint-*") if (p / MARKER).exists()), key=step_of)
        for path in complete[: -self.keep]:
            shutil.rmtree(path)


class SaveOnSignal(TrainerCallback):
    """SIGTERM (`docker stop`, Slurm, a preemption notice) or SIGINT (Ctrl-C) while training: finish the
    step, save a checkpoint and stop; `received` says which signal. A second signal acts at once, as if
    this were not installed (the previous handlers are back). Install it with `with SaveOnSignal() as stop:`.
    With several processes, every rank saves and stops at the same step: the first to end after any got it."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python runs handlers only there
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup`, background jobs: keep ignoring
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        while self.previous:
            signum, handler = self.previous.popitem()
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.received = signum
        self.__exit__()
        log.warning("%s received: saving a checkpoint after this step, then stopping (send it again to stop at "
                    "once, without saving)", signal.Signals(signum).name)

    def on_step_end(self, args, state, control, **kwargs):
        agreed = distributed.max_over_processes(self.received or 0)  # several processes: all stop at the same step
        if agreed:
            self.received = agreed
            control.should_save = control.should_training_stop = True
        return control
