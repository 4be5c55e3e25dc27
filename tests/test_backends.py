"""The speed options' guards on a machine without CUDA or Unsloth: clear errors, never a silent fallback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kotune import modeling, training, unsloth_backend
from kotune.config import ModelSection, Params, TrainSection, load_params, params_from_dict
from kotune.errors import ConfigError, KotuneError

pytestmark = pytest.mark.unit


def test_unsloth_backend_refuses_liger_and_dora():
    with pytest.raises(ConfigError, match="use_liger_kernel with train.backend unsloth"):
        params_from_dict({"train": {"backend": "unsloth", "use_liger_kernel": True}})
    with pytest.raises(ConfigError, match="use_dora"):
        params_from_dict({"train": {"backend": "unsloth"}, "lora": {"use_dora": True}})


def test_missing_unsloth_says_how_to_install(monkeypatch):
    monkeypatch.setattr(unsloth_backend.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KotuneError, match="requirements-unsloth.txt"):
        unsloth_backend.import_first()


def test_unsloth_backend_needs_cuda():
    with pytest.raises(KotuneError, match="needs CUDA"):
        unsloth_backend.load_peft_model(params_from_dict({"train": {"backend": "unsloth"}}), "cpu")


def test_varlen_attention_needs_cuda():
    with pytest.raises(KotuneError, match="varlen needs CUDA"):
        modeling.check_attention(ModelSection(attn_implementation="varlen"), "cpu")


def test_unsloth_backend_leaves_checkpointing_to_unsloth(tmp_path):
    train = TrainSection(backend="unsloth", gradient_checkpointing=True)
    assert not training.sft_config(train, "cpu", tmp_path, True, False).gradient_checkpointing
    assert training.sft_config(TrainSection(gradient_checkpointing=True), "cpu", tmp_path, True, False)\
        .gradient_checkpointing


def test_padding_free_is_decided_by_kotune_not_by_the_gpu(tmp_path, monkeypatch):
    """Unsloth's SFTConfig leaves padding_free unset (None) and then picks padded or padding-free batches from
    the GPU's compute capability: kotune passes TRL's default, false, every time (packing still implies it)."""
    import trl

    given = []
    monkeypatch.setattr(trl, "SFTConfig", lambda **kwargs: given.append(kwargs))
    for packing in (False, True):
        training.sft_config(TrainSection(backend="unsloth", packing=packing), "cpu", tmp_path, True, False)
    assert [kwargs["padding_free"] for kwargs in given] == [False, False]


def test_train_stage_imports_no_transformers_before_the_backend():
    """Unsloth patches transformers, PEFT and TRL as it is imported: `kotune train` must not import them first."""
    code = ("import sys; from kotune import cli; import kotune.stages.train; "
            "print([m for m in ('transformers', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpu_presets_state_a_valid_backend():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert params.train.backend == "transformers"  # the CPU default stays simple
    assert Params().model.attn_implementation == "sdpa"


def fake_unsloth(monkeypatch):
    """Unsloth's FastLanguageModel as far as load_peft_model uses it: get_peft_model sets the precision
    variable for a 4-bit model, as the real one does (unsloth_zoo.training_utils)."""
    import types

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            return "base", "tokenizer"

        @staticmethod
        def get_peft_model(base, **kwargs):
            monkeypatch.setenv("UNSLOTH_MIXED_PRECISION", "float32")
            return "peft model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.delenv("UNSLOTH_MIXED_PRECISION", raising=False)


@pytest.mark.parametrize(("mixed_precision", "expected"),
                         [("no", "bfloat16"), ("auto", "float32"), ("bf16", "float32")])
def test_unsloth_trainer_is_told_to_keep_mixed_precision_off(monkeypatch, mixed_precision, expected):
    """Unsloth's trainer turns autocast on when SFTConfig asks for none, unless UNSLOTH_MIXED_PRECISION is
    bfloat16 when it is built: `no` must reach it, set after get_peft_model has written float32."""
    fake_unsloth(monkeypatch)
    params = params_from_dict({"train": {"backend": "unsloth", "mixed_precision": mixed_precision},
                               "model": {"torch_dtype": "bfloat16"}})
    assert unsloth_backend.load_peft_model(params, "cuda") == "peft model"
    assert os.environ["UNSLOTH_MIXED_PRECISION"] == expected


def test_unsloth_without_mixed_precision_refuses_a_float16_model(monkeypatch):
    fake_unsloth(monkeypatch)
    params = params_from_dict({"train": {"backend": "unsloth", "mixed_precision": "no"},
                               "model": {"torch_dtype": "float16"}})
    with pytest.raises(KotuneError, match="without loss scaling"):
        unsloth_backend.load_peft_model(params, "cuda")
