"""Every Hydra preset composes into a valid params.yaml; the committed params.yaml is the default."""

from pathlib import Path

import pytest

from kotune.config import Params, load_params
from kotune.presets import GROUPS, compose, compose_to, options
from kotune.typed_config import to_dict

from .conftest import ROOT

pytestmark = pytest.mark.unit
CONF = ROOT / "conf"


def preset_files() -> list[Path]:
    # conf/accelerate/ holds `accelerate launch` settings, not params presets (tests/test_distributed.py loads them).
    return sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF and p.parent.name != "accelerate")


def test_every_preset_file_is_in_a_known_group():
    files = preset_files()
    assert len(files) >= 12  # 4 models, 5 datasets, 3 train recipes
    assert {p.parent.name for p in files} == set(GROUPS)


@pytest.mark.parametrize("path", preset_files(), ids=lambda p: f"{p.parent.name}={p.stem}")
def test_each_preset_composes_and_validates(path):
    params = compose([f"{path.parent.name}={path.stem}"], CONF)
    assert isinstance(params, Params)


def test_the_issue_example_composes():
    params = compose(["model=llama-3.1-8b", "data=open-korean-instructions", "train=qlora-80gb"], CONF)
    assert params.model.name_or_path == "meta-llama/Llama-3.1-8B"
    assert params.model.pad_token == "<|finetune_right_pad_id|>"
    assert params.data.source == "heegyu/open-korean-instructions" and params.data.format == "usr_bot"
    assert params.train.packing and params.lora.lora_r == 64 and params.data.max_tokens == 4096


def test_committed_params_yaml_is_the_default_composition(tmp_path):
    composed = tmp_path / "params.yaml"
    compose_to(composed, [], CONF)
    assert composed.read_bytes() == (ROOT / "params.yaml").read_bytes(), "run `kotune params` and commit"


def test_default_composition_equals_the_config_defaults():
    # Defaults live in src/kotune/config.py; conf/config.yaml restates them for DVC to track.
    assert to_dict(load_params(ROOT / "params.yaml")) == to_dict(Params())


def test_every_group_has_its_default_option():
    for group, default in zip(GROUPS, ("tiny-ko", "embedded", "cpu-tiny"), strict=True):
        assert default in options(group, CONF)


def test_params_yaml_states_every_field():
    """DVC tracks what params.yaml says; a value left to a code default would change unseen."""
    import yaml

    def keys(value, prefix=""):
        if isinstance(value, dict):
            return {k for name, v in value.items() for k in keys(v, f"{prefix}{name}.")} or {prefix}
        return {prefix.rstrip(".")}

    written = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert keys(written) == keys(to_dict(Params()))
