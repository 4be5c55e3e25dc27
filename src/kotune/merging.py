"""Merge a LoRA adapter into its base, in 16-bit, and check the merge changed nothing it should not.

`merge.base: dequantized` merges into the NF4 → 16-bit round trip of the base: the weights the adapter
was trained against. `original` merges into the 16-bit base as published. Never into a 4-bit model:
re-quantizing the sum would throw away most of what the adapter learned.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from kotune.config import MergeSection, ModelSection, QuantSection
from kotune.modeling import load_base_model

log = logging.getLogger(__name__)


def load_merge_base(model: ModelSection, quant: QuantSection, merge: MergeSection, device: str):
    dtype = getattr(torch, merge.dtype)
    model = replace(model, torch_dtype=merge.dtype)
    if merge.base == "dequantized":
        as_trained = replace(quant, load_in_4bit=True, bnb_4bit_compute_dtype=merge.dtype)
        base = load_base_model(model, as_trained, device)
        base = base.dequantize()  # transformers swaps each Linear4bit for a Linear in `dtype`, one at a time
        base.is_loaded_in_4bit = False
    else:
        base = load_base_model(model, replace(quant, load_in_4bit=False), device)
    if hasattr(base.config, "quantization_config"):  # a merged model is a plain 16-bit model
        del base.config.quantization_config
    return base.to(dtype).eval()


def verification_batches(tokenizer, texts: list[str], batch_size: int = 4, max_length: int = 512) -> list[dict]:
    batches = []
    for start in range(0, len(texts), batch_size):
        batches.append(tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=max_length, add_special_tokens=False))
    return batches


@torch.no_grad()
def logits_of(model, batches: list[dict]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    out = []
    for batch in batches:
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        mask = batch["attention_mask"].to(device).bool()
        out.append(logits[mask].cpu())  # padding positions say nothing about the merge
    return out


def max_abs_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first, second, strict=True))


# Rounding the sum W + BA to 16 bits moves logits by a few units in the last place of the largest logits:
# 0.06 at |logit| 10 in bf16, about 1 at |logit| 100 in a random-weight 8B model. An unfaithful merge (wrong
# scaling, wrong base) moves them by the whole adapter's effect. So the default tolerance is relative.
RELATIVE_TOLERANCE = {"bfloat16": 0.03, "float16": 0.005, "float32": 1e-4}


def tolerance(merge: MergeSection, logits: list[torch.Tensor]) -> tuple[float, float]:
    """(the tolerance in force, the largest |logit|)."""
    largest = max(t.abs().max().item() for t in logits)
    if merge.tolerance is not None:
        return merge.tolerance, largest
    return RELATIVE_TOLERANCE[merge.dtype] * max(largest, 1.0), largest
