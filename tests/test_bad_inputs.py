"""Issue 7, "bad input, nothing lost": malformed input in every format ends in a clear error or in rejects.

Each case writes small files into a raw folder and runs prepare with the tiny tokenizer (no model). It
expects exactly one of:
- Error: prepare raises KotuneError (the CLI prints it, no traceback) whose message holds every fragment:
  the file with its line where the file has lines, and the field or setting at fault;
- Kept: prepare succeeds, each bad record is a reject row under its reason, and the input records
  (counted here, from what the case wrote) equal kept + rejected.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kotune.errors import KotuneError
from kotune.stages import prepare

from .conftest import params_file

pytestmark = pytest.mark.unit
BASE = {"min_tokens": 1, "eval_size": 1}  # short test records pass the length filter
CSV = {"columns": {"instruction": "Q", "output": "A"}}
BOM = b"\xef\xbb\xbf"
HUGE = "가" * 200_000  # over csv's default field limit and over max_tokens × the longest token: never tokenized


@dataclass(frozen=True)
class Error:
    fragments: tuple[str, ...]


@dataclass(frozen=True)
class Kept:
    records: int  # input records the case's files hold
    rejects: dict[str, int] = field(default_factory=dict)  # reason -> count
    details: tuple[str, ...] = ()  # each held by some reject's detail: the field at fault
    text: str = ""  # kept records hold it: the encoding was decoded right


def pair(i: int) -> tuple[str, str]:
    return f"{i}번째 질문: 김치찌개는 어떻게 끓여요?", f"{i}번째 답: 신김치를 볶다가 물을 붓고 20분 끓이면 됩니다."


def alpaca(i: int, **fields) -> dict:
    q, a = pair(i)
    return {"instruction": q, "output": a, **fields}


def chat(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def messages(i: int) -> dict:
    q, a = pair(i)
    return chat(("user", q), ("assistant", a))


def sharegpt(i: int, **fields) -> dict:
    q, a = pair(i)
    return {**fields, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def dialog(i: int, speakers=("P01", "P02"), texts=None, dialogue_id=None) -> dict:
    texts = texts or pair(i)
    return {"header": {"dialogueInfo": {"dialogueID": dialogue_id or f"D{i}"}},
            "body": [{"participantID": s, "utterance": t} for s, t in zip(speakers, texts, strict=True)]}


def usr_bot(i: int) -> dict:
    q, a = pair(i)
    return {"text": f"<usr> {q} <bot> {a}"}


def json_array(*items, encoding="utf-8") -> bytes:
    return json.dumps(list(items), ensure_ascii=False, indent=2).encode(encoding)


def aihub(*dialogs, encoding="utf-8") -> bytes:
    """AI Hub's layout: the dialogs nested in a document, so their line is the document's (1)."""
    return json.dumps({"numberOfItems": len(dialogs), "data": list(dialogs)}, ensure_ascii=False).encode(encoding)


def jsonl(*lines, encoding="utf-8") -> bytes:
    """One JSON value per line; a str is written as it is (a malformed line)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines)
    return text.encode(encoding)


def csv_row(i: int) -> str:
    q, a = pair(i)
    return f'{q},"{a}"'


def qa_csv(*rows: str, encoding="utf-8") -> bytes:
    return ("Q,A\n" + "".join(f"{row}\n" for row in rows)).encode(encoding)


def paragraphs(*texts: str, encoding="utf-8") -> bytes:
    return "\n\n".join(texts).encode(encoding) + b"\n"


def parquet(**columns) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def cut(data: bytes, characters: int) -> bytes:
    """A download cut short between two characters (truncated/text-mid-character cuts inside one)."""
    return data.decode("utf-8")[:-characters].encode("utf-8")


def case(name: str, files: dict[str, bytes], expect, **data):
    return pytest.param(files, data, expect, id=name)


