"""merge: faithful to base + adapter, 16-bit sharded safetensors, EOS ids for the chat template."""

import json

import pytest
import torch

from kotune.errors import KotuneError
from kotune.stages import merge

from .conftest import DATA, params_file

pytestmark = pytest.mark.unit


def run_merge(tmp_path, tiny_model_dir, trained, processed, **merge_values):
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={"max_length": 256},
                         merge=merge_values)
    out = tmp_path / "merged"
    merge.main(["--params", str(params), "--adapter", str(trained / "adapter"), "--data", str(processed),
                "--out", str(out), "--metrics", str(tmp_path / "merge.json")])
    return out, json.loads((tmp_path / "merge.json").read_text())


def test_fp32_merge_matches_base_plus_adapter(tmp_path, tiny_model_dir, trained, processed):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    out, metrics = run_merge(tmp_path, tiny_model_dir, trained, processed, dtype="float32")
    assert metrics["max_abs_logit_diff"] <= 1e-3 and metrics["verify_tokens"] > 0
    # Independently: base (NF4 round trip, as trained) + adapter, unmerged, against the saved merged model.
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, device_map={"": "cpu"},
                                                dtype=torch.float32).dequantize()
    reference = PeftModel.from_pretrained(base, trained / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = AutoTokenizer.from_pretrained(out)("운영체제는 컴퓨터의 자원을 관리합니다.", return_tensors="pt")
    with torch.no_grad():
        assert (reference(**tokens).logits - merged(**tokens).logits).abs().max().item() <= 1e-3


def test_bf16_layout_shards_tokenizer_and_eos_ids(tmp_path, tiny_model_dir, trained, processed):
    out, metrics = run_merge(tmp_path, tiny_model_dir, trained, processed, dtype="bfloat16", max_shard_size="1MB")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) == metrics["shards"] > 1 and (out / "model.safetensors.index.json").exists()
    assert not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    generation = json.loads((out / "generation_config.json").read_text())
    vocab = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    assert generation["eos_token_id"] == [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    assert generation["pad_token_id"] == ids["<|reserved_special_token_250|>"]
    assert (out / "chat_template.jinja").exists() or "chat_template" in (out / "tokenizer_config.json").read_text()


def test_original_base_merges_too(tmp_path, tiny_model_dir, trained, processed):
    _, metrics = run_merge(tmp_path, tiny_model_dir, trained, processed, dtype="float32", base="original")
    assert metrics["max_abs_logit_diff"] <= 1e-3


def test_unfaithful_merge_fails_the_stage(tmp_path, tiny_model_dir, trained, processed):
    with pytest.raises(KotuneError, match="merge.tolerance"):
        run_merge(tmp_path, tiny_model_dir, trained, processed, dtype="bfloat16", tolerance=1e-9)
