"""Raw text for continued pretraining: one record per `text` value (or per paragraph of a .txt file)."""

from __future__ import annotations

from collections import Counter

from kotune.config import DataSection
from kotune.formats import Reject, column, require_text
from kotune.text import clean

NAME = "text"


def is_record(value, cfg: DataSection) -> bool:
    return isinstance(value, dict) and isinstance(value.get(column(cfg, "text")), str)


def convert(value, cfg: DataSection, stats: Counter) -> dict:
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"expected an object with '{column(cfg, 'text')}'")
    text = clean(require_text(value, column(cfg, "text")), cfg.nfc, cfg.strip_control)
    if not text:
        raise Reject("empty_text", "nothing left after cleaning")
    return {"text": text}
