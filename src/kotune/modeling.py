"""Load the base model and its tokenizer (local folder or Hub id), the 4-bit and LoRA configs from params."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from kotune.config import LoraSection, ModelSection, QuantSection
from kotune.errors import KotuneError, hub_unreachable_message
from kotune.template import choose_chat_template

log = logging.getLogger(__name__)


# Weight files that are Python pickles: unpickling one can run any code, so kotune never loads them.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors(folder: str | Path, what: str) -> None:
    """Refuse a local model or adapter folder whose weights exist only as pickles (pytorch_model.bin, *.pt).
    Hub ids need no check here: `use_safetensors=True` makes transformers fetch safetensors or fail."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise KotuneError(
            f"{folder}: the {what} weights are pickled ({', '.join(pickled)}); loading a pickle can run code, so "
            "kotune loads safetensors only. Convert them once, in an environment you trust, with "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`")


def warn_remote_code(model: ModelSection) -> None:
    if model.trust_remote_code:
        log.warning("model.trust_remote_code is true: Python files from %s will run in this process; "
                    "pin model.revision and read them first", model.name_or_path)


def load_tokenizer(model: ModelSection):
    """The tokenizer with kotune's rules applied: a chat template, and a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    warn_remote_code(model)
    local = Path(model.name_or_path).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as exc:
        if local:
            raise KotuneError(f"cannot load the tokenizer from {model.name_or_path}: {exc}") from None
        raise KotuneError(hub_unreachable_message("tokenizer", model.name_or_path, exc)) from None
    tokenizer.chat_template = choose_chat_template(tokenizer, model)
    if model.pad_token is not None:
        if model.pad_token not in tokenizer.get_vocab():
            raise KotuneError(f"model.pad_token {model.pad_token!r} is not in the vocabulary of {model.name_or_path}")
        tokenizer.pad_token = model.pad_token
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # Padding with EOS masks EOS out of the labels and the model never learns to stop.
        raise KotuneError(
            f"{model.name_or_path}: the pad token must exist and differ from EOS ({tokenizer.eos_token!r}); "
            "set model.pad_token to a reserved token such as <|reserved_special_token_250|>"
        )
    return tokenizer


def resolve_device(requested: str) -> str:
    """`cuda` when asked for or available; asking for CUDA without one is an error, not a slow CPU run."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise KotuneError("train.device is 'cuda' but no CUDA device is visible (torch.cuda.is_available() is "
                          "False): run on a GPU machine or in the Docker image with --gpus all, "
                          "or set train.device: cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def torch_dtype(name: str, device: str):
    """`auto`: bf16 on CUDA where supported (fp16 on older GPUs), fp32 on the CPU."""
    import torch

    if name == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def bnb_config(quant: QuantSection, device: str):
    """bitsandbytes' BitsAndBytesConfig from params, or None for a 16-bit LoRA base."""
    if not quant.load_in_4bit:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise KotuneError("quant.load_in_4bit needs bitsandbytes, which is not installed: install the project's "
                          "requirements.lock (make venv) or set quant.load_in_4bit: false")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=torch_dtype(quant.bnb_4bit_compute_dtype, device),
        bnb_4bit_quant_storage=getattr(torch, quant.bnb_4bit_quant_storage),
    )


def load_base_model(model: ModelSection, quant: QuantSection, device: str, gpu: int = 0, sharded: bool = False):
    """The base model, 4-bit when quant.load_in_4bit, placed whole on `device` (GPU `gpu`: a DDP rank's own);
    logs load time and memory. `sharded` (FSDP-QLoRA): no device map, since FSDP places and shards it, and the
    whole model in quant.bnb_4bit_quant_storage, one dtype for FSDP to shard (config.check_fsdp_qlora)."""
    from transformers import AutoModelForCausalLM

    check_attention(model, device)
    require_safetensors(model.name_or_path, "base model")
    warn_remote_code(model)
    dtype = torch_dtype(model.torch_dtype, device)
    if sharded and quant.load_in_4bit:
        dtype = torch_dtype(quant.bnb_4bit_quant_storage, device)
    started = time.perf_counter()
    try:
        base = AutoModelForCausalLM.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code,
            use_safetensors=True, quantization_config=bnb_config(quant, device), dtype=dtype,
            attn_implementation=model.attn_implementation,
            device_map=None if sharded else {"": gpu if device == "cuda" else "cpu"},
        )
    except OSError as exc:
        if Path(model.name_or_path).exists():
            raise KotuneError(f"cannot load the model from {model.name_or_path}: {exc}") from None
        raise KotuneError(hub_unreachable_message("model", model.name_or_path, exc)) from None
    log.info("loaded %s in %.1f s: %s, %.1f MiB in memory", model.name_or_path, time.perf_counter() - started,
             "4-bit " + quant.bnb_4bit_quant_type if quant.load_in_4bit else str(base.dtype),
             base.get_memory_footprint() / 2**20)
    return base


def check_attention(model: ModelSection, device: str) -> None:
    """`varlen` is kotune's own implementation: register it with transformers; it has no CPU kernel."""
    if model.attn_implementation != "varlen":
        return
    if device != "cuda":
        raise KotuneError("model.attn_implementation varlen needs CUDA (FlashAttention's kernel); use sdpa on the CPU")
    from kotune import packed_attention

    packed_attention.register()


def lora_config(lora: LoraSection):
    from peft import LoraConfig

    return LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                      target_modules=list(lora.target_modules), use_rslora=lora.use_rslora, use_dora=lora.use_dora,
                      bias=lora.bias, task_type="CAUSAL_LM")
