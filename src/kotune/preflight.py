"""Params that cannot run on the device this stage got: named together, before anything loads.

config.py checks what is wrong anywhere (types, ranges, combinations); these checks need to know the
device, which only the stage resolves, and run before the tokenizer, data or model are touched, so a
misconfigured run costs seconds, not a model download or load.
"""

from __future__ import annotations

from kotune.config import EIGHT_BIT_OPTIMIZERS, MergeSection, Params
from kotune.errors import KotuneError


def cpu_problems(params: Params) -> list[str]:
    train, model = params.train, params.model
    problems = []
    if train.mixed_precision in ("bf16", "fp16"):
        problems.append(f"train.mixed_precision {train.mixed_precision} needs CUDA; use auto or no on the CPU")
    if train.optim in EIGHT_BIT_OPTIMIZERS:
        problems.append(f"train.optim {train.optim} needs CUDA (bitsandbytes' 8-bit optimizers); use adamw_torch")
    if train.use_liger_kernel:
        problems.append("train.use_liger_kernel needs CUDA (Liger's kernels are Triton GPU kernels)")
    if train.offload_activations:
        problems.append("train.offload_activations moves activations from GPU to CPU memory and needs CUDA; "
                        "turn it off on the CPU")
    if model.attn_implementation == "varlen":
        problems.append("model.attn_implementation varlen needs CUDA (FlashAttention's kernel); use sdpa on the CPU")
    if train.backend == "unsloth":
        problems.append("train.backend unsloth needs CUDA; use transformers on the CPU")
    if train.cuda_graph_step:
        problems.append("train.cuda_graph_step replays CUDA graphs and needs CUDA; turn it off on the CPU")
    return problems


def check_train(params: Params, device: str) -> None:
    problems = cpu_problems(params) if device == "cpu" else []
    if problems:
        raise KotuneError("the params cannot run on the CPU: " + "; ".join(problems))


def check_merge(merge: MergeSection, device: str) -> None:
    if device == "cpu" and merge.dtype == "float16":
        # The CPU has no fast float16 matmuls: the verification pass (base + adapter, then the merged model,
        # on real examples) would crawl, and float16's narrow range is what bfloat16 exists to avoid.
        raise KotuneError("merge.dtype float16 on the CPU: use bfloat16 (the default) or float32 here, "
                          "or run the merge on a GPU")
