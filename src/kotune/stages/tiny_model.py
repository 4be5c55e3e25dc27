"""tiny_model: build the embedded default base model from data/corpus (see kotune.tiny_model).

    kotune tiny-model --params params.yaml --corpus data/corpus --out models/tiny-ko \
        --metrics metrics/tiny_model.json
"""

from __future__ import annotations

import argparse
import logging
import time

from kotune import tiny_model
from kotune.atomic import atomic_dir, write_json
from kotune.config import load_section
from kotune.logs import log_config
from kotune.stages import parse_stage_args

log = logging.getLogger("kotune.tiny_model")


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune tiny-model", __doc__,
        corpus="folder of Korean .txt files",
        out="model folder (tokenizer + safetensors)",
        metrics="JSON metrics file",
    )


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    cfg = load_section(args.params, "tiny_model")
    log_config(log, "tiny_model", cfg)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    paragraphs = tiny_model.read_corpus(args.corpus)
    tokenizer = tiny_model.build_tokenizer(paragraphs, cfg)
    model = tiny_model.build_model(tokenizer, cfg)
    stream = tiny_model.token_stream(tokenizer, paragraphs)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%d paragraphs, %d tokens, vocabulary %d, %.2fM parameters", len(paragraphs), len(stream),
             len(tokenizer), n_params / 1e6)
    losses = tiny_model.pretrain(model, stream, cfg)
    with atomic_dir(args.out) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
    write_json(args.metrics, {"parameters": n_params, "vocab_size": len(tokenizer), "corpus_tokens": len(stream),
                              **losses, "build_seconds": round(time.perf_counter() - started, 1)})
    log.info("pretrain loss %.3f -> %.3f; saved %s", losses["initial_loss"], losses["final_loss"], args.out)
