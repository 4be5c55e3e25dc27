"""Chat messages: `messages` of {role, content} (OpenAI/TRL) or ShareGPT `conversations` of {from, value}."""

from __future__ import annotations

from collections import Counter

from kotune.config import DataSection
from kotune.formats import Reject, finish_conversation, first_present

NAME = "messages"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "chatgpt": "assistant", "system": "system"}


def _turns_key(value, cfg: DataSection) -> str | None:
    return first_present(value, cfg, "messages", ("conversations", "conversation"))


def is_record(value, cfg: DataSection) -> bool:
    return isinstance(value, dict) and isinstance(value.get(_turns_key(value, cfg)), list)


def convert(value, cfg: DataSection, stats: Counter) -> dict:
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"a {type(value).__name__}, not an object with a list of messages")
    key = _turns_key(value, cfg)
    if key is None:
        raise Reject("missing_field", "no list of messages ('messages' or ShareGPT 'conversations')")
    if not isinstance(value[key], list):
        raise Reject("bad_field", f"'{key}' is {type(value[key]).__name__}, not a list of turns")
    messages = [_message(turn, index, cfg) for index, turn in enumerate(value[key])]
    system = value.get("system")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return finish_conversation(messages, cfg, stats)


def _message(turn, index: int, cfg: DataSection) -> dict:
    if not isinstance(turn, dict):
        raise Reject("bad_turn", f"turn {index} is {type(turn).__name__}, not an object")
    role_key = first_present(turn, cfg, "role", ("from",))
    content_key = first_present(turn, cfg, "content", ("value", "text"))
    if role_key is None or content_key is None:
        have = ", ".join(map(str, turn)) or "none"
        raise Reject("missing_field", f"turn {index} needs role/content (or from/value); it has: {have}")
    role = ROLES.get(str(turn[role_key]).strip().lower())
    if role is None:
        raise Reject("unknown_role", f"turn {index} has role {turn[role_key]!r}")
    if not isinstance(turn[content_key], str):
        raise Reject("bad_field", f"turn {index} content is {type(turn[content_key]).__name__}, not text")
    return {"role": role, "content": turn[content_key]}
