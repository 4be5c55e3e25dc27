"""export: GGUF files of the tiny Llama read back tensor by tensor and field by field; llama.cpp (when
llama-cpp-python is installed) predicts what the merged model predicts; the Llama 3 tokenizer survives."""

import json
import shutil

import gguf
import numpy as np
import pytest

from kotune import gguf_check
from kotune.config import ExportSection, load_params
from kotune.errors import ConfigError, KotuneError
from kotune.gguf_export import chat_template_for_gguf, permute, rope_factors, write_gguf
from kotune.stages import export

from .conftest import params_file

pytestmark = pytest.mark.unit
needs_llama_cpp = pytest.mark.skipif(not gguf_check.llama_cpp_available(), reason="llama-cpp-python not installed")
# The tiny model: embeddings, final norm, lm_head + 2 layers x (2 norms, q, k, v, o, gate, up, down) = 21 tensors.
TINY_TENSORS = 21


def run(tmp_path, model_dir, data, **values):
    params = params_file(tmp_path / "params.yaml", model_dir, export=values)
    export.main(["--params", str(params), "--merged", str(model_dir), "--data", str(data),
                 "--out", str(tmp_path / "gguf"), "--metrics", str(tmp_path / "export.json")])
    return tmp_path / "gguf", json.loads((tmp_path / "export.json").read_text())


def source_tensors(model_dir):
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(model_dir / "model.safetensors").items()}


def test_permute_moves_hugging_face_rope_halves_to_llama_cpp_pairs():
    head_dim, heads = 8, 2
    rows = np.arange(heads * head_dim, dtype=np.float32)[:, None].repeat(3, axis=1)
    out = permute(rows, heads)[:, 0].reshape(heads, head_dim)
    # HF rotates dim i with i + head_dim/2; llama.cpp rotates 2i with 2i+1: those must be the same two rows.
    assert out[0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7] and out[1].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]


def test_llama_31_rope_factors_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import _compute_llama3_parameters

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = {"hidden_size": 4096, "num_attention_heads": 32, "rope_parameters": scaling}
    hf = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=scaling,
                     max_position_embeddings=131072)
    scaled, _ = _compute_llama3_parameters(hf)
    plain = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    np.testing.assert_allclose(rope_factors(config), plain / scaled.numpy(), rtol=1e-4)


def test_llama_31_rope_scaling_is_written_where_llama_cpp_looks(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (model / "config.json").write_text(json.dumps(config))
    path = tmp_path / "m.gguf"
    write_gguf(model, path, "f16", "m")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    np.testing.assert_array_equal(tensors["rope_freqs.weight"].data, rope_factors(config))  # not "rope_freqs"
    assert len(tensors) == TINY_TENSORS + 1 and rope_factors(config).max() == 32.0
    if gguf_check.llama_cpp_available():  # llama.cpp refuses a file with a tensor it does not load
        assert len(gguf_check.llama_cpp_predictions(path, ["안녕"], [[4096, 300, 301]])["top1"][0]) == 3


def test_f16_and_q8_0_files_read_back_as_written(tmp_path, tiny_model_dir, processed):
    folder, metrics = run(tmp_path, tiny_model_dir, processed, gguf=["f16", "q8_0"], verify_examples=0)
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "kotune-model-f16.gguf",
                                                        "kotune-model-q8_0.gguf"]
    for name in ("kotune-model-f16.gguf", "kotune-model-q8_0.gguf"):
        assert metrics["files"][name]["tensors"] == TINY_TENSORS and metrics["files"][name]["tokens"] == 4352
    source, config = source_tensors(tiny_model_dir), json.loads((tiny_model_dir / "config.json").read_text())
    for name, tolerance in (("kotune-model-f16.gguf", 1e-3), ("kotune-model-q8_0.gguf", 2e-2)):
        tensors = {t.name: t for t in gguf.GGUFReader(folder / name).tensors}
        assert len(tensors) == TINY_TENSORS
        assert tensors["blk.1.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
        for gguf_name, hf_name, heads in (("token_embd.weight", "model.embed_tokens.weight", None),
                                          ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
                                          ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2),
                                          ("output.weight", "lm_head.weight", None)):
            tensor = tensors[gguf_name]
            want = source[hf_name] if heads is None else permute(source[hf_name], heads)
            got = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
            assert np.abs(got - want).max() <= tolerance * max(1.0, np.abs(want).max()), gguf_name
        assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2


def test_tokenizer_and_chat_template_are_in_the_metadata(tmp_path, tiny_model_dir, tiny_tokenizer):
    path = tmp_path / "m.gguf"
    write_gguf(tiny_model_dir, path, "f16", "tiny")
    reader = gguf.GGUFReader(path)
    field = {key: reader.get_field(key).contents() for key in reader.fields if not key.startswith("GGUF.")}
    tokens = field["tokenizer.ggml.tokens"]
    assert tokens == tiny_tokenizer.convert_ids_to_tokens(list(range(len(tiny_tokenizer))))
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "llama-bpe"
    assert len(field["tokenizer.ggml.merges"]) == len(json.loads((tiny_model_dir / "tokenizer.json").read_text())
                                                      ["model"]["merges"])
    types = field["tokenizer.ggml.token_type"]
    assert types[tokens.index("<|eot_id|>")] == gguf.TokenType.CONTROL and types[100] == gguf.TokenType.NORMAL
    assert tokens[field["tokenizer.ggml.bos_token_id"]] == "<|begin_of_text|>"
    assert tokens[field["tokenizer.ggml.eos_token_id"]] == "<|end_of_text|>"
    assert tokens[field["tokenizer.ggml.eot_token_id"]] == "<|eot_id|>"
    assert field["tokenizer.ggml.padding_token_id"] == tiny_tokenizer.pad_token_id
    assert field["tokenizer.ggml.add_bos_token"] is True
    assert field["general.architecture"] == "llama" and field["llama.block_count"] == 2
    assert field["llama.attention.head_count_kv"] == 2 and field["llama.rope.freq_base"] == 500000.0
    assert "generation %}" not in field["tokenizer.chat_template"]
    assert "<|start_header_id|>" in field["tokenizer.chat_template"]


