"""Peak GPU memory of one QLoRA training step, from the model's shape and the settings alone.

Weights are counted in bytes per parameter; activations as the tensors autograd saves, per token, in
one decoder layer (named below, as transformers' Llama, PEFT's LoRA and bitsandbytes' 4-bit matmul
save them). The step peaks at the start of the backward pass: every checkpointed layer input and
every layer kept whole is still held, and then either the loss head runs its backward or the last
layer is recomputed and run backward. The estimate is what `torch.cuda.max_memory_allocated()`
reports; `kotune fit` adds the CUDA context and allocator slack on top.

Validated against measured peaks on an H100: bench/results/2026-11-24-fit-validation.md
(`python bench/fit_validation.py` prints that table from this module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kotune.model_shapes import PROJECTIONS, ModelShape

GiB = 2**30
# bitsandbytes' 4-bit blocks: one absmax per 64 weights, fp32; double quantization stores the absmax
# values as uint8 with one fp32 constant per 256 of them (QLoRA paper, section 3).
BNB_BLOCK, DOUBLE_QUANT_BLOCK = 64, 256
# TRL's fused LM head (trl/kernels/chunked_logprob.py) projects up to 4,096 tokens x 32,768 vocabulary
# entries at a time (into a buffer of that width whatever the vocabulary) instead of materializing the logits.
LOSS_TILE_TOKENS, LOSS_TILE_VOCAB = 4096, 32768
# Fitted (the one constant for SDPA's math kernel): at its peak it holds this many fp32 copies of the
# (batch, heads, seq, seq) scores. The kernels' code bounds it between 3.25 (scores, softmax, the -inf
# mask and `_safe_softmax`'s `where` copy, in the forward) and 4 (the saved result, its gradient and the
# softmax gradient with a temporary, in the backward); 3.5 fits the seed recipe's bs 1 x 8192 (44.5 GiB).
MATH_ATTENTION_FP32_COPIES = 3.5
# Fitted: regional torch.compile (train.compile_layers) saves fewer tensors per layer (counted below, as for
# Liger) and keeps one MLP-sized gradient fewer alive in the backward, but costs a fixed amount besides
# (its generated kernels' workspace): fitted to bs 2 x 2048 packed, varlen + fused AdamW on an H100,
# 7.79 GiB compiled against 7.62 eager. The other compiled measurements are out-of-sample checks.
COMPILE_WORKSPACE = 0.46 * GiB
# Fitted: LoRA dropout (lora_dropout > 0) costs this many bytes per token per element of each targeted
# projection's input. The code says 3 (the dropped bf16 input lora_A saves, and the boolean mask); the
# presets as shipped (dropout 0.05) measured 1.6-1.7 in layers kept whole (qlora-80gb, compiled or not)
# and 2.25 in the recomputed layer at 131,072 tokens (qlora-long-80gb), against the same runs without it.
LORA_DROPOUT_BYTES = 2

LayerKernels = Literal["eager", "liger", "compiled"]
# varlen: FlashAttention's variable-length kernel on packed rows; flash: SDPA's fused kernels, no mask;
# masked: SDPA's memory-efficient kernel with transformers' dense (batch, 1, seq, seq) mask;
# math: SDPA's unfused fallback (scores materialized); eager: transformers' own unfused attention.
Attention = Literal["varlen", "flash", "masked", "math", "eager"]
# chunked: the logits are never materialized (TRL's fused LM head); full: fp32 logits and log-softmax.
LossHead = Literal["chunked", "full"]


@dataclass(frozen=True)
class Workload:
    """What one training micro-step runs, in the terms the physics needs (kotune.fit maps params.yaml here)."""

    micro_batch: int
    seq_len: int
    load_in_4bit: bool = True
    double_quant: bool = True
    weight_bytes: int = 2  # embeddings, LM head, norms; every weight when not 4-bit
    activation_bytes: int = 2  # the model's dtype: what flows between layers
    compute_bytes: int = 2  # bitsandbytes' compute dtype
    lora_r: int = 16
    lora_targets: tuple[str, ...] = PROJECTIONS
    lora_dropout: bool = False  # lora_dropout > 0: what dropout keeps for the backward (LORA_DROPOUT_BYTES)
    lora_bytes: int = 2
    optimizer_bytes: float = 4.0  # optimizer state per LoRA parameter
    gradients_held: bool = False  # gradient accumulation keeps LoRA gradients between micro-batches
    checkpointing: bool = True
    checkpoint_every_n_layers: int = 1
    layers_not_recomputed: int = 0  # the last k layers are not checkpointed
    offload_checkpoints: bool = False
    embeddings_on_cpu: bool = False  # the input embedding table in CPU memory (untied models only)
    saved_attention_layers: int = 0  # checkpointed layers that keep their attention output (selective checkpointing)
    layer_kernels: LayerKernels = "eager"
    attention: Attention = "flash"
    kv_repeated: bool = False  # key/value heads repeated to the query heads before the kernel
    loss_head: LossHead = "chunked"

    def __post_init__(self):
        if min(self.micro_batch, self.seq_len, self.lora_r, self.checkpoint_every_n_layers) < 1:
            raise ValueError("micro_batch, seq_len, lora_r and checkpoint_every_n_layers must be >= 1")
        if self.layers_not_recomputed < 0:
            raise ValueError("layers_not_recomputed must be >= 0")
        unknown = set(self.lora_targets) - set(PROJECTIONS)
        if unknown:
            raise ValueError(f"LoRA targets {sorted(unknown)} are not Llama projections ({', '.join(PROJECTIONS)})")

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, float]  # bytes per component, in report order
    peak_at: str  # which moment of the step the activations peak at

    @property
    def allocated(self) -> float:
        return sum(self.parts.values())


def quantized_weight_bytes(shape: ModelShape, w: Workload) -> float:
    """The decoder layers' projections: 4 bits per weight plus the blockwise quantization constants."""
    if not w.load_in_4bit:
        return shape.linear_params * w.weight_bytes
    blocks = shape.linear_params / BNB_BLOCK
    constants = blocks * (1 + 4 / DOUBLE_QUANT_BLOCK) if w.double_quant else blocks * 4
    return shape.linear_params / 2 + constants


