"""Bad params fail fast, before any model loads, with the key named (issue 7's table)."""

import pytest

from kotune.config import ConfigError, params_from_dict
from kotune.errors import KotuneError
from kotune.stages import merge, train

from .conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit

TRAIN_CASES = [
    ("unknown key", {"train": {"learnig_rate": 1e-3}}, "train.learnig_rate: unknown key; did you mean 'learning_rate'"),
    ("wrong type", {"lora": {"lora_r": "sixteen"}}, "lora.lora_r: expected an integer"),
    ("lora_r zero", {"lora": {"lora_r": 0}}, "lora_r and lora_alpha must be >= 1"),
    ("lora_r negative", {"lora": {"lora_r": -8}}, "lora_r and lora_alpha must be >= 1"),
    ("max_tokens over max_length", {"data": {"max_tokens": 4096}}, "data.max_tokens (4096) exceeds train.max_length"),
    ("offload without checkpointing", {"train": {"offload_activations": True}}, "set gradient_checkpointing: true"),
    ("length grouping with packing", {"train": {"packing": True, "train_sampling_strategy": "group_by_length"}},
     "nothing to group"),
    ("unknown sampling", {"train": {"train_sampling_strategy": "sorted"}},
     "train.train_sampling_strategy: 'sorted' is not one of"),
    ("unsloth with liger", {"train": {"backend": "unsloth", "use_liger_kernel": True}}, "turn one off"),
    ("cuda asked, none here", {"train": {"device": "cuda"}}, "no CUDA device is visible"),
    ("bf16 on the CPU", {"train": {"mixed_precision": "bf16"}}, "train.mixed_precision bf16 needs CUDA"),
    ("8-bit AdamW on the CPU", {"train": {"optim": "adamw_8bit"}}, "train.optim adamw_8bit needs CUDA"),
    ("varlen attention on the CPU", {"model": {"attn_implementation": "varlen"}}, "varlen needs CUDA"),
    ("Liger on the CPU", {"train": {"use_liger_kernel": True}}, "train.use_liger_kernel needs CUDA"),
    ("offloading on the CPU", {"train": {"gradient_checkpointing": True, "offload_activations": True}},
     "train.offload_activations moves activations"),
]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model or tokenizer load fails the test: the error must come first."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the params were checked")

    for name in ("AutoModelForCausalLM", "AutoTokenizer"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)


@pytest.fixture
def cpu_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU cases need a machine without CUDA")


def write(tmp_path, tiny_model_dir, sections):
    data, train_values = {**DATA, **sections.get("data", {})}, {**FAST, **sections.get("train", {})}
    sections = {**sections, "data": data, "train": train_values}
    return params_file(tmp_path / "params.yaml", tiny_model_dir, **sections)


@pytest.mark.parametrize("case, sections, message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_fails_before_loading(tmp_path, tiny_model_dir, processed, no_model_loads, cpu_only,
                                    case, sections, message):
    params = write(tmp_path, tiny_model_dir, sections)
    with pytest.raises(KotuneError) as error:
        train.main(stage_args(tmp_path, params, processed))
    assert message in str(error.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("sections, message", [
    ({"merge": {"dtype": "float16"}}, "merge.dtype float16 on the CPU"),
    ({"merge": {"dtype": "int4"}}, "merge.dtype: 'int4' is not one of"),
], ids=["fp16 merge on the CPU", "unknown dtype"])
def test_merge_fails_before_loading(tmp_path, tiny_model_dir, processed, no_model_loads, cpu_only, sections, message):
    params = write(tmp_path, tiny_model_dir, sections)
    with pytest.raises(KotuneError) as error:
        merge.main(["--params", str(params), "--adapter", str(tmp_path / "adapter"), "--data", str(processed),
                    "--out", str(tmp_path / "merged"), "--metrics", str(tmp_path / "merge.json")])
    assert message in str(error.value)
    assert not (tmp_path / "merged").exists()


def test_packing_with_assistant_only_loss_is_supported():
    """Not an impossible combination: TRL masks per example inside packed rows (the packed loss equals the
    unpacked loss: tests/test_packed_attention.py), so it is accepted."""
    params = params_from_dict({"train": {"packing": True, "assistant_only_loss": True}})
    assert params.train.packing and params.train.assistant_only_loss


def test_every_problem_is_named_at_once():
    from kotune.preflight import check_train

    params = params_from_dict({"train": {"mixed_precision": "fp16", "optim": "paged_adamw_8bit"}})
    with pytest.raises(KotuneError, match="mixed_precision fp16.*optim paged_adamw_8bit"):
        check_train(params, "cpu")
    check_train(params, "cuda")  # fine on a GPU


def test_config_errors_are_kotune_errors():
    assert issubclass(ConfigError, KotuneError)  # so the CLI prints them without a traceback
