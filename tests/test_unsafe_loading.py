"""Only safetensors load: a pickled weight file is refused, or ignored beside safetensors, never unpickled;
trust_remote_code is off unless params turn it on, and then it warns."""

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest

from kotune import chat
from kotune.config import ModelSection, QuantSection
from kotune.errors import KotuneError
from kotune.modeling import load_base_model, load_tokenizer

pytestmark = pytest.mark.unit


class RunsCode:
    """Unpickling this creates `marker`: the proof a loader executed the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(folder: Path, name: str) -> Path:
    marker = folder.parent / f"unpickled-{name}"
    (folder / name).write_bytes(pickle.dumps(RunsCode(marker)))
    return marker


def copy_without_safetensors(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    return target


def test_pickled_base_model_is_refused_before_loading(tmp_path, tiny_model_dir):
    folder = copy_without_safetensors(tiny_model_dir, tmp_path / "pickled")
    marker = plant_pickle(folder, "pytorch_model.bin")
    with pytest.raises(KotuneError, match=r"pickled \(pytorch_model.bin\).*safetensors only"):
        load_base_model(ModelSection(name_or_path=str(folder)), QuantSection(load_in_4bit=False), "cpu")
    assert not marker.exists()


def test_safetensors_win_over_a_planted_pickle(tmp_path, tiny_model_dir):
    folder = tmp_path / "both"
    shutil.copytree(tiny_model_dir, folder)
    marker = plant_pickle(folder, "pytorch_model.bin")
    model = load_base_model(ModelSection(name_or_path=str(folder)), QuantSection(load_in_4bit=False), "cpu")
    assert model.num_parameters() > 0 and not marker.exists()


@pytest.mark.parametrize("name, is_adapter", [("pytorch_model.bin", False), ("adapter_model.bin", True)])
def test_chat_refuses_pickled_folders(tmp_path, tiny_model_dir, name, is_adapter):
    folder = copy_without_safetensors(tiny_model_dir, tmp_path / "folder")
    if is_adapter:
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    marker = plant_pickle(folder, name)
    with pytest.raises(KotuneError, match="pickled"):
        chat.load(str(folder))
    assert not marker.exists()


def test_remote_code_is_off_by_default_and_warns_when_on(tiny_model_dir, caplog):
    assert ModelSection().trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="kotune.modeling"):
        load_tokenizer(ModelSection(name_or_path=str(tiny_model_dir)))
        assert "trust_remote_code" not in caplog.text
        load_tokenizer(ModelSection(name_or_path=str(tiny_model_dir), trust_remote_code=True))
    assert "model.trust_remote_code is true" in caplog.text
