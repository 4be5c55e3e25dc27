"""Which decoder layers the backward pass recomputes, and what it recomputes in them.

train.checkpoint_every_n_layers: only every n-th layer is checkpointed (faster, more memory).
train.layers_not_recomputed: the last k layers are not checkpointed: the memory a GPU has to spare, spent on
speed one layer at a time rather than half the layers at once. The last ones, because the backward pass
starts there and frees them first: by the time it recomputes a layer, the kept layers' activations are
gone, so the peak holds the k layers and no recomputed one (kotune.memory models that; `kotune fit` says
how many fit).
train.save_attention_layers: in the first k checkpointed layers the attention output is kept from the
forward pass instead of recomputed (selective activation checkpointing, PyTorch's
`create_selective_checkpoint_contexts`). At long context attention is most of a layer's work (at
131,072 tokens ~37 of a step's ~50 s on an H100), while its output is one hidden-state-sized tensor
(tokens x hidden x 2 bytes: 1 GiB per layer at 128k), so k trades that much memory for skipping k
attention forwards in the recomputation.

The policy sees the attention op because kotune's attention function is opaque to torch.compile
(kotune.packed_attention): with attention traced into the compiled layer, the kept outputs went unused
and the speed fell back to k = 0 (bench/results/2026-11-24-h100-issue6.md, call 14).

transformers >= 5.23 has `every_n_layers` as an option; the GPU image's 5.17 does not, so kotune sets
both per decoder layer as training begins, the way transformers would.
"""

from __future__ import annotations

import functools

import torch
from transformers import TrainerCallback


def is_attention(op) -> bool:
    """The forward attention kernels SDPA and varlen_attn dispatch to (matched by name, since which overloads
    exist differs across torch builds): FlashAttention, cuDNN, memory-efficient, the CPU flash kernel and
    torch's varlen custom op. Their backward ops never run under the checkpoint's dispatch mode."""
    name = str(op)
    return ("scaled_dot_product" in name or "_attention_forward" in name or "varlen_attn" in name) \
        and "backward" not in name


def _save_attention(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if is_attention(op) else CheckpointPolicy.PREFER_RECOMPUTE


def saving_attention():
    """A checkpoint function that keeps the attention output (non-reentrant: selective checkpointing needs it)."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    return functools.partial(checkpoint, use_reentrant=False,
                             context_fn=functools.partial(create_selective_checkpoint_contexts, _save_attention))


class SelectiveCheckpointing(TrainerCallback):
    """Applied to the layers the Trainer's gradient checkpointing switched on as training begins."""

    def __init__(self, every_n_layers: int = 1, save_attention_layers: int = 0, layers_not_recomputed: int = 0):
        self.every_n_layers, self.save_attention_layers = every_n_layers, save_attention_layers
        self.layers_not_recomputed = layers_not_recomputed

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        apply(model, self.every_n_layers, self.save_attention_layers, self.layers_not_recomputed)
        return control


def apply(model: torch.nn.Module, every_n_layers: int, save_attention_layers: int,
          layers_not_recomputed: int = 0) -> list[int]:
    """Returns the indexes of the layers that keep their attention output."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    recomputed = len(layers) - layers_not_recomputed  # the first ones
    saving = []
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index % every_n_layers == 0 and index < recomputed
        if layer.gradient_checkpointing and len(saving) < save_attention_layers:
            layer._gradient_checkpointing_func = saving_attention()
            saving.append(index)
    return saving


def non_reentrant(function) -> bool:
    """torch's non-reentrant checkpoint, as transformers and kotune bind it (functools.partial, use_reentrant=False)."""
    return isinstance(function, functools.partial) and function.keywords.get("use_reentrant") is False


class NoEmbeddingOutputGradient(TrainerCallback):
    """The input embedding's output stops asking for a gradient when nothing needs it.

    transformers (at train start) and TRL (for PEFT models) mark that output as requiring a gradient
    (`enable_input_require_grads`), which *reentrant* checkpointing needs: without an input that requires one, its
    layers' outputs would not require one either and the LoRA weights inside would get none. Non-reentrant
    checkpointing, which transformers >= 5 uses by default and kotune's selective checkpointing uses, tracks the
    weights themselves. There the mark only makes the backward pass compute the first layer's input gradient
    (its q, k, v, gate and up projections' input matmuls against their dequantized weights) for a tensor nothing
    reads. So, as training begins, when every checkpointed module is non-reentrant and nothing in the embedding is
    trained, a last forward hook on the embedding hands the layers its output detached. Anything else (reentrant
    or Unsloth's checkpointing, LoRA on the embedding, trainable tokens) keeps the mark."""

    def __init__(self):
        self.applied = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        embedding = model.get_input_embeddings()
        checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
        # Trained in the embedding itself (LoRA on embed_tokens, trainable tokens): its output carries their gradient.
        trained = any(p.requires_grad for p in embedding.parameters()) \
            or getattr(getattr(embedding, "weight", None), "requires_grad", False)
        if trained or not all(non_reentrant(getattr(m, "_gradient_checkpointing_func", None)) for m in checkpointed):
            return control
        # Registered after transformers' and TRL's hooks (they run first); the returned tensor replaces the output.
        embedding.register_forward_hook(lambda module, inputs, output: output.detach())
        self.applied = True
        return control