P0, P1 = " ".join(pair(0)), " ".join(pair(1))
TRUNCATED_ARRAY = '[\n  {"instruction": "질문", "output": "답"},\n  {"instruction": "두 번째 질문", "outp'
CASES = [
    # --- truncated JSON (and files cut off in other formats) ---
    case("truncated/alpaca-json", {"a.json": TRUNCATED_ARRAY.encode()},
         Error(("a.json:3:", "malformed JSON", "Unterminated string", "column"))),
    case("truncated/sharegpt-json", {"s.json": cut(json_array(sharegpt(0), sharegpt(1)), 40)},
         Error(("s.json:", "malformed JSON", "column"))),
    case("truncated/dialog-json", {"d.json": cut(aihub(dialog(0), dialog(1)), 30)},
         Error(("d.json:1:", "malformed JSON"))),
    case("truncated/messages-jsonl", {"m.jsonl": jsonl(messages(0), messages(1), '{"messages": [{"role": "us')},
         Kept(3, {"malformed_json": 1}, ("Unterminated string",))),
    case("truncated/usr-bot-jsonl", {"u.jsonl": jsonl(usr_bot(0), '{"text": "<usr> 질문 <bot')},
         Kept(2, {"malformed_json": 1})),
    case("truncated/csv-open-quote", {"qa.csv": qa_csv(csv_row(0), '질문,"끝나지 않은 답', "다음 질문,답")},
         Error(("qa.csv:3:", "field 'A'", "never closed")), **CSV),
    case("truncated/text-mid-character", {"t.txt": paragraphs(P0, P1)[:-3]},
         Error(("t.txt:3:", "not UTF-8", "cut-off")), format="text"),
    case("truncated/parquet", {"d.parquet": parquet(instruction=["질문"], output=["답"])[:-20]},
         Error(("d.parquet", "not a readable Parquet file"))),
    # --- wrong types ---
    case("wrong-types/alpaca-json",
         {"a.json": json_array(alpaca(0), alpaca(1, instruction=42), alpaca(2, output=["답"]),
                               alpaca(3, input={"k": 1}), 7, None, "문자열")},
         Kept(7, {"bad_field": 3, "not_an_object": 3},
              ("'instruction' is int", "'output' is list", "'input' is dict"))),
    case("wrong-types/messages-jsonl",
         {"m.jsonl": jsonl(messages(0), {"messages": "안녕"}, chat(("user", 3), ("assistant", "답")),
                           {"messages": [["user", "안녕"]]}, chat((1, "안녕"), ("assistant", "답")), 42, "null")},
         Kept(7, {"bad_field": 2, "bad_turn": 1, "unknown_role": 1, "not_an_object": 2},
              ("'messages' is str", "turn 0 content is int", "turn 0 is list"))),
    case("wrong-types/sharegpt-json",
         {"s.json": json_array(sharegpt(0), {"conversations": {"from": "human"}},
                               {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "답"}]})},
         Kept(3, {"bad_field": 2}, ("'conversations' is dict", "content is NoneType"))),
    case("wrong-types/dialog-json",
         {"d.json": aihub(dialog(0), {"body": "말"}, dialog(2, texts=(5, "답")), {"body": ["말"]})},
         Kept(4, {"bad_field": 2, "bad_turn": 1}, ("'body' is str", "utterance 0 text is int", "item 0 is str"))),
    case("wrong-types/csv-row-shape",
         {"qa.csv": qa_csv(csv_row(0), "질문,답,남는 칸", '질문,"답"뒤에 글자', csv_row(3))},
         Kept(4, {"extra_fields": 1, "malformed_csv": 1}), **CSV),
    case("wrong-types/text-jsonl",
         {"t.jsonl": jsonl({"text": P0}, {"text": 123}, {"text": None}, {"text": ["문단"]})},
         Kept(4, {"bad_field": 2, "missing_field": 1}, ("'text' is int", "'text' is null"))),
    case("wrong-types/parquet", {"d.parquet": parquet(instruction=[pair(0)[0], None], output=[pair(0)[1], "답"])},
         Kept(2, {"missing_field": 1}, ("'instruction' is null",))),
    # --- missing fields ---
    case("missing-fields/alpaca-json",
         {"a.json": json_array(alpaca(0), {"instruction": "질문"}, {"output": "답"}, {})},
         Kept(4, {"missing_field": 3}, ("no 'output' field (have: instruction)", "no 'instruction' field"))),
    case("missing-fields/messages-jsonl",
         {"m.jsonl": jsonl(messages(0), {"messages": [{"role": "user"}, {"role": "assistant", "content": "답"}]},
                           {"대화": []})},
         Kept(3, {"missing_field": 2}, ("turn 0 needs role/content", "no list of messages"))),
    case("missing-fields/dialog-nested",
         {"d.json": aihub(dialog(0), {"header": {}}, {"body": [{"utterance": "누구?"}, {"participantID": "P02",
                                                                                       "utterance": "나"}]})},
         Kept(3, {"missing_field": 2}, ("no list of utterances", "utterance 0 has no speaker field"))),
    case("missing-fields/csv-short-row", {"qa.csv": qa_csv(csv_row(0), "답이 없는 질문", csv_row(2))},
         Kept(3, {"missing_field": 1}, ("no 'A' field (have: Q)",)), **CSV),
    # --- empty turns ---
    case("empty-turns/alpaca-json",
         {"a.json": json_array(alpaca(0), alpaca(1, output=""), alpaca(2, instruction="  "))},
         Kept(3, {"no_assistant_turn": 1, "no_user_turn": 1}, ("'output' is empty",))),
    case("empty-turns/messages-jsonl",
         {"m.jsonl": jsonl(messages(0), {"messages": []}, chat(("user", ""), ("assistant", " ")),
                           chat(("user", ""), ("assistant", "답")))},
         Kept(4, {"no_assistant_turn": 2, "no_user_turn": 1})),
    case("empty-turns/dialog-json", {"d.json": aihub(dialog(0), {"body": []}, dialog(2, texts=("", " ")))},
         Kept(3, {"no_assistant_turn": 2}, ("'body' is an empty list",))),
    case("empty-turns/csv", {"qa.csv": qa_csv(csv_row(0), "질문,", ",답")},
         Kept(3, {"no_assistant_turn": 1, "no_user_turn": 1}), **CSV),
    case("empty-turns/text-jsonl", {"t.jsonl": jsonl({"text": P0}, {"text": "   "}, {"text": "\u0000\u0001"})},
         Kept(3, {"empty_text": 2})),
    case("empty-turns/usr-bot-jsonl", {"u.jsonl": jsonl(usr_bot(0), {"text": "<usr> <bot> "})},
         Kept(2, {"no_assistant_turn": 1})),
    # --- only-system turns ---
    case("only-system/messages-jsonl", {"m.jsonl": jsonl(messages(0), chat(("system", "너는 도우미야.")))},
         Kept(2, {"no_assistant_turn": 1})),
    case("only-system/sharegpt-json",
         {"s.json": json_array(sharegpt(0), {"conversations": [{"from": "system", "value": "너는 도우미야."}]})},
         Kept(2, {"no_assistant_turn": 1})),
    case("only-system/alpaca-json",
         {"a.json": json_array(alpaca(0), alpaca(1, system="도우미", instruction="", output=""))},
         Kept(2, {"no_assistant_turn": 1})),
    case("only-system/usr-bot-jsonl", {"u.jsonl": jsonl(usr_bot(0), {"text": "<sys> 시스템 지시만 있다"})},
         Kept(2, {"no_assistant_turn": 1})),
    case("only-system/dialog-one-speaker", {"d.json": aihub(dialog(0), dialog(1, speakers=("P01", "P01")))},
         Kept(2, {"too_few_speakers": 1}, ("data.dialog.assistant is second",))),
    # --- CP949 / EUC-KR and byte-order marks ---
    case("cp949/alpaca-json", {"a.json": json_array(alpaca(0), alpaca(1, output="똠방각하"), encoding="cp949")},
         Kept(2, text="똠방각하")),
    case("cp949/csv", {"qa.csv": qa_csv(csv_row(0), "똠방각하?,네", encoding="cp949")}, Kept(2, text="똠방각하"),
         **CSV),
    case("cp949/dialog-json", {"d.json": aihub(dialog(0), dialog(1), encoding="cp949")}, Kept(2, text="김치찌개")),
    case("euc-kr/messages-jsonl", {"m.jsonl": jsonl(messages(0), messages(1), encoding="euc-kr")},
         Kept(2, text="김치찌개")),
    case("euc-kr/text", {"t.txt": paragraphs(P0, P1, encoding="euc-kr")}, Kept(2, text="김치찌개")),
    case("cp949/forced-utf8", {"m.jsonl": jsonl(messages(0), encoding="cp949")},
         Error(("m.jsonl:1:", "not valid utf-8")), encoding="utf-8"),
    case("bom/alpaca-json", {"a.json": BOM + json_array(alpaca(0), alpaca(1))}, Kept(2)),
    case("bom/alpaca-json-encoding-utf8", {"a.json": BOM + json_array(alpaca(0), alpaca(1))}, Kept(2),
         encoding="utf-8"),
    case("bom/csv-encoding-utf8", {"qa.csv": BOM + qa_csv(csv_row(0), csv_row(1))}, Kept(2),
         encoding="utf-8", **CSV),
    case("bom/dialog-json", {"d.json": BOM + aihub(dialog(0), dialog(1))}, Kept(2)),
    case("bom/text", {"t.txt": BOM + paragraphs(P0, P1)}, Kept(2)),
    case("bom/jsonl-concatenated", {"m.jsonl": BOM + jsonl(messages(0)) + BOM + jsonl(messages(1))}, Kept(2)),
    case("bom/utf16-jsonl", {"m.jsonl": jsonl(messages(0), messages(1), encoding="utf-16")}, Kept(2, text="김치찌개")),
    # --- mixed encodings ---
    case("mixed/messages-jsonl-utf8-then-cp949",
         {"m.jsonl": jsonl(messages(0)) + jsonl(messages(1), encoding="cp949")},
         Error(("m.jsonl:2:", "not UTF-8", "line 1 holds UTF-8 Korean"))),
    case("mixed/text-cp949-then-utf8", {"t.txt": paragraphs(P0, encoding="cp949") + b"\n" + paragraphs(P1)},
         Error(("t.txt:1:", "not UTF-8", "line 3 holds UTF-8 Korean"))),
    case("mixed/csv", {"qa.csv": qa_csv(csv_row(0)) + "똠방각하?,네\n".encode("cp949")},
         Error(("qa.csv:3:", "not UTF-8")), **CSV),
    case("mixed/across-files", {"a.jsonl": jsonl(messages(0)), "b.jsonl": jsonl(messages(1), encoding="cp949")},
         Kept(2, text="1번째 답")),
    # --- NUL bytes ---
    case("nul/messages-jsonl-raw", {"m.jsonl": jsonl(messages(0), messages(1)).replace("1번째 답".encode(), b"1\x00")},
         Kept(2, {"malformed_json": 1}, ("'\\x00'",))),
    case("nul/messages-jsonl-escaped",
         {"m.jsonl": jsonl(messages(0), chat(("user", "널\u0000문자"), ("assistant", "답\u0000")))},
         Kept(2, text="널문자")),
    case("nul/alpaca-json-raw", {"a.json": json_array(alpaca(0), alpaca(1, output="답@")).replace(b"@", b"\x00")},
         Error(("a.json:8:", "malformed JSON", "'\\x00'"))),
    case("nul/csv", {"qa.csv": qa_csv(csv_row(0), "널\x00문자,답\x00")}, Kept(2, text="널문자"), **CSV),
    case("nul/text", {"t.txt": paragraphs(P0, "널\x00문자 문단")}, Kept(2, text="널문자 문단")),
    case("nul/utf16-without-bom", {"m.jsonl": jsonl(messages(0), encoding="utf-16-le")}, Error(("m.jsonl:1:", "NUL"))),
    case("nul/zero-filled-json", {"a.json": b"\x00" * 4096}, Error(("a.json:1:", "NUL"))),
    # --- enormous records ---
    case("enormous/alpaca-json", {"a.json": json_array(alpaca(0), alpaca(1, output=HUGE))},
         Kept(2, {"too_long": 1}, ("not tokenized",))),
    case("enormous/messages-jsonl", {"m.jsonl": jsonl(messages(0), chat(("user", HUGE), ("assistant", "답")))},
         Kept(2, {"too_long": 1}, ("not tokenized",))),
    case("enormous/csv-field", {"qa.csv": qa_csv(csv_row(0), f"질문,{HUGE}")},
         Kept(2, {"too_long": 1}, ("not tokenized",)), **CSV),
    case("enormous/text", {"t.txt": paragraphs(P0, HUGE)}, Kept(2, {"too_long": 1}, ("not tokenized",))),
    case("enormous/dialog-json", {"d.json": aihub(dialog(0), dialog(1, texts=("질문", HUGE)))},
         Kept(2, {"too_long": 1}, ("not tokenized",))),
    case("enormous/nesting-jsonl", {"m.jsonl": jsonl(messages(0), "[" * 5000 + "]" * 5000)},
         Kept(2, {"too_deep": 1}, ("nested deeper",))),
    case("enormous/nesting-json", {"a.json": ("[" * 5000 + "]" * 5000).encode()}, Error(("a.json", "nested deeper"))),
    # --- duplicate ids: identity is the content (dataprep.record_id), not the source's `id` ---
    case("duplicate-ids/sharegpt-json",
         {"s.json": json_array(sharegpt(0, id="1"), sharegpt(1, id="1"), sharegpt(0, id="2"))},
         Kept(3, {"duplicate": 1}, ("same turns as",))),
    case("duplicate-ids/dialog-json", {"d.json": aihub(dialog(0, dialogue_id="D1"), dialog(1, dialogue_id="D1"))},
         Kept(2)),
    case("duplicate-ids/messages-jsonl", {"m.jsonl": jsonl(messages(0), messages(1), messages(0))},
         Kept(3, {"duplicate": 1}, ("m.jsonl:1",))),
    # --- a speaker (or column, or marker) map that matches nothing ---
    case("speaker-map/dialog-matches-no-speaker", {"d.json": aihub(dialog(0), dialog(1))},
         Error(("no records left", "d.json:1 data[0]", "data.dialog.assistant is 'BOT'", "speakers: P01, P02")),
         dialog={"assistant": "BOT"}),
    case("speaker-map/dialog-matches-some", {"d.json": aihub(dialog(0), dialog(1, speakers=("A", "B")))},
         Kept(2, {"assistant_not_in_dialog": 1}, ("data.dialog.assistant is 'P02'",)), dialog={"assistant": "P02"}),
    case("speaker-map/dialog-speaker-column", {"d.json": aihub(dialog(0), dialog(1))},
         Error(("no records left", "d.json:1 data[0]", "data.columns.speaker: who")),
         format="dialog", columns={"speaker": "who"}),
    case("speaker-map/csv-columns", {"qa.csv": qa_csv(csv_row(0), csv_row(1))},
         Error(("no records left", "qa.csv:2", "no '질문' field (have: Q, A)")),
         format="alpaca", columns={"instruction": "질문", "output": "답"}),
    case("speaker-map/usr-bot-markers", {"u.jsonl": jsonl(usr_bot(0), usr_bot(1))},
         Error(("no records left", "u.jsonl:1", "data.usr_bot")),
         format="usr_bot", usr_bot={"user": ["<human>"], "assistant": ["<gpt>"]}),
    # --- empty files ---
    case("empty/json", {"a.json": b""}, Error(("a.json", "no records"))),
    case("empty/jsonl-whitespace", {"m.jsonl": b"\n  \n"}, Error(("m.jsonl", "no records"))),
    case("empty/json-array", {"a.json": b"[]"}, Error(("a.json", "no records"))),
    case("empty/csv-header-only", {"qa.csv": b"Q,A\n"}, Error(("qa.csv", "no records")), **CSV),
    case("empty/text", {"t.txt": b""}, Error(("t.txt", "no records"))),
    case("empty/parquet", {"d.parquet": b""}, Error(("d.parquet", "no records"))),
    case("empty/beside-data", {"a.jsonl": jsonl(messages(0), messages(1)), "b.jsonl": b""}, Kept(2)),
    # --- a directory with no data files ---
    case("no-data/empty-dir", {}, Error(("no data files",))),
    case("no-data/hidden-files-only", {".DS_Store": b"\x00\x01", "sub/.gitkeep": b""}, Error(("no data files",))),
    case("no-data/unknown-kind", {"notes.md": b"# notes\n"}, Error(("notes.md", "kotune reads"))),
]


