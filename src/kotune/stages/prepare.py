"""prepare: raw records → canonical conversations → cleaned → length-filtered → seeded train/eval split.

    kotune prepare --params params.yaml --raw data/raw --out data/processed \
        --metrics metrics/data.json --plot plots/data/token_lengths.csv

Writes `train.jsonl`, `eval.jsonl` and `rejects.jsonl` (every set-aside record with its file, line
and reason) under --out. Outputs are byte-identical across runs of the same inputs and params.
"""

from __future__ import annotations

import argparse
import logging
import statistics

from kotune import dataprep
from kotune.atomic import atomic_dir, atomic_file, write_json, write_jsonl
from kotune.config import DataSection, load_params
from kotune.errors import KotuneError
from kotune.formats.registry import choose_format
from kotune.logs import log_config
from kotune.modeling import load_tokenizer
from kotune.rawread import list_raw_files, read_file
from kotune.stages import parse_stage_args

log = logging.getLogger("kotune.prepare")
HISTOGRAM_BIN = 32  # tokens per bar of the length plot


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune prepare", __doc__,
        raw="folder written by fetch (data/raw)",
        out="folder for train/eval/rejects.jsonl (data/processed)",
        metrics="JSON metrics file (metrics/data.json)",
        plot="CSV of the token-length histogram",
    )


def read_raw(folder: str, cfg: DataSection) -> list:
    records, empty = [], []
    for path in list_raw_files(folder):
        found = list(read_file(path, cfg.encoding, cfg.usr_bot.conversation_separator))
        if not found:
            log.warning("%s: no records (an empty file, [], or a header alone)", path)
            empty.append(str(path))
        records += found
    if not records:
        raise KotuneError(f"{', '.join(empty)}: no records (an empty file, [], or a header alone)")
    log.info("read %d raw records from %s", len(records), folder)
    return records


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    data = params.data
    log_config(log, "data", data)
    raw = read_raw(args.raw, data)
    fmt = choose_format(raw, data)
    outcome = dataprep.convert_all(raw, fmt, data)
    if data.dedup:
        dataprep.drop_duplicates(outcome)
    tokenizer = load_tokenizer(params.model)
    lengths = dataprep.filter_lengths(outcome, tokenizer, data)
    if not outcome.kept:
        write_outputs(args.out, outcome, [], [])
        first = outcome.rejects[0]
        raise KotuneError(f"no records left from {args.raw}; the reasons are in {args.out}/rejects.jsonl: "
                          f"{_reject_counts(outcome)}; the first: {first['where']}: {first['reason']}: "
                          f"{first['detail']}")
    train_idx, eval_idx = dataprep.split(outcome.kept, data)
    write_outputs(args.out, outcome, train_idx, eval_idx)
    write_json(args.metrics, metrics(outcome, lengths, train_idx, eval_idx, len(raw)))
    write_histogram(args.plot, lengths, data.max_tokens)
    log.info("kept %d (train %d, eval %d), rejected %d: %s", len(outcome.kept), len(train_idx), len(eval_idx),
             len(outcome.rejects), _reject_counts(outcome))


def write_outputs(out: str, outcome: dataprep.Outcome, train_idx: list[int], eval_idx: list[int]) -> None:
    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "train.jsonl", (dataprep.public(outcome.kept[i]) for i in train_idx))
        write_jsonl(tmp / "eval.jsonl", (dataprep.public(outcome.kept[i]) for i in eval_idx))
        write_jsonl(tmp / "rejects.jsonl", outcome.rejects)


def _reject_counts(outcome: dataprep.Outcome) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in outcome.rejects:
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    return dict(sorted(counts.items()))


def metrics(outcome: dataprep.Outcome, lengths: list[int], train_idx: list[int], eval_idx: list[int],
            raw_count: int) -> dict:
    stats = outcome.stats
    turns = [len(r["messages"]) for r in outcome.kept if "messages" in r]
    ordered = sorted(lengths)
    return {
        "records": {"raw": raw_count, "read": stats["read"], "kept": len(outcome.kept), "train": len(train_idx),
                    "eval": len(eval_idx), "rejected": len(outcome.rejects),
                    "not_read_max_records": stats["not_read_max_records"]},
        "rejects": _reject_counts(outcome),
        "turns": {"per_record_mean": round(statistics.fmean(turns), 3) if turns else 0,
                  "merged": stats["turns_merged"], "dropped_empty": stats["turns_dropped_empty"],
                  "dropped_trailing_prompt": stats["turns_dropped_trailing_prompt"],
                  "utterances_with_masked_names": stats["names_masked"]},
        "tokens": {"train": sum(lengths[i] for i in train_idx), "eval": sum(lengths[i] for i in eval_idx),
                   "mean": round(statistics.fmean(ordered), 2), "p50": ordered[len(ordered) // 2],
                   "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1]},
    }


def write_histogram(path: str, lengths: list[int], max_tokens: int) -> None:
    """Token-length histogram as CSV for `dvc plots`: one row per HISTOGRAM_BIN-token bar."""
    bins = [0] * (max_tokens // HISTOGRAM_BIN + 1)
    for length in lengths:
        bins[length // HISTOGRAM_BIN] += 1
    with atomic_file(path) as handle:
        handle.write("tokens,records\n")
        for index, count in enumerate(bins):
            handle.write(f"{index * HISTOGRAM_BIN},{count}\n")
