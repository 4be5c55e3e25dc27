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
