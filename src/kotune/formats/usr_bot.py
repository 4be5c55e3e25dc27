"""Plain-text turns: `<usr> 질문 <bot> 답` (heegyu/open-korean-instructions) or `<사람>: … <챗봇>: …` lines.

Markers come from data.usr_bot, so other spellings need no code. Consecutive turns of one role are
merged; text before the first marker is an error in the record, not a silent prefix.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from kotune.config import DataSection, UsrBotSection
from kotune.formats import Reject, column, finish_conversation, require_text

NAME = "usr_bot"


@lru_cache(maxsize=8)
def _splitter(markers: UsrBotSection) -> tuple[re.Pattern, dict[str, str]]:
    roles = {m: "user" for m in markers.user} | {m: "assistant" for m in markers.assistant}
    roles |= {m: "system" for m in markers.system}
    alternatives = "|".join(re.escape(m) for m in sorted(roles, key=len, reverse=True))
    return re.compile(f"({alternatives})"), roles


def is_record(value, cfg: DataSection) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get(column(cfg, "text")), str):
        return False
    text = value[column(cfg, "text")]
    markers = cfg.usr_bot
    return any(m in text for m in markers.user) and any(m in text for m in markers.assistant)


def convert(value, cfg: DataSection, stats: Counter) -> dict:
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"expected an object with '{column(cfg, 'text')}'")
    pattern, roles = _splitter(cfg.usr_bot)
    parts = pattern.split(require_text(value, column(cfg, "text")))
    if parts[0].strip():
        markers = ", ".join([*cfg.usr_bot.user, *cfg.usr_bot.assistant, *cfg.usr_bot.system])
        raise Reject("text_before_first_turn",
                     f"{parts[0].strip()[:40]!r} comes before any turn marker of data.usr_bot ({markers})")
    messages: list[dict] = []
    for marker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = roles[marker]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + content.strip()
            stats["turns_merged"] += 1
        else:
            messages.append({"role": role, "content": content.strip()})
    if not messages:
        raise Reject("no_turn_markers", "no user/assistant markers found")
    return finish_conversation(messages, cfg, stats)
