"""train.input_embeddings_on_cpu: the frozen input embedding table stays in CPU memory during training.

QLoRA leaves the embedding table unquantized and frozen, and the forward pass only reads one row per
token from it. Llama 3's table is 128,256 x 4,096 bf16 values, 1 GiB, which is a seventh of the 8B QLoRA
step's peak at 2 x 2,048 tokens. On the CPU, a step looks up its rows there (4,096 rows of 8 KiB) and
sends them to the GPU: 32 MiB per step instead of 1 GiB held for the whole run. The rows are the same
values, so the loss does not change.

Not for models whose output head shares the table (tied embeddings): the head needs it on the GPU.

The lookup needs the token ids on the CPU. By the time the model runs, accelerate's dataloader has
moved the batch to the GPU, and copying the ids back makes the host wait for the GPU to drain the
previous step: the queue of kernels the host had built is gone (bench/results/2026-11-24-h100-issue6.md,
the sync traces). So the collator's own CPU copy of the ids rides along in the batch, under a key no
device move touches, and a hook on the model hands it to the lookup.
"""

from __future__ import annotations

import torch

HOST_IDS = "kotune_input_ids_on_host"  # the batch key under which the collator's CPU ids ride to the model


class IdsOnHost:
    """A batch's token ids as the collator made them, in CPU memory. Neither a tensor nor anything with a
    `.to`, so accelerate's `send_to_device` and the Trainer's `_prepare_inputs` leave it where it is."""

    __slots__ = ("ids",)

    def __init__(self, ids: torch.Tensor):
        self.ids = ids


class HostEmbedding(torch.nn.Module):
    """nn.Embedding's forward, reading a table in CPU memory and returning rows on `device`."""

    def __init__(self, embedding: torch.nn.Embedding, device: torch.device):
        super().__init__()
        # Neither a parameter nor a buffer, so that the Trainer's `model.to(device)` leaves it where it is and
        # `model.device` (the first parameter's) stays the GPU; the adapter never saves it (it is frozen).
        self.table = embedding.weight.detach().to("cpu")
        self.padding_idx, self.target = embedding.padding_idx, device
        self.num_embeddings, self.embedding_dim = self.table.shape
        self.ids_on_host: torch.Tensor | None = None  # this forward's ids, set by the model's pre-hook
        self.lookups_without_host_ids = 0  # copied their ids back from the device instead (on a GPU: a host sync)
        # Set while a CUDA graph of the training step is captured (kotune.cuda_graph_step): the graph's input rows,
        # which every replay fills from rows_on_host() before it runs, returned instead of a lookup.
        self.serving: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """What code that reads `get_input_embeddings().weight` (its dtype, its shape) expects."""
        return self.table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids, self.ids_on_host = self.ids_on_host, None  # used once: a later call (generation) brings its own
        if self.serving is not None:
            return self.serving
        rows = self.rows_on_host(self.ids_in_cpu_memory(input_ids, ids))
        return rows.view(*input_ids.shape, self.embedding_dim).to(self.target, non_blocking=True)

    def ids_in_cpu_memory(self, input_ids: torch.Tensor, carried: torch.Tensor | None) -> torch.Tensor:
        """The ids the batch carried in CPU memory where they match the model's input, else a copy back."""
        if carried is not None and carried.shape == input_ids.shape:
            return carried
        self.lookups_without_host_ids += 1
        return input_ids.to("cpu")  # waits for the GPU to finish everything queued before this copy

    def rows_on_host(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of CPU token ids, one per id, in CPU memory (pinned when they are bound for a GPU)."""
        ids = ids.reshape(-1)
        # Gathered straight into pinned memory (torch's host allocator caches it across steps, and keeps a block
        # until the copies queued from it are done), so the copy to the GPU needs no staging copy and does not
        # hold the host up.
        rows = torch.empty((ids.numel(), self.embedding_dim), dtype=self.table.dtype,
                           pin_memory=self.target.type == "cuda")
        torch.index_select(self.table, 0, ids, out=rows)
        return rows

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, on the CPU, rows sent to {self.target}"


def keep_input_embeddings_on_cpu(trainer) -> int:
    """Swap the trainer's model's input embedding for a HostEmbedding and have every batch bring its ids in
    CPU memory; returns the bytes this frees on the GPU."""
    freed = move_input_embeddings_to_cpu(trainer.model)
    trainer.data_collator = with_ids_on_host(trainer.data_collator)
    host = trainer.model.get_input_embeddings()

    def hand_over_ids(module, args, kwargs):
        # Popped on every call, so the key never reaches the model's forward, and set on every call, so a
        # forward without it (generation) never sees an earlier batch's ids.
        carried = kwargs.pop(HOST_IDS, None)
        host.ids_on_host = carried.ids if isinstance(carried, IdsOnHost) else None
        return args, kwargs

    trainer.model.register_forward_pre_hook(hand_over_ids, with_kwargs=True)
    return freed


def with_ids_on_host(collator):
    """The collator, with each batch's CPU token ids added under HOST_IDS."""

    def collate(examples):
        batch = collator(examples)
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.device.type == "cpu":
            batch[HOST_IDS] = IdsOnHost(ids)
        return batch

    return collate


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