def lora_params(shape: ModelShape, w: Workload) -> int:
    """A (r x in) and B (out x r) for each targeted projection of each layer."""
    per_layer = sum(w.lora_r * sum(shape.projection(name)) for name in w.lora_targets)
    return per_layer * shape.num_hidden_layers


def layer_bytes_per_token(shape: ModelShape, w: Workload, kept: bool) -> float:
    """What autograd saves for one decoder layer, per token. `kept`: a layer not checkpointed, whose input
    is not also held as a checkpoint."""
    h, i, a = shape.hidden_size, shape.intermediate_size, w.activation_bytes
    fused = w.layer_kernels != "eager"  # Liger's or compiled RMSNorm and SiLU x up
    # transformers' RMSNorm saves an fp32 copy of its input; fused ones (and fp32 models) save the input itself.
    saved = (4 * h if a < 4 and not fused else 0) + (a * h if fused else max(4, a) * h)
    saved += a * h if kept and (fused or a == 4) else 0
    saved += 2 * a * h  # the two norms' outputs: inputs of the projections
    if w.load_in_4bit and w.compute_bytes != a:  # each 4-bit matmul saves its input cast to the compute dtype
        saved += w.compute_bytes * sum(shape.projection(name)[0] for name in PROJECTIONS)
    kv = shape.q_size if w.kv_repeated or w.attention in ("masked", "math", "eager") else shape.kv_size
    saved += a * (shape.q_size + 2 * kv)  # queries, keys, values
    saved += a * shape.q_size * ((w.attention in ("flash", "masked")) + (w.attention != "varlen"))  # out, o_proj in
    saved += a * i * (3 if fused else 4)  # gate, up, (SiLU(gate),) their product
    dropout = LORA_DROPOUT_BYTES if w.lora_dropout else 0
    for name in w.lora_targets:  # A's output, saved by B; with dropout, what the dropout keeps

        saved += a * w.lora_r + dropout * shape.projection(name)[0]
    return saved


def scores_bytes(shape: ModelShape, w: Workload, in_flight: bool) -> float:
    """Quadratic attention memory of one layer: saved for its backward, or extra while it runs."""
    a, pairs = w.activation_bytes, w.micro_batch * w.seq_len**2
    elements = pairs * shape.num_attention_heads
    if w.attention == "math":
        return elements * 4 * (MATH_ATTENTION_FP32_COPIES - 1 if in_flight else 1)
    if w.attention == "eager":
        return elements * (4 + a)  # saved: fp32 softmax and its cast; in flight: their two gradients
    if w.attention == "masked":
        return 0 if in_flight else pairs * a  # SDPA's float copy of the boolean mask, saved per layer
    return 0


