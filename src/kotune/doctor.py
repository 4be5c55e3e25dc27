"""`kotune doctor`: will the current params.yaml run here? One table, a verdict per line.

    kotune doctor [--params params.yaml] [--lock requirements.lock]

Python and the locked package versions, CUDA and the GPU (memory, compute capability, bf16),
bitsandbytes' backend, the optional kernels (Liger, Unsloth), disk free for the Hugging Face and DVC
caches, the Hub token (its source only, never its value), the DVC remote, a clean git tree, and the
params' predicted peak memory on this GPU (`kotune fit`). Exits with status 2 when a requirement of
the params is not met here (train.device cuda without CUDA, bf16 or varlen on a T4, Liger not
installed, publish.push without a token, ...); warnings alone exit 0.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from kotune.config import EIGHT_BIT_OPTIMIZERS, Params, load_params
from kotune.errors import KotuneError
from kotune.fit import (
    FLASH_ATTENTION_CAPABILITY,
    estimate,
    fits,
    most_layers_not_recomputed,
    needed_bytes,
    workload_from_params,
)
from kotune.machine import Environment, canonical
from kotune.memory import GiB
from kotune.model_shapes import ModelShape, resolve_shape
from kotune.preflight import cpu_problems

OK, WARN, FAIL, NONE = "ok", "warn", "FAIL", "-"
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python
CORE_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    detail: str


def read_lock(path: str | Path) -> dict[str, str] | None:
    path = Path(path)
    if not path.is_file():
        return None
    pins = (line.split("#")[0].strip().split("==") for line in path.read_text(encoding="utf-8").splitlines())
    return {canonical(pin[0]): pin[1].strip() for pin in pins if len(pin) == 2}


def check_packages(env: Environment, lock: dict[str, str] | None) -> Check:
    missing = [name for name in CORE_PACKAGES if name not in env.installed]
    if missing:
        return Check("packages", FAIL, f"not installed: {', '.join(missing)} (make venv installs requirements.lock)")
    if lock is None:
        return Check("packages", WARN, "no requirements.lock here: run from the repo root or pass --lock")
    # A local version label (+cpu, +cu130) names the build of the same release.
    differ = [f"{name} {env.installed.get(name, 'missing')} (locked {version})"
              for name, version in sorted(lock.items())
              if env.installed.get(name, "").split("+")[0] != version.split("+")[0]]
    if differ:
        shown = ", ".join(differ[:4]) + (f", and {len(differ) - 4} more" if len(differ) > 4 else "")
        return Check("packages", WARN, f"{len(differ)} of {len(lock)} differ from requirements.lock: {shown}")
    return Check("packages", OK, f"all {len(lock)} match requirements.lock")


def device_of(params: Params, env: Environment) -> str:
    return "cuda" if params.train.device == "cuda" or (params.train.device == "auto" and env.gpu) else "cpu"


def check_cuda(params: Params, env: Environment) -> Check:
    if env.gpu is not None:
        return Check("cuda", OK, f"CUDA {env.cuda}")
    if params.train.device == "cuda":
        return Check("cuda", FAIL, "no CUDA device, and train.device is cuda: run on a GPU machine "
                     "(Docker: --gpus all)")
    problems = cpu_problems(params)
    if problems:
        return Check("cuda", FAIL, "no CUDA device, and these params need one: " + "; ".join(problems))
    return Check("cuda", WARN if params.train.device == "auto" else NONE, "no CUDA device: training runs on the CPU")


def check_gpu(env: Environment) -> Check:
    if env.gpu is None:
        return Check("gpu", NONE, "none")
    gpu = env.gpu
    return Check("gpu", OK, f"{gpu.name}, {gpu.total_bytes / GiB:.1f} GiB, compute capability "
                 f"{'.'.join(map(str, gpu.capability or ()))}, bf16 {'yes' if gpu.bf16 else 'no'}")


def check_precision(params: Params, env: Environment) -> Check:
    if env.gpu is None or device_of(params, env) != "cuda":
        return Check("precision", NONE, "CPU: fp32")
    asked = [name for name, value in (("train.mixed_precision", params.train.mixed_precision),
                                      ("quant.bnb_4bit_compute_dtype", params.quant.bnb_4bit_compute_dtype),
                                      ("model.torch_dtype", params.model.torch_dtype)) if value in ("bf16", "bfloat16")]
    if env.gpu.bf16:
        return Check("precision", OK, "bf16")
    if asked:
        return Check("precision", FAIL, f"this GPU has no bf16, and {', '.join(asked)} ask for it: set them to auto "
                     "or float16/fp16 (auto falls back to fp16 on T4-class GPUs)")
    return Check("precision", OK, "fp16 (auto: this GPU has no bf16)")


def check_attention(params: Params, env: Environment) -> Check:
    implementation = params.model.attn_implementation
    capability = env.gpu.capability if env.gpu else None
    if implementation in ("varlen", "flash_attention_2") and capability and capability < FLASH_ATTENTION_CAPABILITY:
        return Check("attention", FAIL, f"model.attn_implementation {implementation} needs compute capability 8.0+ "
                     f"(FlashAttention), this GPU has {'.'.join(map(str, capability))}: use sdpa")
    if implementation == "flash_attention_2" and "flash-attn" not in env.installed:
        return Check("attention", FAIL, "model.attn_implementation flash_attention_2 needs the flash-attn package; "
                     "varlen runs the same kernel from PyTorch")
    return Check("attention", OK, implementation)


def check_bitsandbytes(params: Params, env: Environment) -> Check:
    needed = params.quant.load_in_4bit or params.train.optim in EIGHT_BIT_OPTIMIZERS
    on_gpu = device_of(params, env) == "cuda"
    if env.bitsandbytes is None:
        return Check("bitsandbytes", FAIL if needed else NONE, "does not import" + (
            ": quant.load_in_4bit / 8-bit optimizers need it" if needed else " (not needed by these params)"))
    detail = f"{env.installed.get('bitsandbytes', '?')}, {env.bitsandbytes} backend"
    if needed and on_gpu and env.bitsandbytes != "CUDA":
        return Check("bitsandbytes", FAIL, f"{detail}: 4-bit training on the GPU needs its CUDA library")
    return Check("bitsandbytes", OK, detail)


def check_kernel(package: str, asked_by: str | None, env: Environment) -> Check:
    reason = env.kernels.get(package, "not checked")
    if reason is None:
        return Check(package, OK, f"{env.installed.get(package, '?')}" + ("" if asked_by else " (not asked for)"))
    if asked_by:
        return Check(package, FAIL, f"{asked_by} needs it: {reason}")
    return Check(package, NONE, f"{reason}; optional, not asked for")


def check_disk(name: str, env: Environment, needed: int | None) -> Check:
    folder, free = env.disk_free[name]
    detail = f"{free / GiB:.1f} GiB free at {folder}"
    if needed is None:
        return Check(f"disk: {name}", NONE, detail)
    if free < needed:
        return Check(f"disk: {name}", FAIL, f"{detail}, needs about {needed / GiB:.1f} GiB")
    return Check(f"disk: {name}", WARN if free < 2 * needed else OK, f"{detail} (needs about {needed / GiB:.1f} GiB)")


def disk_needs(params: Params, env: Environment, shape: ModelShape | None) -> tuple[int | None, int | None]:
    """Bytes the Hugging Face cache (the 16-bit base download) and the DVC cache (the merged model, also
    copied out of the cache where reflinks are missing) will need; None when the shape is unknown."""
    if shape is None:
        return None, None
    merged = shape.total_params * (4 if params.merge.dtype == "float32" else 2)
    return (0 if env.model_local else shape.total_params * 2), 2 * merged


def check_token(params: Params, env: Environment) -> Check:
    if env.hf_token:
        return Check("hf token", OK, f"present ({env.hf_token}; never shown)")
    if params.publish.push:
        return Check("hf token", FAIL, "publish.push is true but there is no token: export HF_TOKEN or `hf auth login`")
    if not env.model_local:
        return Check("hf token", WARN, f"none, and {params.model.name_or_path} is not downloaded: gated models "
                     "(meta-llama/*) need one")
    return Check("hf token", NONE, "none (not needed by these params)")


def check_remote(env: Environment) -> Check:
    if env.dvc_remotes:  # names only: a remote's URL can hold credentials
        return Check("dvc remote", OK, ", ".join(env.dvc_remotes))
    return Check("dvc remote", WARN, "none configured: `dvc push` has nowhere to go (dvc remote add -d NAME URL)")


def check_git(env: Environment) -> Check:
    if env.git_changes is None:
        return Check("git", WARN, "not a git repository: the run's provenance cannot name a commit")
    if env.git_changes:
        return Check("git", WARN, f"{env.git_changes} uncommitted changes: commit before a run you will compare")
    return Check("git", OK, "clean")


def check_memory(params: Params, env: Environment, shape: ModelShape | None) -> Check:
    if env.gpu is None or shape is None or device_of(params, env) != "cuda":
        return Check("memory", NONE, "no GPU or no model shape: `kotune fit --gpu-mem 24GiB` estimates without one")
    workload = workload_from_params(params, shape, env.gpu)
    needed, total = needed_bytes(estimate(shape, workload)), env.gpu.total_bytes
    detail = f"predicted {needed / GiB:.1f} of {total / GiB:.1f} GiB"
    if needed > total:
        # Layers kept from recomputation are spare memory spent on speed: giving some back is the cheapest fix.
        kept = most_layers_not_recomputed(shape, workload, total) if workload.layers_not_recomputed else None
        if kept is not None and fits(shape, replace(workload, layers_not_recomputed=kept), total):
            return Check("memory", FAIL, f"{detail}: out of memory; train.layers_not_recomputed "
                         f"{workload.layers_not_recomputed} -> {kept} fits")
        return Check("memory", FAIL, f"{detail}: out of memory; `kotune fit` suggests a micro-batch and max_length")
    return Check("memory", OK, detail)


def run_checks(params: Params, env: Environment, lock: dict[str, str] | None, shape: ModelShape | None) -> list[Check]:
    hf_need, dvc_need = disk_needs(params, env, shape)
    python = ".".join(map(str, env.python))
    return [
        Check("python", OK if env.python[:2] >= MIN_PYTHON else FAIL, f"{python} (needs >= 3.11)"),
        check_packages(env, lock), check_cuda(params, env), check_gpu(env), check_precision(params, env),
        check_attention(params, env), check_bitsandbytes(params, env),
        check_kernel("liger-kernel", "train.use_liger_kernel" if params.train.use_liger_kernel else None, env),
        check_kernel("unsloth", "train.backend unsloth" if params.train.backend == "unsloth" else None, env),
        check_disk("hf cache", env, hf_need), check_disk("dvc cache", env, dvc_need),
        check_token(params, env), check_remote(env), check_git(env), check_memory(params, env, shape),
    ]


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.name:<{width}}  {c.verdict:<4}  {c.detail}" for c in checks)


def main(argv=None) -> None:
    from kotune.machine import probe

    parser = argparse.ArgumentParser(prog="kotune doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--lock", default="requirements.lock", help="the package lock to compare with")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        shape, _ = resolve_shape(params.model, params.tiny_model)
    except KotuneError:
        shape = None
    checks = run_checks(params, probe(params), read_lock(args.lock), shape)
    print(render(checks))
    failed = [c.name for c in checks if c.verdict == FAIL]
    if failed:
        raise KotuneError(f"{len(failed)} requirement(s) of {args.params} not met here: {', '.join(failed)}")
    warned = any(c.verdict == WARN for c in checks)
    print(f"verdict: {args.params} can run here" + (" (see the warnings)" if warned else ""))
