"""Shared fixtures: the repo root, ../shared/data when present, a tiny tokenizer, params files."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import yaml

# The GPU image (`pytest -m gpu` on the device) lacks the locked gguf package; skip collecting its tests there.
collect_ignore = [] if importlib.util.find_spec("gguf") else ["test_export.py"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TQDM_DISABLE", "1")
# Tests never reach the Hub: anything that tries must fail fast and say so.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real public datasets beside the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded default's tokenizer, trained on data/corpus (no model weights: a few seconds)."""
    from kotune.config import TinyModelSection
    from kotune.tiny_model import build_tokenizer, read_corpus

    out = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer(read_corpus(ROOT / "data" / "corpus"), TinyModelSection()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from kotune.config import ModelSection
    from kotune.modeling import load_tokenizer

    return load_tokenizer(ModelSection(name_or_path=str(tiny_tokenizer_dir)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny base model like the tiny_model stage's, briefly pretrained (a few seconds)."""
    import torch
    from transformers import AutoTokenizer

    from kotune.config import TinyModelSection
    from kotune.tiny_model import build_model, pretrain, read_corpus, token_stream

    cfg = TinyModelSection(pretrain_steps=60)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = build_model(tokenizer, cfg)
    pretrain(model, token_stream(tokenizer, read_corpus(ROOT / "data" / "corpus")), cfg)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def params_file(path: Path, model_dir: Path, **sections) -> Path:
    """The committed params.yaml with the tiny test model and some sections' keys overridden."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["name_or_path"] = str(model_dir)
    for name, values in sections.items():
        params[name].update(values)
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def write_params(tmp_path, tiny_model_dir):
    def write(**sections) -> Path:
        return params_file(tmp_path / "params.yaml", tiny_model_dir, **sections)

    return write


# Short, fast runs: 24 steps of 4 conversations (12 epochs of 8: the adapter must fit them), a checkpoint
# every 8 steps.
FAST = {"max_steps": 24, "save_steps": 8, "eval_steps": 8, "logging_steps": 1, "learning_rate": 5e-3,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "max_length": 256}
DATA = {"max_tokens": 256, "max_records": 12, "eval_size": 4}


@pytest.fixture(scope="session")
def processed(tmp_path_factory, tiny_model_dir) -> Path:
    """The embedded default's data, prepared with the tiny test model's tokenizer."""
    root = tmp_path_factory.mktemp("processed")
    (root / "raw").mkdir()
    shutil.copyfile(ROOT / "data" / "samples" / "messages.jsonl", root / "raw" / "messages.jsonl")
    params = params_file(root / "params.yaml", tiny_model_dir, data=DATA, train={"max_length": 256})
    from kotune.stages import prepare

    prepare.main(["--params", str(params), "--raw", str(root / "raw"), "--out", str(root / "out"),
                  "--metrics", str(root / "m.json"), "--plot", str(root / "p.csv")])
    return root / "out"


def stage_args(work: Path, params: Path, data: Path) -> list[str]:
    return ["--params", str(params), "--data", str(data), "--adapter", str(work / "adapter"),
            "--checkpoints", str(work / "checkpoints"), "--tensorboard", str(work / "tb"),
            "--metrics", str(work / "train.json"), "--plots", str(work / "plots")]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model_dir, processed) -> Path:
    work = tmp_path_factory.mktemp("train")
    params = params_file(work / "params.yaml", tiny_model_dir, data=DATA, train=FAST)
    from kotune.stages import train

    train.main(stage_args(work, params, processed))
    return work
