"""prepare on every shipped sample format, on bad input, and its determinism."""

import json
import shutil

import pytest

from kotune.errors import KotuneError
from kotune.stages import prepare

from .conftest import ROOT

pytestmark = pytest.mark.unit
SAMPLES = ROOT / "data" / "samples"


def run(tmp_path, params, *sources):
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copyfile(source, raw / source.name)
    out, metrics, plot = tmp_path / "processed", tmp_path / "data.json", tmp_path / "lengths.csv"
    prepare.main(["--params", str(params), "--raw", str(raw), "--out", str(out), "--metrics", str(metrics),
                  "--plot", str(plot)])
    return json.loads(metrics.read_text()), out


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# Sizes of the shipped samples (see data/samples/README.md): kept records and reject reasons.
CASES = {
    "messages.jsonl": ({}, 390, {"duplicate": 2, "malformed_json": 1, "no_assistant_turn": 1, "unknown_role": 1}),
    "alpaca.json": ({}, 320, {}),
    "usr_bot.jsonl": ({}, 150, {}),
    "kochat.txt": ({}, 30, {}),
    "sharegpt.json": ({}, 70, {}),
    "dialog.json": ({}, 45, {}),
    "qa.csv": ({"columns": {"instruction": "Q", "output": "A"}}, 50, {}),
    "qa_cp949.csv": ({"columns": {"instruction": "Q", "output": "A"}}, 50, {}),
    "text.txt": ({}, 112, {"too_short": 1}),  # 100 answers, some of several paragraphs
}


@pytest.mark.parametrize("name", CASES)
def test_every_sample_format(tmp_path, write_params, name):
    data, kept, rejects = CASES[name]
    metrics, out = run(tmp_path, write_params(data=data), SAMPLES / name)
    assert metrics["records"]["kept"] == kept
    assert metrics["rejects"] == rejects
    assert metrics["records"]["train"] + metrics["records"]["eval"] == kept
    train, evals = rows(out / "train.jsonl"), rows(out / "eval.jsonl")
    assert not {r["id"] for r in train} & {r["id"] for r in evals}
    assert all(("messages" in r) != ("text" in r) and r["source"].startswith(str(tmp_path)) for r in train + evals)


def test_rejects_name_file_line_and_reason(tmp_path, write_params):
    _, out = run(tmp_path, write_params(), SAMPLES / "messages.jsonl")
    rejects = rows(out / "rejects.jsonl")
    lines = (SAMPLES / "messages.jsonl").read_text(encoding="utf-8").splitlines()
    (bad,) = [r for r in rejects if r["reason"] == "malformed_json"]
    assert bad["source"].endswith("messages.jsonl") and lines[bad["line"] - 1] == bad["record"]
    duplicates = [r for r in rejects if r["reason"] == "duplicate"]
    assert [r["line"] for r in duplicates] == [len(lines) - 4, len(lines) - 3]  # the planted copies
    assert duplicates[0]["detail"].endswith("messages.jsonl:4")  # of the 4th record


def test_dialog_names_are_masked_and_speakers_merged(tmp_path, write_params):
    metrics, out = run(tmp_path, write_params(), SAMPLES / "dialog.json")
    text = json.dumps(rows(out / "train.jsonl") + rows(out / "eval.jsonl"), ensure_ascii=False)
    assert "<name>" in text and "*" not in text
    assert metrics["turns"]["merged"] > 0 and metrics["turns"]["utterances_with_masked_names"] > 0


def test_length_limits_reject_with_the_count(tmp_path, write_params):
    metrics, out = run(tmp_path, write_params(data={"max_tokens": 100, "min_tokens": 60}), SAMPLES / "alpaca.json")
    assert metrics["rejects"]["too_long"] > 0 and metrics["rejects"]["too_short"] > 0
    assert metrics["tokens"]["max"] <= 100
    detail = next(r["detail"] for r in rows(out / "rejects.jsonl") if r["reason"] == "too_long")
    assert detail.endswith("> data.max_tokens 100")


def test_max_records_is_reported_not_silent(tmp_path, write_params):
    metrics, _ = run(tmp_path, write_params(data={"max_records": 50}), SAMPLES / "alpaca.json")
    assert metrics["records"]["read"] == 50 and metrics["records"]["not_read_max_records"] == 270


def test_outputs_are_byte_identical_across_runs(tmp_path, write_params):
    params = write_params()
    _, first = run(tmp_path / "a", params, SAMPLES / "messages.jsonl")
    _, second = run(tmp_path / "b", params, SAMPLES / "messages.jsonl")
    for name in ("train.jsonl", "eval.jsonl", "rejects.jsonl"):
        assert (first / name).read_text().replace(str(tmp_path / "a"), "") == \
            (second / name).read_text().replace(str(tmp_path / "b"), "")


def test_outputs_are_byte_identical_across_processes(tmp_path, write_params):
    """Separate interpreters with different hash seeds (set/dict order of strings differs between them)."""
    import os
    import subprocess
    import sys

    params, raw = write_params(), tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(SAMPLES / "messages.jsonl", raw / "messages.jsonl")
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        subprocess.run([sys.executable, "-m", "kotune", "prepare", "--params", str(params), "--raw", str(raw),
                        "--out", str(out / "processed"), "--metrics", str(out / "data.json"),
                        "--plot", str(out / "lengths.csv")],
                       env={**os.environ, "PYTHONHASHSEED": seed}, check=True, capture_output=True)
        outputs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert len(outputs[0]) == 5 and outputs[0] == outputs[1]


def test_split_is_seeded(tmp_path, write_params):
    _, a = run(tmp_path / "a", write_params(data={"seed": 1}), SAMPLES / "alpaca.json")
    _, b = run(tmp_path / "b", write_params(data={"seed": 2}), SAMPLES / "alpaca.json")
    assert {r["id"] for r in rows(a / "eval.jsonl")} != {r["id"] for r in rows(b / "eval.jsonl")}


def test_wrong_format_leaves_nothing_and_says_why(tmp_path, write_params):
    with pytest.raises(KotuneError, match=r"no records left .*\{'missing_field': 320\}"):
        run(tmp_path, write_params(data={"format": "messages"}), SAMPLES / "alpaca.json")
    assert len(rows(tmp_path / "processed" / "rejects.jsonl")) == 320


def test_undetectable_format_names_the_fields(tmp_path, write_params):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"질문": "가", "대답": "나"}\n', encoding="utf-8")
    with pytest.raises(KotuneError, match=r"odd.jsonl:1: cannot tell the data format \(fields: 질문, 대답\)"):
        run(tmp_path, write_params(), path)


def test_missing_field_in_one_record_is_a_reject(tmp_path, write_params):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "가?", "output": "나입니다."}\n{"instruction": "다?"}\n', encoding="utf-8")
    metrics, out = run(tmp_path, write_params(data={"format": "alpaca", "eval_size": 1, "min_tokens": 1}), path)
    (reject,) = rows(out / "rejects.jsonl")
    assert (reject["line"], reject["reason"]) == (2, "missing_field") and "'output'" in reject["detail"]
