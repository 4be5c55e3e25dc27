import json

import pytest

from kotune.errors import KotuneError
from kotune.rawread import list_raw_files, read_file

pytestmark = pytest.mark.unit


def records(path, **kwargs):
    return list(read_file(path, **kwargs))


def test_json_array_elements_know_their_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"a": 1}, {"a": "두\n번째"}, {"a": 3}], ensure_ascii=False, indent=2))
    got = records(path)
    assert [r.value["a"] for r in got] == [1, "두\n번째", 3]
    lines = path.read_text().splitlines()
    assert [lines[r.line - 1].strip() for r in got] == ["{", "{", "{"]
    assert [r.line for r in got] == [2, 5, 8]


def test_malformed_jsonl_line_is_a_record_with_its_error(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    got = records(path)
    assert [(r.line, r.error[0] if r.error else None) for r in got] == [(1, None), (3, "malformed_json"), (4, None)]
    assert got[1].where == f"{path}:3"


def test_malformed_json_document_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]\n')
    with pytest.raises(KotuneError, match=r"a\.json:3: malformed JSON"):
        records(path)


def test_csv_lines_count_quoted_newlines(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('Q,A\n질문1,"답\n두 줄"\n질문2,답2\n질문3,답3,남는칸\n', encoding="utf-8")
    got = records(path)
    assert [r.line for r in got] == [2, 4, 5]
    assert got[0].value == {"Q": "질문1", "A": "답\n두 줄"}
    assert got[2].error[0] == "extra_fields"


def test_cp949_csv(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes("Q,A\n똠방각하?,네\n".encode("cp949"))
    assert records(path)[0].value == {"Q": "똠방각하?", "A": "네"}


def test_text_in_a_jsonl_file_is_read_as_text_blocks(tmp_path):
    # KoChatGPT ships `<<start conversation>>` text under a .jsonl name.
    path = tmp_path / "kochat.jsonl"
    path.write_text("<<start conversation>>\n<사람>: 안녕\n<챗봇>: 네\n\n"
                    "<<start conversation>>\n<사람>: 또\n<챗봇>: 응\n")
    got = records(path)
    assert [(r.line, r.value["text"]) for r in got] == [(2, "<사람>: 안녕\n<챗봇>: 네"), (6, "<사람>: 또\n<챗봇>: 응")]


def test_plain_text_paragraphs(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n첫 문단\n이어짐\n\n\n둘째 문단\n")
    assert [(r.line, r.value["text"]) for r in records(path)] == [(2, "첫 문단\n이어짐"), (6, "둘째 문단")]


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["가", "나"], "output": ["다", "라"]}), path)
    got = records(path)
    assert [r.value["output"] for r in got] == ["다", "라"] and got[1].where == f"{path} row 1"


def test_unknown_file_kinds_are_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.xlsx").write_bytes(b"PK")
    with pytest.raises(KotuneError, match="b.xlsx"):
        list_raw_files(tmp_path)
