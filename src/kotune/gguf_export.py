"""A merged Llama model (safetensors + tokenizer) as a GGUF file for llama.cpp and Ollama, with the `gguf` package.

llama.cpp's converter (convert_hf_to_gguf.py) is not in the pip package; this is its LlamaModel path for the
Llama architecture with Llama 3's byte-level BPE tokenizer:

- tensors renamed by gguf's TensorNameMap; q_proj/k_proj rows permuted from Hugging Face's rotate-half RoPE
  layout to llama.cpp's interleaved pairs; norms kept in float32; Llama 3.1's rope scaling as `rope_freqs`;
- the tokenizer in the metadata: model "gpt2", pre-tokenizer "llama-bpe", every token with its type (normal,
  control, user-defined, unused), the merges, BOS/EOS/EOT/pad ids, add-BOS, and the chat template.

Tensors stream from the safetensors shards to the file one at a time, so an 8B model needs no 16 GB of RAM.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from kotune.errors import KotuneError
from kotune.template import END_OF_TURN
from kotune.tiny_model import LLAMA3_SPLIT

log = logging.getLogger(__name__)
Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
TYPES = {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16), "bf16": (Q.BF16, F.MOSTLY_BF16),
         "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0)}
# `{% generation %}` marks assistant turns for TRL's loss mask only; llama.cpp's Jinja engine rejects the tag.
GENERATION_TAG = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")


@dataclass(frozen=True)
class Planned:
    source: str | None  # the Hugging Face tensor; None for rope_freqs, computed from the config
    name: str  # the GGUF tensor
    shape: tuple[int, ...]  # numpy order (GGUF stores it reversed)
    qtype: gguf.GGMLQuantizationType


def read_config(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama" or config.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        raise KotuneError(f"{model_dir}: GGUF export supports the Llama architecture only, not "
                          f"{config.get('architectures') or config.get('model_type')}")
    return config


def rope(config: dict) -> dict:
    """transformers 5 writes `rope_parameters`; older configs `rope_theta` and `rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    if params["rope_type"] not in ("default", "linear", "llama3"):
        raise KotuneError(f"rope type {params['rope_type']!r} is not supported by the GGUF export")
    return params


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_factors(config: dict) -> np.ndarray:
    """Llama 3.1's frequency-dependent RoPE scaling, as convert_hf_to_gguf's LlamaModel computes it."""
    params, dim = rope(config), head_dim(config)
    factor, low = params.get("factor", 8.0), params.get("low_freq_factor", 1.0)
    high = params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * params["rope_theta"] ** (i / dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def shards(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    from safetensors import safe_open

    where = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    if not where:
        raise KotuneError(f"{model_dir}: no safetensors weights")
    return where


def plan(model_dir: Path, config: dict, qtype) -> list[Planned]:
    """Every GGUF tensor, its shape and type, before any is converted (the header comes first)."""
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    out = []
    for source, path in shards(model_dir).items():
        if source.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KotuneError(f"{path}: tensor {source} has no GGUF name for the Llama architecture")
        with safe_open(path, framework="pt") as handle:
            shape = tuple(handle.get_slice(source).get_shape())
        kind = qtype if len(shape) > 1 else Q.F32  # norms stay float32, as llama.cpp's quantizer keeps them
        if kind not in (Q.F32, Q.F16) and shape[-1] % block:
            log.warning("%s: rows of %d are not a multiple of %s blocks (%d); written as f16",
                        name, shape[-1], kind.name, block)
            kind = Q.F16
        out.append(Planned(source, name, shape, kind))
    if rope(config)["rope_type"] == "llama3":
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"  # llama.cpp looks up rope_freqs.weight
        out.append(Planned(None, name, (head_dim(config) // 2,), Q.F32))
    return out


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """q/k projection rows from Hugging Face's rotate-half order to llama.cpp's interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def load(item: Planned, where: dict[str, Path], config: dict) -> np.ndarray:
    from safetensors import safe_open

    if item.source is None:
        return rope_factors(config)
    with safe_open(where[item.source], framework="pt") as handle:
        data = handle.get_tensor(item.source).float().numpy()
    if item.source.endswith("q_proj.weight"):
        data = permute(data, config["num_attention_heads"])
    elif item.source.endswith("k_proj.weight"):
        data = permute(data, config.get("num_key_value_heads") or config["num_attention_heads"])
    return data


def add_hparams(writer: gguf.GGUFWriter, config: dict, file_type, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_dimension_count(head_dim(config))
    params = rope(config)
    writer.add_rope_freq_base(params["rope_theta"])
    if params["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(params["factor"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def check_tokenizer(spec: dict, where: Path) -> None:
    """Llama 3's byte-level BPE: llama.cpp then splits text exactly as the tokenizer's regex does."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if spec["model"]["type"] != "BPE" or regexes != [LLAMA3_SPLIT] or steps[-1].get("type") != "ByteLevel":
        raise KotuneError(f"{where}: GGUF export supports Llama 3's byte-level BPE tokenizer (llama.cpp's "
                          "'llama-bpe'); this tokenizer differs (SentencePiece Llama 2 tokenizers are not supported)")


def vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    check_tokenizer(spec, model_dir / "tokenizer.json")
    by_id = {i: (token, gguf.TokenType.NORMAL) for token, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        text = added["content"]
        control = added["special"] or (text.startswith("<|") and text.endswith("|>"))
        by_id[added["id"]] = (text, gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= vocab_size:
        raise KotuneError(f"{model_dir}: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
    entries = [by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    return [token for token, _ in entries], [int(kind) for _, kind in entries]


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, config: dict) -> None:
    tokens, types = vocab(model_dir, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if special.chat_template is None:
        raise KotuneError(f"{model_dir}: the tokenizer has no chat template to put in the GGUF file")
    special.chat_template = chat_template_for_gguf(special.chat_template)
    special.add_to_gguf(writer, quiet=True)
    if END_OF_TURN in tokens:
        writer.add_eot_token_id(tokens.index(END_OF_TURN))


def chat_template_for_gguf(template: str) -> str:
    return GENERATION_TAG.sub("", template)


def write_gguf(model_dir: Path, path: Path, kind: str, name: str) -> list[Planned]:
    """Write `path`; returns the tensors as planned (names, shapes, types) for the read-back check."""
    config = read_config(model_dir)
    qtype, file_type = TYPES[kind]
    planned, where = plan(model_dir, config, qtype), shards(model_dir)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_hparams(writer, config, file_type, name)
    add_tokenizer(writer, model_dir, config)
    for item in planned:
        byte_shape = gguf.quant_shape_to_byte_shape(item.shape, item.qtype)
        writer.add_tensor_info(item.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=item.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for item in planned:
        writer.write_tensor_data(gguf.quantize(load(item, where, config), item.qtype))
    writer.close()
    return planned
