"""merge: fold the LoRA adapter into a 16-bit copy of the base and verify it against base + adapter.

    kotune merge --params params.yaml --adapter models/adapter --data data/processed \
        --out models/merged --metrics metrics/merge.json

Writes sharded safetensors with the tokenizer, the chat template and a generation_config whose EOS
ids include <|eot_id|>. Fails if merged logits differ from base+adapter logits by more than
merge.tolerance on the first merge.verify_examples eval conversations.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from kotune import merging, preflight, training
from kotune.atomic import atomic_dir, write_json
from kotune.config import load_params
from kotune.errors import KotuneError
from kotune.logs import log_config
from kotune.modeling import require_safetensors, resolve_device
from kotune.stages import parse_stage_args
from kotune.template import stop_token_ids

log = logging.getLogger("kotune.merge")


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune merge", __doc__,
        adapter="the trained adapter (models/adapter)",
        data="folder with eval.jsonl, for the verification",
        out="output folder for the merged model",
        metrics="JSON metrics file",
    )


def save_merged(model, tokenizer, merge, out: str) -> list[Path]:
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=merge.max_shard_size, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shards = sorted(p.name for p in tmp.glob("*.safetensors"))
    return [Path(out) / name for name in shards]


def main(argv=None) -> None:
    from peft import PeftModel
    from transformers import AutoTokenizer

    args = parse_args(argv)
    params = load_params(args.params)
    log_config(log, "merge", params.merge)
    device = resolve_device("auto")
    preflight.check_merge(params.merge, device)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.adapter)  # the template and pad token training used
    base = merging.load_merge_base(params.model, params.quant, params.merge, device)
    require_safetensors(args.adapter, "adapter")
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    batches = merging.verification_batches(tokenizer, training.verification_texts(tokenizer, Path(args.data),
                                                                         params.merge.verify_examples))
    before = merging.logits_of(model, batches)
    merged = model.merge_and_unload()
    difference = merging.max_abs_difference(before, merging.logits_of(merged, batches))
    allowed, largest = merging.tolerance(params.merge, before)
    shards = save_merged(merged, tokenizer, params.merge, args.out)
    write_json(args.metrics, {
        "max_abs_logit_diff": round(difference, 6), "tolerance": round(allowed, 6), "max_abs_logit": round(largest, 3),
        "verify_tokens": sum(int(b["attention_mask"].sum()) for b in batches), "shards": len(shards),
        "size_gib": round(sum(p.stat().st_size for p in shards) / 2**30, 4),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_memory_gib": round(training.peak_memory_gib(device), 3),
    })
    log.info("merged into %s (%s base, %s): %d shard(s); max |logit difference| %.2e", args.out,
             params.merge.base, params.merge.dtype, len(shards), difference)
    if difference > allowed:
        raise KotuneError(f"merged logits differ from base+adapter by {difference:.3g} > merge.tolerance "
                          f"{allowed:.3g}: the merge is not faithful; see {args.metrics}")
