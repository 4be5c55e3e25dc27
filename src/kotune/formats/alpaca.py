"""Alpaca: `instruction`, optional `input`, `output` (yahma/alpaca-cleaned, KoAlpaca).

A CSV with `Q,A` columns maps on with ``data.columns: {instruction: Q, output: A}``.
"""

from __future__ import annotations

from collections import Counter

from kotune.config import DataSection
from kotune.formats import Reject, column, finish_conversation, require_text

NAME = "alpaca"


def is_record(value, cfg: DataSection) -> bool:
    return isinstance(value, dict) and column(cfg, "instruction") in value and column(cfg, "output") in value


def convert(value, cfg: DataSection, stats: Counter) -> dict:
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"expected an object with {column(cfg, 'instruction')}/{column(cfg, 'output')}")
    instruction = require_text(value, column(cfg, "instruction"))
    output = require_text(value, column(cfg, "output"))
    extra = value.get(column(cfg, "input")) or ""
    if not isinstance(extra, str):
        raise Reject("bad_field", f"'{column(cfg, 'input')}' is {type(extra).__name__}, not text")
    # The input is the material the instruction talks about; a blank line keeps the two apart.
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    system = value.get(column(cfg, "system"))
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    if not output.strip():
        raise Reject("no_assistant_turn", f"'{column(cfg, 'output')}' is empty")
    return finish_conversation(messages, cfg, stats)
