"""The shape of a decoder-only Llama-family model, from its config.json alone (no weights are read).

`kotune fit`, `kotune doctor` and the train stage's start-up check need the shape before anything
loads: from `--config`, a local model folder, the Hugging Face cache, a small built-in table of
known models, or (for the embedded default) the params that the tiny_model stage builds it from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kotune.config import ModelSection, TinyModelSection
from kotune.errors import KotuneError

# PEFT's names for the seven linear layers of a Llama decoder layer, in the order of the forward pass.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None  # a hint for suggestions only: RoPE scaling can go beyond it

    def __post_init__(self):
        if min(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers,
               self.num_attention_heads, self.num_key_value_heads, self.head_dim) < 1:
            raise ValueError("every dimension of a model shape must be >= 1")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def projection(self, name: str) -> tuple[int, int]:
        """(in_features, out_features) of one projection of a decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_size), "k_proj": (h, self.kv_size), "v_proj": (h, self.kv_size),
                "o_proj": (self.q_size, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}[name]

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' projections: what bitsandbytes quantizes to 4 bits."""
        per_layer = sum(fan_in * fan_out for fan_in, fan_out in map(self.projection, PROJECTIONS))
        return per_layer * self.num_hidden_layers

    @property
    def dense_params(self) -> int:
        """Embeddings, the LM head (unless tied) and the RMSNorm weights: never quantized."""
        matrices = 1 if self.tie_word_embeddings else 2
        return matrices * self.vocab_size * self.hidden_size + (2 * self.num_hidden_layers + 1) * self.hidden_size

    @property
    def total_params(self) -> int:
        return self.linear_params + self.dense_params


def _llama(vocab, hidden, intermediate, layers, heads, kv_heads, tied=False) -> ModelShape:
    return ModelShape(vocab, hidden, intermediate, layers, heads, kv_heads, hidden // heads, tied)


LLAMA_3_8B = _llama(128256, 4096, 14336, 32, 32, 8)
LLAMA_3_70B = _llama(128256, 8192, 28672, 80, 64, 8)
# Hub ids whose config.json is known here, so `kotune fit` works before anything is downloaded.
KNOWN_SHAPES = {
    "meta-llama/Meta-Llama-3-8B": LLAMA_3_8B, "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA_3_8B,
    "meta-llama/Llama-3.1-8B": LLAMA_3_8B, "meta-llama/Llama-3.1-8B-Instruct": LLAMA_3_8B,
    "beomi/Llama-3-Open-Ko-8B": LLAMA_3_8B,
    "meta-llama/Meta-Llama-3-70B": LLAMA_3_70B, "meta-llama/Llama-3.1-70B": LLAMA_3_70B,
    "meta-llama/Llama-3.1-70B-Instruct": LLAMA_3_70B,
    "meta-llama/Llama-3.2-1B": _llama(128256, 2048, 8192, 16, 32, 8, tied=True),
    "meta-llama/Llama-3.2-3B": _llama(128256, 3072, 8192, 28, 24, 8, tied=True),
}


def shape_from_config(values: dict, where: str) -> ModelShape:
    """A ModelShape from the fields of a transformers config.json (Llama, Mistral, Qwen2 and alike)."""
    values = values.get("text_config", values)  # multimodal configs nest the language model's
    if values.get("num_local_experts") or values.get("num_experts"):
        raise KotuneError(f"{where}: a mixture-of-experts model; kotune fit models dense decoders only")
    try:
        heads = values["num_attention_heads"]
        return ModelShape(
            vocab_size=values["vocab_size"], hidden_size=values["hidden_size"],
            intermediate_size=values["intermediate_size"], num_hidden_layers=values["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=values.get("num_key_value_heads") or heads,
            head_dim=values.get("head_dim") or values["hidden_size"] // heads,
            tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
            max_position_embeddings=values.get("max_position_embeddings"),
        )
    except KeyError as exc:
        raise KotuneError(f"{where}: config.json has no {exc.args[0]}: not a decoder-only Llama-family "
                          "config") from None


def read_config(path: str | Path) -> ModelShape:
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KotuneError(f"cannot read the model config {path}: {exc}") from None
    return shape_from_config(values, str(path))


def tiny_shape(tiny: TinyModelSection) -> ModelShape:
    """The embedded default, as the tiny_model stage builds it (its BPE vocabulary + 256 Llama-3 specials)."""
    return ModelShape(tiny.bpe_vocab_size + 256, tiny.hidden_size, tiny.intermediate_size, tiny.num_hidden_layers,
                      tiny.num_attention_heads, tiny.num_key_value_heads, tiny.hidden_size // tiny.num_attention_heads,
                      max_position_embeddings=tiny.max_position_embeddings)


def resolve_shape(model: ModelSection, tiny: TinyModelSection,
                  config: str | Path | None = None) -> tuple[ModelShape, str]:
    """The model's shape and where it came from; raises KotuneError saying how to supply it."""
    if config is not None:
        return read_config(config), str(config)
    local = Path(model.name_or_path)
    if (local / "config.json").is_file():
        return read_config(local / "config.json"), str(local / "config.json")
    if local.exists():
        raise KotuneError(f"{local} has no config.json: pass --config path/to/config.json")
    if model.name_or_path == ModelSection().name_or_path:
        return tiny_shape(tiny), "params.tiny_model (the tiny_model stage has not built it yet)"
    cached = _cached_config(model)
    if cached is not None:
        return read_config(cached), f"{cached} (Hugging Face cache)"
    if model.name_or_path in KNOWN_SHAPES:
        return KNOWN_SHAPES[model.name_or_path], "kotune's table of known shapes"
    raise KotuneError(
        f"no config.json for {model.name_or_path}: it is not a local folder, not in the Hugging Face cache and not "
        f"a known shape ({', '.join(sorted(KNOWN_SHAPES))}); fetch only the config (`hf download "
        f"{model.name_or_path} config.json`) or pass --config path/to/config.json")


def _cached_config(model: ModelSection) -> str | None:
    """config.json from the local Hugging Face cache, without reaching the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision)
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None
