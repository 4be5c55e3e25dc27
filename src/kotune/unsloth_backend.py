"""`train.backend: unsloth`: the same train stage (data, SFTConfig, checkpoints, metrics) with the model
loaded and LoRA-wrapped by Unsloth (fused 4-bit LoRA kernels, offloaded gradient checkpointing).
Measured on an H100 (bench/results/2026-11-24-h100-issue6.md): on full-length rows, with fused AdamW
and the input embeddings in CPU memory, kotune's leanest and fastest path (0.90-1.03x Unsloth's own
loop over six hosts, best 9,998 tokens/s, at 6.04 GiB; conf/train/qlora-24gb-unsloth.yaml); on short
packed chats slower than kotune's own path (3,604 against 7,752 tokens/s), so the other presets do
not use it.

Optional: Unsloth pins older transformers/trl/datasets than requirements.lock, so it is installed on
its own (`pip install -r requirements-unsloth.txt`, or the image's `--build-arg BACKEND=unsloth`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from kotune.config import Params
from kotune.errors import KotuneError, hub_unreachable_message
from kotune.modeling import bnb_config, torch_dtype

log = logging.getLogger(__name__)
PATCHED = ("transformers", "peft", "trl")


def import_first() -> None:
    """Import Unsloth before transformers, PEFT and TRL: it patches them as it loads."""
    if importlib.util.find_spec("unsloth") is None:
        raise KotuneError("train.backend unsloth needs the unsloth package: pip install -r requirements-unsloth.txt "
                          "(or build the image with --build-arg BACKEND=unsloth), or set train.backend: transformers")
    early = [name for name in PATCHED if name in sys.modules]
    if early:
        log.warning("%s imported before unsloth: some of Unsloth's patches may not apply", ", ".join(early))
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no usage ping: runs stay offline
    import unsloth  # noqa: F401


def load_peft_model(params: Params, device: str):
    """The base model through Unsloth's FastLanguageModel, with kotune's quantization and LoRA settings."""
    if device != "cuda":
        raise KotuneError("train.backend unsloth needs CUDA; use train.backend: transformers on the CPU")
    from unsloth import FastLanguageModel

    model, quant, lora, train = params.model, params.quant, params.lora, params.train
    if model.attn_implementation != "sdpa":
        log.info("model.attn_implementation %s is not used: Unsloth picks its own attention kernels",
                 model.attn_implementation)
    checkpointing = "unsloth" if train.gradient_checkpointing else False  # "unsloth": offloads to CPU RAM
    dtype = torch_dtype(model.torch_dtype, device)
    try:
        base, _ = FastLanguageModel.from_pretrained(
            model_name=model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code,
            max_seq_length=train.max_length, dtype=dtype,
            load_in_4bit=quant.load_in_4bit, quantization_config=bnb_config(quant, device),
            use_gradient_checkpointing=checkpointing, random_state=train.seed,
            # The model named in params.yaml, not a pre-quantized unsloth/* copy: provenance stays true.
            use_exact_model_name=True, fix_tokenizer=False,
        )
    except OSError as exc:
        raise KotuneError(hub_unreachable_message("model", model.name_or_path, exc)) from None
    peft_model = FastLanguageModel.get_peft_model(
        base, r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
        target_modules=list(lora.target_modules), bias=lora.bias, use_rslora=lora.use_rslora,
        use_gradient_checkpointing=checkpointing, random_state=train.seed, max_seq_length=train.max_length,
    )
    keep_mixed_precision_off(train.mixed_precision, dtype)
    return peft_model


def keep_mixed_precision_off(mixed_precision: str, dtype) -> None:
    """`train.mixed_precision: no` means no autocast, the model computing in its own dtype, on both backends.
    Unsloth's patched SFTTrainer turns bf16 (or fp16) autocast on when SFTConfig asks for neither, unless
    UNSLOTH_MIXED_PRECISION is `bfloat16`; get_peft_model has just set it to `float32` for a 4-bit model.
    The trainer reads it once, as it is built, so it is set here, after get_peft_model and before that."""
    import torch

    if mixed_precision != "no":
        return
    if dtype == torch.float16:
        raise KotuneError("train.mixed_precision no with train.backend unsloth would train a float16 model in float16 "
                          "without loss scaling; set train.mixed_precision: auto, or model.torch_dtype: bfloat16")
    os.environ["UNSLOTH_MIXED_PRECISION"] = "bfloat16"
