"""What this machine has, read once for `kotune doctor`: packages, CUDA and the GPU, bitsandbytes'
backend, optional kernels, free disk, a Hub token's source (never its value), DVC remotes, git state.

Reading is kept apart from judging (kotune.doctor), so the doctor's verdicts are tested on fakes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kotune.config import ModelSection, Params
from kotune.fit import Gpu, detect_gpu


@dataclass(frozen=True)
class Environment:
    python: tuple[int, int, int]
    installed: dict[str, str]  # canonical distribution name -> version
    cuda: str | None  # the CUDA version torch runs with; None when no GPU is usable
    gpu: Gpu | None
    bitsandbytes: str | None  # the backend its native library loaded (CUDA, CPU, ...); None: does not import
    kernels: dict[str, str | None]  # optional kernel package -> None when usable, else why not
    disk_free: dict[str, tuple[str, int]]  # "hf cache" / "dvc cache" -> (folder, free bytes)
    hf_token: str | None  # where a token comes from; never its value
    model_local: bool  # model.name_or_path is a local folder or in the Hugging Face cache
    dvc_remotes: tuple[str, ...]
    git_changes: int | None  # uncommitted changes; None when not a git repository


def canonical(name: str) -> str:
    """PEP 503 names: `Liger_Kernel` and `liger-kernel` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def probe(params: Params) -> Environment:
    import torch

    gpu = detect_gpu()
    return Environment(
        python=tuple(sys.version_info[:3]), installed=installed_versions(),
        cuda=torch.version.cuda if gpu else None, gpu=gpu, bitsandbytes=bitsandbytes_backend(),
        kernels={"liger-kernel": liger_problem(), "unsloth": unsloth_problem()},
        disk_free={"hf cache": free_space(hf_cache()), "dvc cache": free_space(dvc_cache())},
        hf_token=token_source(), model_local=model_is_here(params.model), dvc_remotes=dvc_remotes(),
        git_changes=git_changes(),
    )


def installed_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def bitsandbytes_backend() -> str | None:
    try:
        from bitsandbytes import cextension
    except Exception:  # a broken install raises anything from ImportError to RuntimeError
        return None
    if type(cextension.lib).__name__.startswith("ErrorHandler"):  # its stand-in when the library failed to load
        return "none (native library failed to load)"
    return cextension.BNB_BACKEND


def liger_problem() -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "not installed"
    try:
        importlib.import_module("liger_kernel.transformers")  # needs Triton; applies no patch by itself
    except Exception as exc:
        return f"does not import: {type(exc).__name__}: {exc}"
    return None


def unsloth_problem() -> str | None:
    # Only looked up, not imported: importing Unsloth patches transformers, PEFT and TRL in this process.
    return None if importlib.util.find_spec("unsloth") else "not installed (pip install -r requirements-unsloth.txt)"


def hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def dvc_cache() -> Path:
    try:
        from dvc.config import Config

        folder = Config.from_cwd(validate=False).get("cache", {}).get("dir")
    except Exception:  # not a DVC repository, or an unreadable config: DVC's default
        folder = None
    return Path(folder or ".dvc/cache")


def free_space(folder: Path) -> tuple[str, int]:
    """Free bytes on the filesystem that holds `folder`, or would once it is created."""
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    return str(folder), shutil.disk_usage(existing).free


def token_source() -> str | None:
    from huggingface_hub import get_token

    if get_token() is None:
        return None
    named = [name for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if os.environ.get(name)]
    return named[0] if named else "token file from `hf auth login`"


def model_is_here(model: ModelSection) -> bool:
    if Path(model.name_or_path).exists():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision), str)
    except ValueError:  # not a valid Hub id
        return False


def dvc_remotes() -> tuple[str, ...]:
    try:
        from dvc.config import Config

        return tuple(Config.from_cwd(validate=False).get("remote", {}))
    except Exception:  # not a DVC repository
        return ()


def git_changes() -> int | None:
    try:
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return len(status.stdout.splitlines()) if status.returncode == 0 else None
