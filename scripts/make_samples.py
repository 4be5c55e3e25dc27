"""Write data/samples/ in every input format kotune reads, from the authored data/samples/source/.

    python scripts/make_samples.py [--out data/samples]

The authored sources hold the content once (instructions, chats, multi-speaker dialogs); this script
renders them as each format's files so the formats carry the same Korean text. tests/test_samples.py
re-runs it and fails if a committed sample drifts from its source.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "data" / "samples" / "source"


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (SOURCE / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def jsonl(rows: list) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def prompt_of(item: dict) -> str:
    return f"{item['instruction']}\n\n{item['input']}" if item["input"] else item["instruction"]


def chat_messages(chat: dict) -> list[dict]:
    system = [{"role": "system", "content": chat["system"]}] if chat["system"] else []
    return system + chat["messages"]


def messages_file(instructions: list[dict], chats: list[dict]) -> str:
    """The embedded default. Its last five lines are planted faults that must land in rejects.jsonl."""
    rows = [{"messages": [{"role": "user", "content": prompt_of(i)}, {"role": "assistant", "content": i["output"]}]}
            for i in instructions]
    rows += [{"messages": chat_messages(c)} for c in chats]
    text = jsonl(rows)
    text += jsonl([rows[3], rows[10]])  # exact duplicates
    text += jsonl([{"messages": [{"role": "user", "content": "빈 답변 예시"}, {"role": "assistant", "content": "  "}]}])
    text += '{"messages": [{"role": "user", "content": "잘린 줄"\n'  # malformed JSON
    text += jsonl([{"messages": [{"role": "narrator", "content": "역할이 잘못된 예시"}]}])
    return text


def alpaca_file(instructions: list[dict]) -> str:
    return json.dumps(instructions, ensure_ascii=False, indent=2) + "\n"


def usr_bot_file(instructions: list[dict], chats: list[dict]) -> str:
    """heegyu/open-korean-instructions layout: one `text` field with `<usr>`/`<bot>` turns."""
    def text(messages):
        return "\n".join(f"{'<usr>' if m['role'] == 'user' else '<bot>'} {m['content']}"
                         for m in messages if m["role"] != "system")
    rows = [{"text": text(c["messages"])} for c in chats]
    rows += [{"text": text([{"role": "user", "content": prompt_of(i)}, {"role": "assistant", "content": i["output"]}])}
             for i in instructions[:80]]
    return jsonl(rows)


def kochat_text_file(chats: list[dict]) -> str:
    """KoChatGPT layout: `<<start conversation>>` blocks of `<사람>:`/`<챗봇>:` lines."""
    blocks = []
    for chat in chats[:30]:
        lines = [f"{'<사람>' if m['role'] == 'user' else '<챗봇>'}: {m['content']}" for m in chat["messages"]]
        blocks.append("<<start conversation>>\n" + "\n".join(lines) + "\n")
    return "".join(blocks)


def sharegpt_file(chats: list[dict]) -> str:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in chat_messages(c)]}
            for c in chats]
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


def dialog_file(dialogs: list[dict]) -> str:
    """AI Hub 주제별 텍스트 일상 대화 layout: header (dialogue and participants info) + body of utterances."""
    items = []
    for number, dialog in enumerate(dialogs, start=1):
        body, turn, previous = [], 0, None
        for index, utterance in enumerate(dialog["utterances"], start=1):
            turn += utterance["speaker"] != previous
            previous = utterance["speaker"]
            body.append({"utterance": utterance["text"], "utteranceID": f"U{index}",
                         "participantID": utterance["speaker"], "turnID": f"T{turn}"})
        header = {"dialogueInfo": {"dialogueID": f"KOTUNE{number:04d}", "topic": dialog["topic"],
                                   "numberOfParticipants": len(dialog["speakers"]),
                                   "numberOfUtterances": len(body), "numberOfTurns": turn},
                  "participantsInfo": [{"participantID": s} for s in dialog["speakers"]]}
        items.append({"header": header, "body": body})
    return json.dumps({"numberOfItems": len(items), "data": items}, ensure_ascii=False, indent=2) + "\n"


def qa_csv(instructions: list[dict]) -> str:
    """A CSV with its own column names (Q, A): data.columns maps them onto instruction/output."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Q", "A"])
    for item in instructions[:60]:
        if not item["input"]:
            writer.writerow([item["instruction"], item["output"]])
    return buffer.getvalue()


def text_file(instructions: list[dict]) -> str:
    """Raw text for continued pretraining: paragraphs separated by blank lines."""
    return "\n\n".join(i["output"] for i in instructions[:100]) + "\n"


def write_all(out: Path) -> dict[str, bytes]:
    instructions, chats = read_jsonl("instructions.jsonl"), read_jsonl("chats.jsonl")
    files = {
        "messages.jsonl": messages_file(instructions, chats).encode(),
        "alpaca.json": alpaca_file(instructions).encode(),
        "usr_bot.jsonl": usr_bot_file(instructions, chats).encode(),
        "kochat.txt": kochat_text_file(chats).encode(),
        "sharegpt.json": sharegpt_file(chats).encode(),
        "dialog.json": dialog_file(read_jsonl("dialogs.jsonl")).encode(),
        "qa.csv": qa_csv(instructions).encode(),
        # The same Q/A table as a Windows Excel export would write it: CP949, no BOM.
        "qa_cp949.csv": qa_csv(instructions).encode("cp949"),
        "text.txt": text_file(instructions).encode(),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    return files


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SOURCE.parent)
    write_all(parser.parse_args().out)
