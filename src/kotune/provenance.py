"""Where a model came from: the git commit (and whether the tree was dirty) and dvc.lock's hashes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """Tracked files changed since the commit (DVC outputs are ignored by git, so they don't count)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def dvc_lock_hashes(paths: tuple[str, ...], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """The md5 dvc.lock records for each output path (data, adapter, ...), as DVC computed it."""
    lock = Path(lock)
    if not lock.exists():
        return {}
    found = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out["path"] in paths:
                found[out["path"]] = out.get("md5", "")
    return found


def provenance(paths: tuple[str, ...]) -> dict[str, str]:
    dirty = git_dirty()
    return {"git_commit": git_commit() or "unknown (not a git checkout)",
            "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
            **{f"dvc.lock md5 of {p}": h for p, h in dvc_lock_hashes(paths).items()}}
