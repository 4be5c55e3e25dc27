import pytest

from kotune.errors import KotuneError
from kotune.stages import fetch

from .conftest import ROOT

pytestmark = pytest.mark.unit


def run(tmp_path, write_params, **data):
    out = tmp_path / "raw"
    fetch.main(["--params", str(write_params(data=data)), "--out", str(out)])
    return out


def test_local_file_is_copied_byte_for_byte(tmp_path, write_params):
    source = ROOT / "data" / "samples" / "qa_cp949.csv"
    out = run(tmp_path, write_params, source=str(source))
    assert (out / "qa_cp949.csv").read_bytes() == source.read_bytes()


def test_local_folder_keeps_its_layout_and_replaces_old_output(tmp_path, write_params):
    source = tmp_path / "src"
    (source / "part").mkdir(parents=True)
    (source / "a.jsonl").write_text("{}\n")
    (source / "part" / "b.json").write_text("[]\n")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "stale.jsonl").write_text("{}\n")
    out = run(tmp_path, write_params, source=str(source))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.jsonl", "part/b.json"]


def test_missing_local_path_is_an_error(tmp_path, write_params):
    with pytest.raises(KotuneError, match="data/nowhere.jsonl does not exist"):
        run(tmp_path, write_params, source="data/nowhere.jsonl")


def test_hub_dataset_offline_says_what_to_do(tmp_path, write_params, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(KotuneError) as err:
        run(tmp_path, write_params, source="heegyu/open-korean-instructions")
    message = str(err.value)
    assert "heegyu/open-korean-instructions" in message and "HF_HOME" in message and "local folder" in message
    assert not (tmp_path / "raw").exists()  # atomic: no half-written output


def test_hub_id_detection():
    assert fetch.is_hub_id("beomi/KoAlpaca-v1.1a")
    with pytest.raises(KotuneError):
        fetch.is_hub_id("mydata/train.jsonl")
