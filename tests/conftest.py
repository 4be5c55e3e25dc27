"""Shared fixtures: the repo root, ../shared/data when present, a tiny tokenizer, params files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

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