def run(tmp_path: Path, tokenizer_dir: Path, files: dict[str, bytes], data: dict) -> tuple[dict, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, content in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(content)
    params = params_file(tmp_path / "params.yaml", tokenizer_dir, data={**BASE, **data})
    out, metrics = tmp_path / "processed", tmp_path / "data.json"
    prepare.main(["--params", str(params), "--raw", str(raw), "--out", str(out), "--metrics", str(metrics),
                  "--plot", str(tmp_path / "lengths.csv")])
    return json.loads(metrics.read_text()), out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(("files", "data", "expect"), CASES)
def test_bad_input_is_a_clear_error_or_a_counted_reject(tmp_path, tiny_tokenizer_dir, files, data, expect):
    if isinstance(expect, Error):
        with pytest.raises(KotuneError) as error:
            run(tmp_path, tiny_tokenizer_dir, files, data)
        missing = [fragment for fragment in expect.fragments if fragment not in str(error.value)]
        assert not missing, f"{str(error.value)!r} lacks {missing}"
        return
    metrics, out = run(tmp_path, tiny_tokenizer_dir, files, data)
    kept = rows(out / "train.jsonl") + rows(out / "eval.jsonl")
    rejects = rows(out / "rejects.jsonl")
    counts = metrics["records"]
    assert counts["read"] == expect.records == counts["kept"] + counts["rejected"]
    assert (len(kept), len(rejects)) == (counts["kept"], counts["rejected"])
    assert Counter(r["reason"] for r in rejects) == expect.rejects
    for reject in rejects:
        assert Path(reject["source"]).name in files and reject["detail"]
        assert isinstance(reject["line"], int) or reject["source"].endswith(".parquet")
    for fragment in expect.details:
        assert any(fragment in r["detail"] for r in rejects), f"no reject detail holds {fragment!r}"
    written = json.dumps(kept, ensure_ascii=False)
    assert expect.text in written and "\\u0000" not in written  # decoded right; NUL never reaches training


def test_copies_kept_by_dedup_false_never_straddle_the_split(tmp_path, tiny_tokenizer_dir):
    # 10 copies of each of two conversations and 5 eval records: the cut falls inside a group of copies.
    files = {"m.jsonl": jsonl(*[messages(0)] * 10, *[messages(1)] * 10)}
    metrics, out = run(tmp_path, tiny_tokenizer_dir, files, {"dedup": False, "eval_size": 5})
    train, evals = rows(out / "train.jsonl"), rows(out / "eval.jsonl")
    assert metrics["records"]["kept"] == 20 and len(evals) == 10
    assert not {r["id"] for r in train} & {r["id"] for r in evals}


def test_cli_prints_the_clear_message_without_a_traceback(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "qa.csv").write_bytes(qa_csv(csv_row(0), '질문,"끝나지 않은 답', "다음 질문,답"))
    params = params_file(tmp_path / "params.yaml", tiny_tokenizer_dir, data={**BASE, **CSV})
    command = [sys.executable, "-m", "kotune", "prepare", "--params", str(params), "--raw", str(tmp_path / "raw"),
               "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.csv")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 2
    assert "kotune prepare: error:" in result.stderr and "qa.csv:3: field 'A'" in result.stderr
    assert "Traceback" not in result.stderr
