"""Multi-speaker dialogs (AI Hub 주제별 텍스트 일상 대화 style, or role/utterance task dialogs).

A dialog is an object with a list of utterances (`body`, `utterances`, `turns`, `dialogue`), each
with a speaker (`participantID`, `speaker`, `role`) and text (`utterance`, `text`, `content`), or a
user/system pair per turn (`user_message`/`system_message`). data.dialog says which speaker is the
assistant and whether the other speakers share the `user` role or keep labels (user1, user2, …).
Consecutive utterances of one speaker are merged; masked names (`*`, `**`) become data.dialog.name_token.
"""

from __future__ import annotations

from collections import Counter
from typing import NoReturn

from kotune.config import DataSection
from kotune.formats import Reject, finish_conversation, first_present
from kotune.text import mask_names

NAME = "dialog"
TURN_KEYS = ("body", "utterances", "turns", "dialogue", "dialog", "lines")
SPEAKER_KEYS = ("participantID", "speaker", "speaker_id", "role", "from")
TEXT_KEYS = ("utterance", "text", "content", "value", "message")
PAIR_KEYS = ("user_message", "system_message")


def _turns(value, cfg: DataSection) -> list | None:
    if not isinstance(value, dict):
        return None
    key = first_present(value, cfg, "turns", TURN_KEYS)
    turns = value.get(key) if key else None
    ok = isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns)
    return turns if ok else None


def is_record(value, cfg: DataSection) -> bool:
    """A list of utterance objects with a speaker or a text field: one of the two is enough to know a dialog,
    so one whose other field is missing (or mapped by data.columns to a name it lacks) is a reject that names
    that field, not a container left unsearched."""
    turns = _turns(value, cfg)
    if not turns:
        return False
    first = turns[0]
    return (first_present(first, cfg, "utterance", TEXT_KEYS) is not None
            or first_present(first, cfg, "speaker", SPEAKER_KEYS) is not None
            or all(k in first for k in PAIR_KEYS))


def convert(value, cfg: DataSection, stats: Counter) -> dict:
    turns = _turns(value, cfg)
    if turns is None:
        _explain_no_turns(value, cfg)
    utterances = [u for index, turn in enumerate(turns) for u in _utterances(turn, index, cfg)]
    roles = _roles([speaker for speaker, _ in utterances], cfg)
    messages: list[dict] = []
    last_speaker = None
    for speaker, text in utterances:
        masked = mask_names(text, cfg.dialog.name_token)
        stats["names_masked"] += masked != text
        if speaker == last_speaker and text.strip():
            messages[-1]["content"] += "\n" + masked.strip()
            stats["turns_merged"] += 1
        elif text.strip():
            messages.append({"role": roles[speaker], "content": masked.strip()})
            last_speaker = speaker
        else:
            stats["turns_dropped_empty"] += 1
    return finish_conversation(messages, cfg, stats)


def _explain_no_turns(value, cfg: DataSection) -> NoReturn:
    """Why `value` has no usable list of utterances, as a Reject."""
    if not isinstance(value, dict):
        raise Reject("not_an_object", f"a {type(value).__name__}, not a dialog object")
    key = first_present(value, cfg, "turns", TURN_KEYS)
    if key is None:
        looked = cfg.columns.get("turns") or ", ".join(TURN_KEYS)
        raise Reject("missing_field", f"no list of utterances ({looked}); it has: {', '.join(map(str, value))}")
    turns = value[key]
    if not isinstance(turns, list):
        raise Reject("bad_field", f"'{key}' is {type(turns).__name__}, not a list of utterances")
    if not turns:
        raise Reject("no_assistant_turn", f"'{key}' is an empty list")
    index = next(i for i, turn in enumerate(turns) if not isinstance(turn, dict))
    raise Reject("bad_turn", f"'{key}' item {index} is {type(turns[index]).__name__}, not an utterance object")


def _utterances(turn: dict, index: int, cfg: DataSection) -> list[tuple[str, str]]:
    if all(k in turn for k in PAIR_KEYS) and "speaker" not in cfg.columns:
        return [("user", str(turn["user_message"] or "")), ("system", str(turn["system_message"] or ""))]
    speaker_key = first_present(turn, cfg, "speaker", SPEAKER_KEYS)
    text_key = first_present(turn, cfg, "utterance", TEXT_KEYS)
    for key, name, usual in ((speaker_key, "speaker", SPEAKER_KEYS), (text_key, "utterance", TEXT_KEYS)):
        if key is None:
            looked = f"data.columns.{name}: {cfg.columns[name]}" if name in cfg.columns else ", ".join(usual)
            raise Reject("missing_field", f"utterance {index} has no {name} field ({looked}); "
                                          f"it has: {', '.join(map(str, turn)) or 'none'}")
    if not isinstance(turn[text_key], str):
        raise Reject("bad_field", f"utterance {index} text is {type(turn[text_key]).__name__}, not text")
    return [(str(turn[speaker_key]), turn[text_key])]


def _roles(speakers: list[str], cfg: DataSection) -> dict[str, str]:
    """Map speaker ids to roles, in order of first appearance."""
    order = list(dict.fromkeys(speakers))
    rule = cfg.dialog.assistant
    if rule in ("first", "second"):
        position = 0 if rule == "first" else 1
        if len(order) <= position:
            raise Reject("too_few_speakers",
                         f"only {len(order)} speaker(s) ({', '.join(order)}); data.dialog.assistant is {rule}")
        assistant = order[position]
    elif rule in order:
        assistant = rule
    else:
        raise Reject("assistant_not_in_dialog",
                     f"data.dialog.assistant is {rule!r}, who never speaks here (speakers: {', '.join(order)})")
    others = [s for s in order if s != assistant]
    if cfg.dialog.others == "labels":
        return {assistant: "assistant"} | {s: f"user{i}" for i, s in enumerate(others, start=1)}
    return {assistant: "assistant"} | {s: "user" for s in others}
