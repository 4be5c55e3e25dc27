"""train.input_embeddings_on_cpu: the frozen input embedding table stays in CPU memory during training.

QLoRA leaves the embedding table unquantized and frozen, and the forward pass only reads one row per
token from it. Llama 3's table is 128,256 x 4,096 bf16 values, 1 GiB, which is a seventh of the 8B QLoRA
step's peak at 2 x 2,048 tokens. On the CPU, a step looks up its rows there (4,096 rows of 8 KiB) and
sends them to the GPU: 32 MiB per step instead of 1 GiB held for the whole run. The rows are the same
values, so the loss does not change.

Not for models whose output head shares the table (tied embeddings): the head needs it on the GPU.
"""

from __future__ import annotations

import torch


class HostEmbedding(torch.nn.Module):
    """nn.Embedding's forward, reading a table in CPU memory and returning rows on `device`."""

    def __init__(self, embedding: torch.nn.Embedding, device: torch.device):
        super().__init__()
        # Neither a parameter nor a buffer, so that the Trainer's `model.to(device)` leaves it where it is and
        # `model.device` (the first parameter's) stays the GPU; the adapter never saves it (it is frozen).
        self.table = embedding.weight.detach().to("cpu")
        self.padding_idx, self.target = embedding.padding_idx, device
        self.num_embeddings, self.embedding_dim = self.table.shape

    @property
    def weight(self) -> torch.Tensor:
        """What code that reads `get_input_embeddings().weight` (its dtype, its shape) expects."""
        return self.table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to("cpu").reshape(-1)
        # Gathered straight into pinned memory (torch's host allocator caches it across steps), so the copy to
        # the GPU below needs no staging copy and does not hold the host up.
        rows = torch.empty((ids.numel(), self.embedding_dim), dtype=self.table.dtype,
                           pin_memory=self.target.type == "cuda")
        torch.index_select(self.table, 0, ids, out=rows)
        return rows.view(*input_ids.shape, self.embedding_dim).to(self.target, non_blocking=True)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, on the CPU, rows sent to {self.target}"


def move_input_embeddings_to_cpu(model) -> int:
    """Swap the model's input embedding for a HostEmbedding; returns the bytes this frees on the GPU."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding) or embedding.weight.requires_grad:
        raise ValueError("train.input_embeddings_on_cpu needs a frozen torch.nn.Embedding as the input embedding "
                         f"(found {type(embedding).__name__}, trainable: {embedding.weight.requires_grad})")
    head = model.get_output_embeddings()
    if head is not None and head.weight is embedding.weight:
        raise ValueError("train.input_embeddings_on_cpu: this model ties its output head to the input embedding "
                         "(tie_word_embeddings), which the head needs on the GPU; set it to false")
    device = embedding.weight.device
    freed = embedding.weight.numel() * embedding.weight.element_size() if device.type != "cpu" else 0
    host = HostEmbedding(embedding, device)
    # Hooks already on the table (PEFT's and the Trainer's "inputs require grad" for checkpointing) carry over.
    host._forward_pre_hooks.update(embedding._forward_pre_hooks)
    host._forward_hooks.update(embedding._forward_hooks)
    model.set_input_embeddings(host)
    return freed
