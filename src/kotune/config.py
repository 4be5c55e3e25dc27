"""Typed sections of params.yaml: the only place defaults live.

Field names follow the libraries underneath (PEFT's LoraConfig, bitsandbytes' BitsAndBytesConfig,
TRL's SFTConfig), so a user who knows them reads params.yaml at sight. Each stage loads only the
sections it needs:

    data = load_section("params.yaml", "data")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kotune.errors import ConfigError
from kotune.typed_config import Origin, build, read_yaml_with_lines, suggest, to_dict

FORMATS = ("auto", "alpaca", "usr_bot", "dialog", "messages", "text")
# Canonical field names a source's own columns can be mapped onto (data.columns), per format.
COLUMN_FIELDS = ("instruction", "input", "output", "system", "text", "messages", "role", "content",
                 "turns", "speaker", "utterance")


@dataclass(frozen=True)
class UsrBotSection:
    """Plain-text turns such as `<usr> 질문 <bot> 답` (open-korean-instructions) or `<사람>:`/`<챗봇>:`."""

    user: tuple[str, ...] = ("<usr>", "<사람>:")
    assistant: tuple[str, ...] = ("<bot>", "<챗봇>:")
    system: tuple[str, ...] = ("<sys>",)
    conversation_separator: str = "<<start conversation>>"  # splits a .txt file into conversations

    def __post_init__(self):
        if not self.user or not self.assistant:
            raise ValueError("usr_bot needs at least one user and one assistant marker")


@dataclass(frozen=True)
class DialogSection:
    """Multi-speaker dialog (AI Hub 일상 대화 style): how speakers become chat roles."""

    assistant: str = "second"  # a speaker id (e.g. P02), or first/second: who speaks first/second
    others: Literal["user", "labels"] = "user"  # labels keeps speakers apart as user1, user2, …
    name_token: str | None = "<name>"  # replaces masked names (*, **); null keeps the asterisks


@dataclass(frozen=True)
class DataSection:
    source: str = "data/samples/messages.jsonl"  # local file/folder, or a Hub dataset id
    format: str = "auto"  # auto says what it detected; or one of FORMATS
    subset: str | None = None  # Hub config name
    split: str = "train"
    revision: str | None = None  # pin a Hub commit so fetch is reproducible
    data_files: tuple[str, ...] | None = None  # Hub data_files
    columns: dict[str, str] = field(default_factory=dict)  # canonical field -> the source's own name
    encoding: Literal["auto", "utf-8", "utf-8-sig", "cp949", "euc-kr"] = "auto"
    usr_bot: UsrBotSection = field(default_factory=UsrBotSection)
    dialog: DialogSection = field(default_factory=DialogSection)
    system_prompt: str | None = None  # added to conversations that have no system turn
    max_records: int | None = None  # read only the first N raw records (quick experiments)
    nfc: bool = True
    strip_control: bool = True
    dedup: bool = True  # exact duplicates (same turns) go to rejects
    min_tokens: int = 8  # whole rendered conversation, base tokenizer
    max_tokens: int = 512  # longer conversations are rejected, not truncated (keep <= train.max_length)
    eval_size: float = 0.1  # < 1: a fraction of the kept records; >= 1: a count
    seed: int = 42

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        for key in self.columns:
            if key not in COLUMN_FIELDS:
                raise ValueError(f"columns: {key!r} is not a canonical field ({', '.join(COLUMN_FIELDS)})")
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError("need 0 < min_tokens <= max_tokens")
        if self.eval_size <= 0 or (self.eval_size >= 1 and self.eval_size != int(self.eval_size)):
            raise ValueError("eval_size must be a fraction in (0, 1) or a whole count >= 1")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("max_records must be >= 1 or null")


@dataclass(frozen=True)
class ModelSection:
    name_or_path: str = "models/tiny-ko"  # Hub id or local folder; the tokenizer comes from here too
    revision: str | None = None
    chat_template: Literal["auto", "llama3", "tokenizer"] = "auto"  # auto: the tokenizer's, else llama3
    pad_token: str | None = None  # null: the tokenizer's own; must differ from EOS
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # varlen: FlashAttention's variable-length kernel bundled with PyTorch (CUDA): packed rows without a dense
    # mask or the flash-attn package (kotune.packed_attention)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "varlen"] = "sdpa"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class TinyModelSection:
    """The embedded default base: a tiny Llama built and briefly pretrained on data/corpus."""

    bpe_vocab_size: int = 4096  # + 256 Llama-3 special tokens
    hidden_size: int = 128  # multiple of 64 so bitsandbytes 4-bit blocks fit
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as in Llama 3
    max_position_embeddings: int = 1024
    rope_theta: float = 500000.0
    pretrain_steps: int = 300  # more: more Korean-like base generations, slower build
    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.hidden_size % 64 or self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of 64 and of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")


@dataclass(frozen=True)
class QuantSection:
    load_in_4bit: bool = True  # false: plain LoRA on a 16-bit base (more memory)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True  # ~0.4 bit/param less memory, slightly slower
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"


@dataclass(frozen=True)
class LoraSection:
    lora_r: int = 16  # higher: more capacity and memory
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                       "down_proj")
    use_rslora: bool = False  # scales by alpha/sqrt(r): helps at high rank
    use_dora: bool = False  # better at low rank, slower
    bias: Literal["none", "all", "lora_only"] = "none"

    def __post_init__(self):
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError("lora_r and lora_alpha must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_dropout must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")


EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")  # bitsandbytes': CUDA only, not under FSDP


@dataclass(frozen=True)
class TrainSection:
    learning_rate: float = 2e-3  # the tiny default; 8B presets use 1e-4..2e-4
    num_train_epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False  # true: less memory, ~20-30% slower (GPU presets turn it on)
    checkpoint_every_n_layers: int = 1  # 2: recompute every other decoder layer (faster, more memory)
    # > 0: the last k decoder layers keep what their backward pass needs instead of recomputing it: spare GPU
    # memory spent on speed a layer at a time (each 0.5-0.75 GiB for an 8B model at 2 x 2,048 tokens); `kotune fit`
    # says how many fit (kotune.activation_checkpointing)
    layers_not_recomputed: int = 0
    offload_activations: bool = False  # checkpointed layer inputs wait in pinned CPU memory (long context)
    # keep the attention output of this many checkpointed layers instead of recomputing it: long context, where
    # attention is most of the work; each costs tokens x hidden_size x 2 bytes (kotune.activation_checkpointing)
    save_attention_layers: int = 0
    # the frozen input embedding table (1 GiB for Llama 3) stays in CPU memory; each step's rows are looked up
    # there and sent over (kotune.host_embeddings). One process, untied embeddings, transformers backend.
    input_embeddings_on_cpu: bool = False
    # > 0: Python's garbage collector runs every N optimizer steps instead of whenever allocations trigger it
    # mid-step (kotune.garbage_collection); 0: Python's automatic collection
    gc_every_n_steps: int = 0
    compile_layers: bool = False  # regional torch.compile of each decoder layer: fuses the small ops; compiles first
    # micro-batches of whole rows (full-length documents: no padding, no packing) replay their forward, loss and
    # backward pass as one CUDA graph, so the host's launch work leaves the step (kotune.cuda_graph_step). CUDA,
    # one process, transformers backend, model.attn_implementation varlen; other batches run as before
    cuda_graph_step: bool = False
    # each 4-bit LoRA layer adds its LoRA product into the base output inside one matmul (torch.addmm) instead of
    # PEFT's copy, scale and add passes over the output (kotune.lora_addmm); under autocast, transformers backend
    fuse_lora_output: bool = False
    # the LM head's gradient made in its forward pass from whole-vocabulary tiles, so the backward pass does not
    # project onto the vocabulary again (one LM-head matmul fewer a step; kotune.head_grad_in_forward); transformers
    # backend, TRL's own fused head
    lm_head_grad_in_forward: bool = False
    # 8-bit ones need CUDA; adamw_torch_fused: one kernel for all LoRA tensors (fast; LoRA states are small)
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = "adamw_torch"
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: float = 0.05  # < 1: a ratio of all steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512  # tokens per example (or per packed sequence)
    packing: bool = False
    # group_by_length: each batch drawn from examples of similar length (transformers' LengthGroupedSampler:
    # shuffled, then sorted within mega-batches of 50 batches, the longest batch first), so padded batches carry
    # less padding. Reproducible: it draws from the run's seed. Packing leaves nothing to group.
    train_sampling_strategy: Literal["random", "group_by_length"] = "random"
    # pad every batch to a multiple of this many tokens: fewer distinct shapes for compiled kernels (Unsloth)
    pad_to_multiple_of: int | None = None
    assistant_only_loss: bool = True  # false: loss on prompt tokens too
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"  # auto: bf16 on CUDA where supported, else fp32
    device: Literal["auto", "cuda", "cpu"] = "auto"  # cuda: fail rather than crawl along on the CPU
    # Liger's fused Triton kernels (CUDA only): RMSNorm, SwiGLU, RoPE. TRL's SFTTrainer fuses the LM head with
    # the loss itself (no logits tensor), so Liger's fused linear cross-entropy is never used.
    use_liger_kernel: bool = False
    # unsloth: load and wrap the model with Unsloth's fused QLoRA kernels and offloaded checkpointing (CUDA,
    # optional install: requirements-unsloth.txt); TRL's SFTTrainer, data, checkpoints and metrics stay the same
    backend: Literal["transformers", "unsloth"] = "transformers"
    # > 1: `kotune train` runs itself under `accelerate launch`, one process per GPU (kotune.distributed);
    # the batch per step is num_processes x per_device_train_batch_size x gradient_accumulation_steps
    num_processes: int = 1
    # ddp: a whole 4-bit copy on every GPU, gradients averaged (fastest while the model fits one GPU);
    # fsdp-qlora: the 4-bit weights sharded across the GPUs (a model too big for one; needs
    # quant.bnb_4bit_quant_storage = quant.bnb_4bit_compute_dtype = bfloat16). Launch settings: conf/accelerate/
    distributed: Literal["ddp", "fsdp-qlora"] = "ddp"
    logging_steps: int = 5
    eval_steps: int = 20
    save_steps: int = 20
    save_total_limit: int | None = 3
    seed: int = 42

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_length", "logging_steps", "eval_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.gc_every_n_steps < 0:
            raise ValueError("gc_every_n_steps must be >= 0 (0: Python's automatic garbage collection)")
        if self.checkpoint_every_n_layers < 1:
            raise ValueError("checkpoint_every_n_layers must be >= 1")
        if self.save_attention_layers < 0:
            raise ValueError("save_attention_layers must be >= 0")
        if self.layers_not_recomputed < 0:
            raise ValueError("layers_not_recomputed must be >= 0")
        if self.layers_not_recomputed and self.checkpoint_every_n_layers > 1:
            raise ValueError("layers_not_recomputed with checkpoint_every_n_layers > 1: both choose which layers are "
                             "recomputed; use one")
        if self.layers_not_recomputed and self.offload_activations:
            raise ValueError("layers_not_recomputed with offload_activations: offloading moves what the kept layers "
                             "hold to CPU memory too, so keeping them on the GPU buys nothing; use one")
        if (self.offload_activations or self.checkpoint_every_n_layers > 1 or self.save_attention_layers
                or self.layers_not_recomputed) and not self.gradient_checkpointing:
            raise ValueError("offload_activations, checkpoint_every_n_layers, layers_not_recomputed and "
                             "save_attention_layers apply to gradient checkpointing: set gradient_checkpointing: true")
        if self.cuda_graph_step and (self.packing or self.num_processes > 1 or self.offload_activations):
            raise ValueError("cuda_graph_step replays whole rows on one GPU: packed rows change shape and boundaries "
                             "every batch, several processes synchronize inside the step, and offloading copies to "
                             "CPU memory; turn packing, num_processes > 1 and offload_activations off, or this")
        if self.input_embeddings_on_cpu and self.num_processes > 1:
            raise ValueError("input_embeddings_on_cpu is for one process: under DDP/FSDP every module's tensors "
                             "live on its GPU")
        if self.train_sampling_strategy == "group_by_length" and self.packing:
            raise ValueError("train_sampling_strategy group_by_length with packing: packed rows are all about "
                             "max_length long, so there is nothing to group; use one or the other")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError("pad_to_multiple_of must be >= 1 or null")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be -1 (use num_train_epochs) or > 0")
        if self.num_processes < 1:
            raise ValueError("num_processes must be >= 1")
        if self.num_processes > 1 and self.backend == "unsloth":
            raise ValueError("num_processes > 1 with backend unsloth: Unsloth's open-source build trains on one GPU; "
                             "use backend transformers for several")
        if self.distributed == "fsdp-qlora" and self.optim in EIGHT_BIT_OPTIMIZERS:
            raise ValueError(f"optim {self.optim} with distributed fsdp-qlora: saving a checkpoint fails with "
                             "bitsandbytes' 8-bit optimizers under FSDP (PEFT's FSDP guide); use adamw_torch_fused")
        if self.distributed == "fsdp-qlora" and self.compile_layers:
            raise ValueError("compile_layers with distributed fsdp-qlora: torch.compile under FSDP needs "
                             "use_orig_params, which FSDP-QLoRA turns off (conf/accelerate/fsdp-qlora.yaml)")


@dataclass(frozen=True)
class MergeSection:
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # never a 4-bit merge; float32 for checks
    base: Literal["dequantized", "original"] = "dequantized"  # the weights the adapter trained against
    tolerance: float | None = None  # max |logits(merged) - logits(base+adapter)|; null: by dtype (see merging)
    max_shard_size: str = "2GB"
    verify_examples: int = 8  # eval conversations whose logits must agree before and after merging


DEFAULT_PROMPTS = (
    "운영체제가 뭐하는 거야?",
    "김치찌개 맛있게 끓이는 방법을 알려줘.",
    "한국의 사계절에 대해 설명해 주세요.",
    "건강한 아침 습관 세 가지를 추천해 줘.",
    "파이썬에서 리스트와 튜플의 차이는 무엇인가요?",
)


@dataclass(frozen=True)
class EvalSection:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 128
    temperature: float = 0.7  # the sampled setting; greedy runs too
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 42  # sampled generations are reproducible
    mc_tasks: tuple[str, ...] = ()  # local KoBEST TSV / KMMLU / CLIcK files, besides the built-in set
    mc_limit: int | None = 200  # items per task (null: all); option scoring is a forward pass per option
    lm_eval_tasks: tuple[str, ...] = ()  # optional lm-evaluation-harness tasks (kobest_copa, kmmlu, haerae)
    batch_size: int = 8
    max_length: int = 1024  # eval conversations are truncated to this many tokens for the loss

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError("need temperature > 0, 0 < top_p <= 1, max_new_tokens >= 1")
        if self.batch_size < 1 or self.max_length < 1 or (self.mc_limit is not None and self.mc_limit < 1):
            raise ValueError("batch_size, max_length and mc_limit must be >= 1")


@dataclass(frozen=True)
class PublishSection:
    repo_id: str | None = None  # e.g. your-name/llama-3-8b-ko-qlora
    push: bool = False  # true uploads (HF_TOKEN from the environment or `hf auth login`, never from params)
    private: bool = True
    revision: str | None = None  # branch to push to; null: main
    include_adapter: bool = True  # the adapter too, under adapter/
    allow_worse_than_base: bool = False  # the quality gate: refuse to push a model whose eval loss is worse
    license: str | None = None  # null: "other" (state the base model's license)
    language: tuple[str, ...] = ("ko",)
    tags: tuple[str, ...] = ("kotune", "qlora", "korean")


# GGUF types (export.gguf): the gguf package writes f32, f16, bf16 and q8_0 itself; k-quants need llama.cpp's
# quantizer (gguf.quants reads Q4_K/Q5_K/Q6_K but cannot write them): `llama-quantize` on PATH, or llama-cpp-python.
GGUF_K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"]


@dataclass(frozen=True)
class ExportSection:
    """GGUF files of the merged model for llama.cpp and Ollama (Llama architecture, Llama 3 tokenizer)."""

    gguf: tuple[GGUFType, ...] = ()  # empty: the stage writes no GGUF (fast default); e.g. [f16, q8_0]
    name: str = "kotune-model"  # files: models/gguf/<name>-<type>.gguf
    verify_examples: int = 4  # eval conversations llama.cpp must predict like the merged model (0: off)
    min_top1_agreement: float = 0.95  # f32/f16/bf16 files: share of positions with the merged model's top-1

    def __post_init__(self):
        if len(set(self.gguf)) != len(self.gguf):
            raise ValueError(f"gguf lists a type twice: {list(self.gguf)}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"name {self.name!r} must be a plain file-name stem (letters, digits, . _ -)")
        if self.verify_examples < 0 or not 0 <= self.min_top1_agreement <= 1:
            raise ValueError("need verify_examples >= 0 and 0 <= min_top1_agreement <= 1")


SECTIONS = {
    "data": DataSection, "model": ModelSection, "tiny_model": TinyModelSection, "quant": QuantSection,
    "lora": LoraSection, "train": TrainSection, "merge": MergeSection, "eval": EvalSection,
    "export": ExportSection, "publish": PublishSection,
}


# The train switches the unsloth backend refuses, and why: Unsloth does that part of the step its own way.
UNSLOTH_DOES_ITSELF = {
    "use_liger_kernel": "Unsloth brings its own fused kernels and both patch the same modules; turn one off",
    "compile_layers": "Unsloth compiles its own kernels; turn one off",
    "fuse_lora_output": "Unsloth's LoRA kernels add the LoRA product in the matmul already; turn it off",
    "lm_head_grad_in_forward": "Unsloth puts its own kernel in the slot of TRL's fused head that this replaces; "
                               "turn it off",
    "cuda_graph_step": "Unsloth's offloaded checkpointing copies to CPU memory inside the step, which a CUDA graph "
                       "cannot hold",
}


@dataclass(frozen=True)
class Params:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    tiny_model: TinyModelSection = field(default_factory=TinyModelSection)
    quant: QuantSection = field(default_factory=QuantSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    merge: MergeSection = field(default_factory=MergeSection)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    publish: PublishSection = field(default_factory=PublishSection)

    def __post_init__(self):
        if self.data.max_tokens > self.train.max_length:
            raise ValueError(f"data.max_tokens ({self.data.max_tokens}) exceeds train.max_length "
                             f"({self.train.max_length}): prepare would keep examples that training truncates")
        if self.train.backend == "unsloth":
            for flag, reason in UNSLOTH_DOES_ITSELF.items():
                if getattr(self.train, flag):
                    raise ValueError(f"train.{flag} with train.backend unsloth: {reason}")
            if self.lora.use_dora:
                raise ValueError("lora.use_dora is not supported by train.backend unsloth")
            if self.train.checkpoint_every_n_layers > 1 or self.train.save_attention_layers \
                    or self.train.offload_activations or self.train.layers_not_recomputed:
                raise ValueError("train.checkpoint_every_n_layers > 1, layers_not_recomputed, save_attention_layers or "
                                 "offload_activations with train.backend unsloth: Unsloth checkpoints (and offloads) "
                                 "every layer itself")
        if self.train.cuda_graph_step and self.lora.lora_dropout:
            raise ValueError("train.cuda_graph_step with lora.lora_dropout > 0: the recomputation must draw the "
                             "forward pass's dropout masks again, which kotune has not verified inside a CUDA graph; "
                             "set lora.lora_dropout: 0 (as Unsloth's fast path does)")
        if self.train.cuda_graph_step and self.model.attn_implementation != "varlen":
            raise ValueError("train.cuda_graph_step needs model.attn_implementation: varlen (kotune's attention, which "
                             "takes whole rows from the host without checking the mask on the GPU)")
        if self.train.distributed == "fsdp-qlora" and self.quant.load_in_4bit:
            check_fsdp_qlora(self.quant, self.model)


def check_fsdp_qlora(quant: QuantSection, model: ModelSection) -> None:
    """FSDP shards only floating-point tensors of one dtype: the packed 4-bit weights are stored as the compute
    dtype (bnb_4bit_quant_storage) and the rest of the model is loaded in it, as PEFT's FSDP-QLoRA guide says."""
    storage, compute = quant.bnb_4bit_quant_storage, quant.bnb_4bit_compute_dtype
    if storage != compute:
        raise ValueError(f"train.distributed fsdp-qlora needs quant.bnb_4bit_quant_storage ({storage}) equal to "
                         f"quant.bnb_4bit_compute_dtype ({compute}): set both to bfloat16")
    if model.torch_dtype not in ("auto", storage):
        raise ValueError(f"train.distributed fsdp-qlora loads the model in quant.bnb_4bit_quant_storage ({storage}); "
                         f"model.torch_dtype ({model.torch_dtype}) must be auto or the same")


def params_from_dict(values: dict, origin: Origin | None = None) -> Params:
    """Validate every section (unknown sections fail too)."""
    origin = origin or Origin()
    for name in values:
        if name not in SECTIONS:
            raise ConfigError(f"{origin.at(name)}: {name}: unknown section; {suggest(name, list(SECTIONS))}")
    sections = {name: build(cls, values.get(name), name, origin) for name, cls in SECTIONS.items()}
    try:
        return Params(**sections)
    except ValueError as exc:
        raise ConfigError(f"{origin.file}: {exc}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    values, lines = read_yaml_with_lines(path)
    return params_from_dict(values, Origin(str(path), lines))


def load_section(path: str | Path, name: str):
    """One section, validated; the rest of the file is validated too so typos anywhere surface early."""
    return getattr(load_params(path), name)


def section_dict(section) -> dict:
    return to_dict(section)
