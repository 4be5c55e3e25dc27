"""Input formats → the canonical record.

Every format becomes, once, in `prepare`, either a conversation ``{"messages": [{"role", "content"}…]}``
or a raw-text record ``{"text": …}`` (continued pretraining). From there on nothing knows which
format a record came from. Each format module offers:

    is_record(value, cfg) -> bool              does this JSON value look like one of my records?
    convert(value, cfg, stats) -> dict         the canonical record, or raise Reject(reason)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from kotune.config import DataSection
from kotune.text import clean


class Reject(Exception):
    """A record set aside: `reason` is a short code counted in metrics, `detail` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def column(cfg: DataSection, name: str) -> str:
    """The source's own field name for canonical field `name` (data.columns), else `name`."""
    return cfg.columns.get(name, name)


def first_present(value: dict, cfg: DataSection, name: str, fallbacks: Iterable[str]) -> str | None:
    """The first key of `value` among the mapped name and the usual spellings of that field."""
    candidates = (cfg.columns[name],) if name in cfg.columns else (name, *fallbacks)
    for key in candidates:
        if key in value:
            return key
    return None


def require_text(value: dict, key: str) -> str:
    if key not in value:
        raise Reject("missing_field", f"no '{key}' field (have: {', '.join(map(str, value)) or 'none'})")
    if value[key] is None:
        raise Reject("missing_field", f"'{key}' is null")
    if not isinstance(value[key], str):
        raise Reject("bad_field", f"'{key}' is {type(value[key]).__name__}, not text")
    return value[key]


def finish_conversation(messages: list[dict], cfg: DataSection, stats: Counter) -> dict:
    """Clean turns, drop empty ones, add the system prompt, trim a trailing prompt with no answer."""
    kept = []
    for message in messages:
        content = clean(message["content"], cfg.nfc, cfg.strip_control)
        if content:
            kept.append({"role": message["role"], "content": content})
        else:
            stats["turns_dropped_empty"] += 1
    while kept and kept[-1]["role"] != "assistant":
        kept.pop()
        stats["turns_dropped_trailing_prompt"] += 1
    if not any(m["role"] == "assistant" for m in kept):
        raise Reject("no_assistant_turn", "nothing to learn from: no non-empty assistant turn")
    if not any(m["role"] not in ("assistant", "system") for m in kept):
        raise Reject("no_user_turn", "an assistant turn with no prompt before it")
    if cfg.system_prompt and kept[0]["role"] != "system":
        kept.insert(0, {"role": "system", "content": cfg.system_prompt})
    return {"messages": kept}


def descend(value: Any, is_record, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (path, sub-value) for every record nested in containers (e.g. {"data": [...]})."""
    if is_record(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from descend(item, is_record, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and any(is_record(item) for item in value):
        # A list that holds records holds only records: an item that does not look like one is a bad record
        # for convert to reject, not a container to search (it would vanish without a count).
        for index, item in enumerate(value):
            yield f"{path}[{index}]", item
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from descend(item, is_record, f"{path}[{index}]")
