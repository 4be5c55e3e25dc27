"""Which format a source is in: data.format, or detected from the first records (and said so)."""

from __future__ import annotations

import logging
from collections import Counter
from types import ModuleType

from kotune.config import DataSection
from kotune.errors import KotuneError
from kotune.formats import alpaca, descend, dialog, messages, text, usr_bot
from kotune.rawread import RawRecord

log = logging.getLogger(__name__)
# Detection order matters: a usr_bot record also has a `text` field, so it is tried before text.
FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (messages, dialog, alpaca, usr_bot, text)}
SAMPLE = 50


def choose_format(records: list[RawRecord], cfg: DataSection) -> ModuleType:
    if cfg.format != "auto":
        return FORMATS[cfg.format]
    parsed = [r for r in records if r.error is None][:SAMPLE]
    votes: Counter = Counter()
    for record in parsed:
        for name, module in FORMATS.items():
            if next(descend(record.value, lambda v, m=module: m.is_record(v, cfg)), None) is not None:
                votes[name] += 1
                break
    if records and not parsed:
        first = records[0]
        raise KotuneError(f"{first.where}: no record could be read, so the format cannot be detected; the first: "
                          f"{first.error[0]}: {first.error[1]}")
    if not votes:
        first = parsed[0] if parsed else (records[0] if records else None)
        fields = ", ".join(map(str, first.value)) if first and isinstance(first.value, dict) else "none"
        where = first.where if first else "data/raw"
        raise KotuneError(f"{where}: cannot tell the data format (fields: {fields}); "
                          "set data.format and map your fields with data.columns")
    name, count = votes.most_common(1)[0]
    log.info("data.format is auto: detected '%s' (%d of %d sampled records)", name, count, len(parsed))
    return FORMATS[name]
