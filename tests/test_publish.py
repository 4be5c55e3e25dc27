"""publish: the release folder and model card, the GGUF files and how to run them, the dry run, the push
through a fake HfApi, the gate."""

import json
import shutil

import pytest

from kotune.errors import KotuneError
from kotune.stages import publish

from .conftest import params_file

pytestmark = pytest.mark.unit
TOKEN = "hf_" + "kotuneFAKEtoken" * 3


@pytest.fixture
def inputs(tmp_path, tiny_model_dir, trained):
    merged = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged)  # stands in for a merged model: same file layout
    (tmp_path / "eval.json").write_text(json.dumps({
        "base": {"eval_loss": 6.5, "perplexity": 665.1, "eos_stop_rate": 1.0},
        "adapter": {"eval_loss": 5.8, "perplexity": 330.3},
        "merged": {"eval_loss": 5.8, "perplexity": 330.3, "eos_stop_rate": 0.4},
        "mc": {"ko_mc_builtin": {"chance": 0.25, "items": 40, "base": 0.3, "merged": 0.35}}}))
    (tmp_path / "train.json").write_text(json.dumps({"final_loss": 5.7, "steps": 88}))
    return tmp_path, merged, trained / "adapter"


def run(inputs, tiny_model_dir, api_factory=None, gguf=None, **publish_values):
    work, merged, adapter = inputs
    params = params_file(work / "params.yaml", tiny_model_dir, publish=publish_values)
    publish.main(["--params", str(params), "--merged", str(merged), "--adapter", str(adapter),
                  "--eval", str(work / "eval.json"), "--train-metrics", str(work / "train.json"),
                  "--gguf", str(gguf or work / "no-gguf"), "--out", str(work / "publish")], api_factory=api_factory)
    return work / "publish"


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token is not None))

    def create_repo(self, **kwargs):
        FakeApi.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        FakeApi.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        files = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*")
                       if p.is_file())
        FakeApi.calls.append(("upload_folder", {**kwargs, "files": files}))


def test_dry_run_builds_the_release_and_card(inputs, tiny_model_dir, caplog):
    caplog.set_level("INFO")
    folder = run(inputs, tiny_model_dir)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert "model.safetensors" in names and "adapter/adapter_model.safetensors" in names and "README.md" in names
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "language:\n- ko" in card and "pipeline_tag: text-generation" in card and "license: other" in card
    assert "value: 5.8" in card and "git_commit" in card and "lora_r: 16" in card
    assert "base_model:" not in card  # a local base is named in the text, not as a Hub id
    assert "dry run" in caplog.text
    assert "GGUF" not in card and not list(folder.glob("*.gguf"))  # no export, no GGUF section


@pytest.fixture
def gguf_folder(inputs, tiny_model_dir):
    """What the export stage writes with export.gguf: [f16, q8_0] (verification off: no llama.cpp here)."""
    from kotune.stages import export

    work, merged, _ = inputs
    params = params_file(work / "export-params.yaml", tiny_model_dir,
                         export={"gguf": ["f16", "q8_0"], "verify_examples": 0})
    (work / "data").mkdir()
    (work / "data" / "eval.jsonl").write_text("")
    export.main(["--params", str(params), "--merged", str(merged), "--data", str(work / "data"),
                 "--out", str(work / "gguf"), "--metrics", str(work / "export.json")])
    return work / "gguf"


def test_gguf_files_join_the_release_and_the_card_says_how_to_run_them(inputs, tiny_model_dir, gguf_folder,
                                                                       monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    FakeApi.calls = []
    folder = run(inputs, tiny_model_dir, FakeApi, gguf=gguf_folder, push=True, repo_id="someone/Tiny-Ko-Chat")
    for name in ("kotune-model-f16.gguf", "kotune-model-q8_0.gguf", "Modelfile"):
        assert (folder / name).read_bytes() == (gguf_folder / name).read_bytes()
    uploaded = FakeApi.calls[-1][1]["files"]
    assert "kotune-model-q8_0.gguf" in uploaded and "Modelfile" in uploaded
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "## Evaluation" in card  # the card, not the export's README
    assert "## GGUF (llama.cpp, Ollama)" in card and "| `kotune-model-f16.gguf` | f16 |" in card
    assert "llama-cli -m kotune-model-q8_0.gguf -cnv" in card
    assert "FROM ./kotune-model-q8_0.gguf" in card and "{{ .Content }}<|eot_id|>" in card
    assert 'PARAMETER stop "<|eot_id|>"' in card and "ollama create tiny-ko-chat -f Modelfile" in card


def test_push_uses_the_api_and_never_writes_the_token(inputs, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    FakeApi.calls = []
    folder = run(inputs, tiny_model_dir, FakeApi, push=True, repo_id="someone/tiny-ko-chat", revision="exp-1")
    kinds = [name for name, _ in FakeApi.calls]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    create, upload = FakeApi.calls[1][1], FakeApi.calls[3][1]
    assert create == {"repo_id": "someone/tiny-ko-chat", "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["revision"] == "exp-1" and upload["commit_message"].startswith("kotune: model from git commit")
    assert "README.md" in upload["files"] and "adapter/adapter_config.json" in upload["files"]
    work = inputs[0]
    for path in work.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert "hf_kotune" not in (folder / "README.md").read_text()


def test_gate_refuses_a_worse_model(inputs, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    evals = json.loads((inputs[0] / "eval.json").read_text())
    evals["merged"]["eval_loss"] = 7.0
    (inputs[0] / "eval.json").write_text(json.dumps(evals))
    with pytest.raises(KotuneError, match="worse than the base"):
        run(inputs, tiny_model_dir, FakeApi, push=True, repo_id="someone/x")
    FakeApi.calls = []
    run(inputs, tiny_model_dir, FakeApi, push=True, repo_id="someone/x", allow_worse_than_base=True)
    assert ("upload_folder" in [name for name, _ in FakeApi.calls])


def test_push_without_a_token_says_how_to_log_in(inputs, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    with pytest.raises(KotuneError, match="hf auth login"):
        run(inputs, tiny_model_dir, FakeApi, push=True, repo_id="someone/x")


def test_push_without_repo_id(inputs, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(KotuneError, match="publish.repo_id"):
        run(inputs, tiny_model_dir, FakeApi, push=True)