def test_the_gguf_chat_template_renders_what_training_rendered(tiny_tokenizer):
    """The `{% generation %}` markers go (llama.cpp's Jinja rejects them); the rendered text stays the same."""
    messages = [{"role": "system", "content": "친절한 비서"}, {"role": "user", "content": "김치찌개는?"},
                {"role": "assistant", "content": "돼지고기와 신김치로 끓여요."}]
    stripped = chat_template_for_gguf(tiny_tokenizer.chat_template)
    assert stripped != tiny_tokenizer.chat_template
    for prompt in (False, True):
        assert (tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
                == tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                      chat_template=stripped))


def test_empty_export_writes_only_a_readme(tmp_path, tiny_model_dir, processed):
    folder, metrics = run(tmp_path, tiny_model_dir, processed, gguf=[])
    assert [p.name for p in folder.iterdir()] == ["README.md"]
    assert "export.gguf" in (folder / "README.md").read_text() and metrics["files"] == {}


def test_modelfile_runs_the_preferred_file_with_llama3_template_and_stops(tmp_path, tiny_model_dir, processed):
    folder, _ = run(tmp_path, tiny_model_dir, processed, gguf=["f16", "q8_0"], verify_examples=0, name="ko-chat")
    text = (folder / "Modelfile").read_text()
    assert text.startswith("FROM ./ko-chat-q8_0.gguf\nTEMPLATE \"\"\"")
    assert "{{ .Content }}<|eot_id|>" in text and text.count("{{") == text.count("}}")
    assert 'PARAMETER stop "<|eot_id|>"' in text and 'PARAMETER stop "<|end_of_text|>"' in text


def test_k_quant_without_llama_cpp_fails_before_writing(tmp_path, tiny_model_dir, processed, monkeypatch):
    monkeypatch.setattr(gguf_check, "k_quantizer", lambda: None)
    with pytest.raises(KotuneError, match="llama-quantize"):
        run(tmp_path, tiny_model_dir, processed, gguf=["f16", "q4_k_m"])
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("values, words", [({"gguf": ["q3_k"]}, "q3_k"), ({"gguf": ["f16", "f16"]}, "twice"),
                                           ({"name": "../up"}, "file-name"), ({"min_top1_agreement": 2}, "<= 1")])
def test_bad_export_params_are_refused(tmp_path, tiny_model_dir, values, words):
    with pytest.raises(ConfigError, match=words):
        load_params(params_file(tmp_path / "params.yaml", tiny_model_dir, export=values))
    assert ExportSection().gguf == ()  # the default skips the export


def test_only_llama_with_llama3_tokenizer(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(KotuneError, match="Llama architecture"):
        write_gguf(model, tmp_path / "m.gguf", "f16", "m")
    (model / "config.json").write_text(json.dumps(config))
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(KotuneError, match="llama-bpe"):
        write_gguf(model, tmp_path / "m.gguf", "f16", "m")


@needs_llama_cpp
def test_llama_cpp_predicts_what_the_merged_model_predicts(tmp_path, tiny_model_dir, processed):
    _, metrics = run(tmp_path, tiny_model_dir, processed, gguf=["f16", "q8_0", "q4_k_m"], verify_examples=4)
    files = metrics["files"]
    assert files["kotune-model-f16.gguf"]["top1_agreement"] >= 0.95  # the bar; measured 1.0
    assert files["kotune-model-f16.gguf"]["positions"] > 200
    for row in files.values():
        assert row["same_tokenization"] == 1.0 and row["top1_agreement"] >= 0.8
    assert metrics["k_quantizer"] in ("llama-quantize", "llama-cpp-python")


@pytest.mark.shared_data
def test_real_llama3_tokenizer_converts(tmp_path, shared_data):
    """Meta's Llama 3 tokenizer (128,256 tokens) on a tiny random Llama: ids, merges and template carry over."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    source = shared_data / "llama3-tokenizer"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"),
                                        **{k: v for k, v in json.loads((source / "tokenizer_config.json").read_text())
                                           .items() if k in ("bos_token", "eos_token", "chat_template")})
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    folder = tmp_path / "llama3"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = tmp_path / "llama3.gguf"
    write_gguf(folder, path, "f16", "llama3-tiny")
    reader = gguf.GGUFReader(path)
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert len(tokens) == 128256 and tokens[128009] == "<|eot_id|>"
    assert len(reader.get_field("tokenizer.ggml.merges").data) == 280147
    assert reader.get_field("tokenizer.ggml.bos_token_id").contents() == 128000
    assert reader.get_field("tokenizer.ggml.eot_token_id").contents() == 128009
    if gguf_check.llama_cpp_available():
        text = "LLM 중에서 가장 유명한 LLM은 뭐야?"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[:4] == [4178, 44, 72043, 57575]  # shared/data/README.md
        assert gguf_check.llama_cpp_predictions(path, [text], [ids])["tokens"] == [ids]
