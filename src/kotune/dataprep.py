"""The steps of `prepare`, as plain functions over lists: convert, dedup, length-filter, split.

Every record that does not reach train/eval leaves as a reject row
``{"source", "line", "reason", "detail", "record"}``; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType

from tqdm import tqdm

from kotune.config import DataSection
from kotune.formats import Reject, descend
from kotune.rawread import RawRecord
from kotune.template import render


@dataclass
class Outcome:
    kept: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    def reject(self, origin: dict, reason: str, detail: str, record) -> None:
        self.rejects.append({**origin, "reason": reason, "detail": detail, "record": public(record)})


def origin_of(raw: RawRecord, where: str) -> dict:
    """Where a record came from: file and line for people, `where` adds the path inside a document."""
    return {"source": raw.file, "line": raw.line, "where": where}


def public(record):
    """A record without kotune's bookkeeping keys (those starting with `_`)."""
    if isinstance(record, dict):
        return {k: v for k, v in record.items() if not k.startswith("_")}
    return record


def record_id(record: dict) -> str:
    """Content hash of the canonical turns: equal content, equal id (exact-duplicate detection).

    A source's own ids (`id`, AI Hub's `dialogueID`) are not used: two records sharing one but not their turns
    are two examples and both kept; two with different ids and the same turns are duplicates."""
    content = record.get("messages", record.get("text"))
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:16]


def expand(raw: list[RawRecord], fmt: ModuleType, cfg: DataSection) -> list[tuple[RawRecord, str, object]]:
    """(raw record, where, value) for every format record, including ones nested in containers."""
    items = []
    for record in raw:
        nested = [] if record.error else list(descend(record.value, lambda v: fmt.is_record(v, cfg)))
        if not nested:
            items.append((record, record.where, record.value))
        for path, value in nested:
            items.append((record, f"{record.where} {path}".rstrip() if path else record.where, value))
    return items


def convert_all(raw: list[RawRecord], fmt: ModuleType, cfg: DataSection) -> Outcome:
    outcome = Outcome()
    items = expand(raw, fmt, cfg)
    if cfg.max_records is not None and len(items) > cfg.max_records:
        outcome.stats["not_read_max_records"] = len(items) - cfg.max_records
        items = items[: cfg.max_records]
    outcome.stats["read"] = len(items)
    for record, where, value in tqdm(items, desc=f"convert ({fmt.NAME})", unit="rec", disable=len(items) < 2000):
        origin = origin_of(record, where)
        if record.error:
            outcome.reject(origin, record.error[0], record.error[1], record.value)
            continue
        turn_stats: Counter = Counter()  # counted only for records that convert, so rejects don't inflate them
        try:
            canonical = fmt.convert(value, cfg, turn_stats)
        except Reject as exc:
            outcome.reject(origin, exc.reason, exc.detail, value)
            continue
        outcome.stats.update(turn_stats)
        outcome.kept.append({"id": record_id(canonical), **canonical, "source": where, "_origin": origin})
    return outcome


def drop_duplicates(outcome: Outcome) -> None:
    first_seen: dict[str, str] = {}
    unique = []
    for record in outcome.kept:
        if record["id"] in first_seen:
            outcome.reject(record["_origin"], "duplicate", f"same turns as {first_seen[record['id']]}", record)
        else:
            first_seen[record["id"]] = record["source"]
            unique.append(record)
    outcome.kept = unique


def filter_lengths(outcome: Outcome, tokenizer, cfg: DataSection) -> list[int]:
    """Reject conversations outside [min_tokens, max_tokens]; return the kept records' token counts."""
    texts = [render(tokenizer, r) for r in tqdm(outcome.kept, desc="render", unit="rec",
                                                 disable=len(outcome.kept) < 2000)]
    counts = count_tokens(tokenizer, texts, cfg.max_tokens)
    kept, lengths = [], []
    for record, text, count in zip(outcome.kept, texts, counts, strict=True):
        if count is None:
            outcome.reject(record["_origin"], "too_long", f"{len(text)} characters: more than data.max_tokens "
                           f"{cfg.max_tokens} tokens can hold (not tokenized)", record)
        elif count > cfg.max_tokens:
            outcome.reject(record["_origin"], "too_long", f"{count} tokens > data.max_tokens {cfg.max_tokens}", record)
        elif count < cfg.min_tokens:
            outcome.reject(record["_origin"], "too_short", f"{count} tokens < data.min_tokens {cfg.min_tokens}",
                           record)
        else:
            kept.append(record)
            lengths.append(count)
    outcome.kept = kept
    return lengths


def count_tokens(tokenizer, texts: list[str], max_tokens: int) -> list[int | None]:
    """Token counts, None for a text too long to fit without tokenizing it: a token stands for at most as
    many characters as its vocabulary entry has (byte-level BPE: one per byte; SentencePiece: '▁' per space),
    and a multi-megabyte record would otherwise cost seconds and gigabytes of token ids."""
    ceiling = max_tokens * max(map(len, tokenizer.get_vocab()))
    fits = [text for text in texts if len(text) <= ceiling]
    counts = iter([len(ids) for ids in tokenizer(fits, add_special_tokens=False)["input_ids"]] if fits else [])
    return [next(counts) if len(text) <= ceiling else None for text in texts]


def split(records: list[dict], cfg: DataSection) -> tuple[list[int], list[int]]:
    """Indices of train and eval records. A seeded hash orders records, so adding data moves few."""
    if len(records) < 2:
        return list(range(len(records))), []
    n_eval = int(cfg.eval_size) if cfg.eval_size >= 1 else max(1, round(cfg.eval_size * len(records)))
    n_eval = min(n_eval, len(records) - 1)
    keys = [hashlib.sha256(f"{cfg.seed}:{record['id']}".encode()).hexdigest() for record in records]
    order = sorted(range(len(records)), key=keys.__getitem__)
    # Copies kept by dedup: false share an id; the cut moves past them so eval never scores trained-on text.
    while 0 < n_eval < len(order) and keys[order[n_eval]] == keys[order[n_eval - 1]]:
        n_eval += 1
    if n_eval == len(order):  # every record from the cut on is one conversation: leave it all to train
        n_eval = next(i for i in range(len(order)) if keys[order[i]] == keys[order[-1]])
    eval_set = set(order[:n_eval])
    return ([i for i in range(len(records)) if i not in eval_set], sorted(eval_set))
