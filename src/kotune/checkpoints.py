"""Resumable, versioned checkpoints.

`models/checkpoints/` is a DVC output with `persist: true`: DVC keeps it across runs (so an
interrupted `dvc repro train` can resume) and still caches it (so `dvc push` keeps the checkpoints
and `dvc checkout` of an older commit brings them back). Because it persists, a folder left by a
different run must never be resumed from. Each complete checkpoint therefore carries a marker,
written only after the Trainer has finished saving it, holding the run's fingerprint: a hash of the
resolved model/quant/lora/train params, the processed data and the base model's identity.
At start-up, checkpoints without a marker (killed mid-save) or with another fingerprint are deleted,
each with a log line saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from kotune.atomic import write_json

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


class MarkComplete(TrainerCallback):
    """Write the marker after the Trainer has saved a checkpoint (on_save runs once saving is done)."""

    def __init__(self, current: str):
        self.current = current

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if path.is_dir():
            write_json(path / MARKER, {"fingerprint": self.current, "step": state.global_step})
        return control
