"""prepare on real public Korean datasets from ../shared/data (skipped where that folder is absent)."""

import json
import shutil

import pytest

from kotune.stages import prepare

pytestmark = [pytest.mark.unit, pytest.mark.shared_data]


def run(tmp_path, params, source):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(source, raw / source.name)
    out, metrics = tmp_path / "processed", tmp_path / "data.json"
    prepare.main(["--params", str(params), "--raw", str(raw), "--out", str(out), "--metrics", str(metrics),
                  "--plot", str(tmp_path / "plot.csv")])
    return json.loads(metrics.read_text())


def test_koalpaca_subset(tmp_path, write_params, shared_data):
    metrics = run(tmp_path, write_params(), shared_data / "koalpaca-v1.0-subset" / "ko_alpaca_data.json")
    records = metrics["records"]
    assert records["read"] == 11432  # SOURCE.md: 11,432 records
    assert records["kept"] + records["rejected"] == records["read"]
    assert records["kept"] > 10000 and records["eval"] == round(0.1 * records["kept"])


def test_kochatgpt_text_in_a_jsonl_file(tmp_path, write_params, shared_data):
    params = write_params(data={"max_tokens": 4096}, train={"max_length": 4096})  # long multi-turn chats
    metrics = run(tmp_path, params, shared_data / "kochatgpt" / "kochatgpt_1_SFT_conversation.jsonl")
    assert metrics["records"]["read"] == 439  # SOURCE.md: 439 conversations
    assert metrics["records"]["kept"] > 400 and metrics["turns"]["per_record_mean"] > 2


@pytest.mark.parametrize("path", ["music_commonsense/dev_dialog.json",
                                  "manual_grounded/manual2dial_dial_validation.json"])
def test_task_dialogues(tmp_path, write_params, shared_data, path):
    metrics = run(tmp_path, write_params(data={"max_tokens": 512}), shared_data / "hg-tods-dialogues" / path)
    assert metrics["records"]["kept"] > 50
    assert metrics["records"]["kept"] + metrics["records"]["rejected"] == metrics["records"]["read"]
