"""What the evaluate stage measures: held-out loss, generations, EOS-stop rate, option log-likelihoods.

The loss counts the same tokens training counts (assistant turns, their <|eot_id|> included, for
conversations; every token for raw text), so eval losses here and in metrics/train.json agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from kotune.config import EvalSection
from kotune.template import render, render_prompt, stop_token_ids


def _device(model) -> torch.device:
    return next(model.parameters()).device


def encode_for_loss(tokenizer, record: dict, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask of the tokens whose prediction counts."""
    if "messages" in record:
        out = tokenizer.apply_chat_template(record["messages"], return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        ids = tokenizer(render(tokenizer, record), add_special_tokens=False)["input_ids"]
        mask = [1] * len(ids)
    return ids[:max_length], mask[:max_length]


@torch.no_grad()
def heldout_loss(model, tokenizer, records: list[dict], cfg: EvalSection, desc: str = "loss") -> dict:
    """Mean negative log-likelihood per counted token, and its perplexity."""
    encoded = [encode_for_loss(tokenizer, r, cfg.max_length) for r in records]
    total, count = 0.0, 0
    for start in tqdm(range(0, len(encoded), cfg.batch_size), desc=desc, unit="batch"):
        chunk = encoded[start: start + cfg.batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        counted = torch.zeros((len(chunk), width), dtype=torch.bool)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (row_ids, row_mask) in enumerate(chunk):
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
            counted[row, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
            attention[row, : len(row_ids)] = 1
        device = _device(model)
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")
        weights = counted[:, 1:].to(device)
        total += losses[weights].sum().item()
        count += int(weights.sum())
    loss = total / max(count, 1)
    return {"eval_loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 2), "tokens": count}


@dataclass
class Generation:
    text: str
    stopped: bool  # ended with EOS/EOT before max_new_tokens


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], cfg: EvalSection, sampled: bool) -> list[Generation]:
    """One batch of chat-formatted prompts, left-padded so every prompt ends where generation starts."""
    from transformers import GenerationConfig

    texts = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
    tokenizer.padding_side = side
    stop_ids = stop_token_ids(tokenizer)
    config = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=sampled, temperature=cfg.temperature if sampled else None,
        top_p=cfg.top_p if sampled else None, top_k=cfg.top_k if sampled else None,
        repetition_penalty=cfg.repetition_penalty, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    if sampled:
        torch.manual_seed(cfg.seed)
    out = model.generate(**batch, generation_config=config)
    results = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        ended = next((i for i, token in enumerate(row) if token in stop_ids), None)
        kept = row if ended is None else row[:ended]
        results.append(Generation(tokenizer.decode(kept, skip_special_tokens=True).strip(), ended is not None))
    return results


def loglikelihood(model, tokenizer):
    """(context, option) -> summed log-probability of the option's tokens after the context."""

    @torch.no_grad()
    def score(context: str, option: str) -> float:
        context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
        full_ids = tokenizer(context + option, add_special_tokens=True)["input_ids"]
        start = _common_prefix(context_ids, full_ids)
        ids = torch.tensor([full_ids], device=_device(model))
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        return logprobs[start - 1:, :].gather(1, targets[start - 1:, None]).sum().item()

    return score


def _common_prefix(a: list[int], b: list[int]) -> int:
    """BPE may merge across the context/option boundary; score from where the two tokenizations part."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return max(n, 1)
