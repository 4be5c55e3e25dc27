"""Atomic outputs: a stage that dies halfway leaves the previous output or none, never half of one.

A full disk is reported as a DiskFullError naming the output and what to change, whether the OS, a
library or torch's stream writer noticed it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from kotune.errors import KotuneError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# safetensors and the tokenizers write from Rust, whose errors reach Python as text: match the OS's words.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")
# torch.save reports a short write without an errno ("unexpected pos 576 vs 534"): on such an error,
# the disk is taken as full when it has less than this left.
SHORT_WRITE_WORDS = ("PytorchStreamWriter failed writing", "unexpected pos")
NEARLY_FULL_BYTES = 64 * 2**20


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask must set it to read it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp make owner-only temporaries (0600, 0700); an output gets the mode open() would give it,
# so a teammate, TensorBoard or a shared DVC cache can read it.
FILE_MODE, DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


class DiskFullError(KotuneError):
    """A write failed for want of space (ENOSPC, or EDQUOT: over a disk quota)."""


def free_bytes(path: str | Path) -> int:
    """Space left to this user on the disk holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException, where: str | Path) -> bool:
    """Whether `exc` (or an error it was raised from) means the disk holding `where` is full."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return True
        if any(words in str(link) for words in DISK_FULL_WORDS):
            return True
    short_write = any(words in str(link) for link in _chain(exc) for words in SHORT_WRITE_WORDS)
    return short_write and free_bytes(where) < NEARLY_FULL_BYTES


def disk_full_error(path: str | Path, exc: BaseException, advice: str) -> DiskFullError:
    """What failed, what the disk has left now, and `advice`."""
    first = next((link for link in _chain(exc) if isinstance(link, OSError) and link.strerror), None)
    # The library's own words too: a short write taken for a full disk can be checked against them.
    cause = first.strerror if first else f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    free = free_bytes(path) / 2**20
    return DiskFullError(f"the disk is full: writing {path} failed ({cause}); {free:.1f} MiB is free there now. "
                         + advice)


def _output_advice(path: Path) -> str:
    return (f"Free space there (`df -h {path.parent}` shows it) or point this output at a disk with room "
            f"(the paths in dvc.yaml); {path} was left as it was before.")


def _remove_leftovers(path: Path) -> None:
    """A writer killed outright (SIGKILL, the OOM killer) leaves its temporary beside `path`, for a merged
    model as large as the model: remove those of `path` before writing it again. One writer per output is
    assumed, as under `dvc repro`, which locks the repository while a stage runs."""
    leftover = re.compile(rf"\.{re.escape(path.name)}\.([a-z0-9_]+\.tmp|old)")
    if not path.parent.is_dir():
        return
    for stale in path.parent.iterdir():
        if leftover.fullmatch(stale.name):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _raise_disk_full(exc: BaseException, path: Path) -> None:
    if disk_full(exc, path.parent) and not isinstance(exc, DiskFullError):
        raise disk_full_error(path, exc, _output_advice(path)) from exc


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None) as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a power cut cannot leave an empty `path`
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_disk_full(exc, path)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temporary folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(DIR_MODE)
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_disk_full(exc, path)
        raise


def dumps_json(value) -> str:
    """Stable, readable JSON for tracked files: Hangul as is, fixed key order given by the caller."""
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def write_json(path: str | Path, value) -> None:
    with atomic_file(path) as handle:
        handle.write(dumps_json(value))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