def backward_workspace(shape: ModelShape, w: Workload) -> float:
    """Gradients alive while a layer runs backward (the MLP's are the largest), plus the 4-bit weight
    bitsandbytes dequantizes for the matmul."""
    h, i, a = shape.hidden_size, shape.intermediate_size, w.activation_bytes
    per_token = (i + h) * a if w.layer_kernels == "compiled" else (2 * i + h) * a
    dequantized = max(math.prod(shape.projection(p)) for p in PROJECTIONS) * w.compute_bytes if w.load_in_4bit else 0
    return per_token * w.tokens + dequantized


def loss_head_bytes(shape: ModelShape, w: Workload) -> float:
    """The final norm, LM head and loss, at their backward."""
    h, a, tokens = shape.hidden_size, w.activation_bytes, w.tokens
    norm = 4 * h if w.layer_kernels == "eager" else a * h
    if w.loss_head == "full":
        # fp32 logits, the log-softmax output and its gradient; the head's own output first if not fp32.
        return tokens * (norm + 3 * shape.vocab_size * 4 + (shape.vocab_size * a if a < 4 else 0))
    # The labelled hidden states (copied), their fp32 gradient and its cast back; two projection tiles.
    return tokens * (norm + 4 * h + 3 * a * h) + 2 * min(tokens, LOSS_TILE_TOKENS) * LOSS_TILE_VOCAB * a


def estimate(shape: ModelShape, w: Workload) -> Estimate:
    layers, every, tokens = shape.num_hidden_layers, w.checkpoint_every_n_layers, w.tokens
    recomputable = max(layers - w.layers_not_recomputed, 0)  # kotune.activation_checkpointing: the first ones
    checkpointed = math.ceil(recomputable / every) if w.checkpointing else 0
    kept = layers - checkpointed
    held = 0.0 if w.offload_checkpoints else checkpointed * tokens * shape.hidden_size * w.activation_bytes
    if w.attention == "masked":
        held += w.micro_batch * w.seq_len**2  # transformers' boolean mask, shared by the layers
    whole = kept * (tokens * layer_bytes_per_token(shape, w, kept=True) + scores_bytes(shape, w, False))
    # the last layer runs backward first: recomputed if it is checkpointed
    recomputed = w.checkpointing and (layers - 1) % every == 0 and w.layers_not_recomputed == 0
    in_layer = {
        "recomputed last layer": (tokens * layer_bytes_per_token(shape, w, kept=False) + scores_bytes(shape, w, False))
        if recomputed else 0,
        "attention scores in flight": scores_bytes(shape, w, True),
        "backward workspace (gradients, dequantized weight)": backward_workspace(shape, w),
    }
    in_head = {"fp32 logits, log-softmax + gradient" if w.loss_head == "full" else "loss head (chunked logits)":
               loss_head_bytes(shape, w)}
    n_lora = lora_params(shape, w)
    dense = shape.dense_params
    if w.embeddings_on_cpu and not shape.tie_word_embeddings:
        dense -= shape.vocab_size * shape.hidden_size
    weights = "4-bit weights + quantization constants" if w.load_in_4bit else "16-bit weights"
    parts = {
        weights: quantized_weight_bytes(shape, w),
        ("16-bit LM head, norms (embeddings in CPU memory)" if dense < shape.dense_params
         else "16-bit embeddings, LM head, norms"): dense * w.weight_bytes,
        "LoRA parameters": n_lora * w.lora_bytes,
        "LoRA gradients (held for accumulation)": n_lora * w.lora_bytes if w.gradients_held else 0,
        "optimizer state": n_lora * w.optimizer_bytes,
        "checkpointed layer inputs" + (" (offloaded to CPU)" if w.offload_checkpoints else ""): held,
        # the output (query heads x head dim) and its fp32 log-sum-exp per query head
        "kept attention outputs": min(w.saved_attention_layers, checkpointed) * tokens
        * (shape.q_size * w.activation_bytes + shape.num_attention_heads * 4),
        f"activations of {kept} layers kept whole": whole,
        "compile workspace": COMPILE_WORKSPACE if w.layer_kernels == "compiled" else 0,
    }
    layer_peaks = sum(in_layer.values()) >= sum(in_head.values())
    parts.update(in_layer if layer_peaks else in_head)
    return Estimate(parts, "the last layer's backward" if layer_peaks else "the loss head's backward")
