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
