"""train.cuda_graph_step: a micro-batch of whole rows runs its forward, loss and backward pass as one
replayed CUDA graph.

Why: on the transformers backend the 8B QLoRA step at 2 x 2,048 tokens is host-bound. Its GPU kernels took
384 ms of a 457 ms step, 14% less GPU work than Unsloth's step, but the host needs longer than that to queue
them: ~7,800 kernel launches through Python, PEFT, bitsandbytes' dispatch, Dynamo's guards and the compiled
graphs' wrappers (bench/results/2026-11-24-h100-issue6.md, call 10). A captured graph replays every one of
those launches with one call, so the step costs its GPU time, whatever the host is doing meanwhile.

What a graph can hold: nothing in it may wait for the GPU (no `.item()`, no boolean gather, no
data-dependent shape), and it replays the same addresses and the same shapes. So:
- only micro-batches of whole rows are replayed: every token real, one sequence per row (full-length
  documents), which the host knows from the collator's CPU tensors (`BatchOnHost`), and only those of the
  one shape captured first. Everything else (packed rows, padded batches, the last short batch) runs as
  before, and the run logs how many of each it had;
- attention is told so from the host (`kotune.packed_attention.whole_rows`) instead of checking the mask
  on the GPU, and TRL's fused LM head scores every position instead of gathering the labelled ones
  (`kotune.static_lm_head`, with TRL's kernel too);
- each replay copies the batch into the graph's input tensors, and the gradients accumulate into tensors
  the graph owns, put back on the LoRA weights before every replay (the Trainer sets them to None after
  each optimizer step);
- with the input embeddings on the CPU, each replay's rows are looked up there and copied into the graph's
  input rows before it runs.
The first two micro-batches of that shape run as before (they compile the layers and warm the kernels up);
the third is captured and replayed. A capture that fails is logged and the run goes on without graphs.

Memory: the graph keeps its own pool, the size of one step's activations, and the allocator's peak is that
of an ordinary step (measured on the device, bench/results/).
"""

from __future__ import annotations

import logging
from collections import Counter

import torch

from kotune import packed_attention
from kotune.host_embeddings import HOST_IDS, HostEmbedding, IdsOnHost

log = logging.getLogger(__name__)

HOST_BATCH = "kotune_batch_on_host"  # the batch key under which the collator's facts ride to training_step
WARMUP_MICRO_BATCHES = 2  # run as before first: the compiled layers compile and the kernels warm up


class BatchOnHost:
    """What the host knows about a batch from the collator's CPU tensors. Not a tensor and without `.to`, so
    accelerate's device move leaves it alone (as kotune.host_embeddings.IdsOnHost)."""

    __slots__ = ("whole_rows",)

    def __init__(self, whole_rows: bool):
        self.whole_rows = whole_rows


def is_whole_rows(batch) -> bool:
    """Every row one sequence and every token real: no position ids (packing, padding-free), no padding."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.device.type != "cpu":
        return False
    if any(key in batch for key in ("position_ids", "cu_seq_lens_q", "seq_lengths")):
        return False
    return mask is None or (isinstance(mask, torch.Tensor) and mask.device.type == "cpu" and bool(mask.all()))


def with_batch_facts(collator):
    """The collator, with what the host knows about each batch added under HOST_BATCH."""

    def collate(examples):
        batch = collator(examples)
        batch[HOST_BATCH] = BatchOnHost(is_whole_rows(batch))
        return batch

    return collate


def capture(step):
    """Capture step() into a CUDA graph without running it; returns the graph's replay and step()'s outputs, which
    every replay rewrites in place. (The CPU tests swap in an emulation: a graph needs a GPU.)"""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # synchronizes and empties the allocator's cache first
        outputs = step()
    return graph.replay, outputs


class StepGraph:
    """One captured micro-batch step and the tensors it reads and writes."""

    def __init__(self, key, inputs: dict, num_items_in_batch, params: list[torch.Tensor],
                 host: HostEmbedding | None):
        self.key, self.params, self.host = key, params, host
        self.inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        self.num_items = None if num_items_in_batch is None else torch.as_tensor(
            num_items_in_batch, device=self.device).clone()
        self.rows = None if host is None else torch.empty(
            (*self.inputs["input_ids"].shape, host.embedding_dim), dtype=host.table.dtype, device=self.device)
        # Allocated before the capture, outside the graph's pool: the graph adds each micro-batch's gradients
        # into them, as autograd adds into a .grad that exists.
        self.grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        self.replay, self.loss, self.metrics_row = None, None, None

    @property
    def device(self) -> torch.device:
        return self.inputs["input_ids"].device

    @torch.no_grad()  # the embedding's output hook (checkpointing's "inputs require grad") marks the rows a leaf
    def load(self, inputs: dict, num_items_in_batch, ids_on_host: torch.Tensor | None) -> None:
        """This micro-batch's values into the graph's input tensors (queued on the stream the graph runs on)."""
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                self.inputs[name].copy_(value, non_blocking=True)
        if self.num_items is not None:
            if isinstance(num_items_in_batch, torch.Tensor):
                self.num_items.copy_(num_items_in_batch, non_blocking=True)
            else:
                self.num_items.fill_(num_items_in_batch)
        if self.host is not None:
            ids = ids_on_host if ids_on_host is not None else inputs["input_ids"].to("cpu")
            self.rows.copy_(self.host.rows_on_host(ids).view_as(self.rows), non_blocking=True)

    def attach_grads(self) -> None:
        """Put the graph's gradient tensors back on the weights: zeroed where the optimizer step dropped them,
        holding the accumulated values where a step that ran without the graph left its own."""
        dropped = []
        for param, grad in zip(self.params, self.grads, strict=True):
            current = param.grad
            if current is grad:
                continue
            if current is None:
                dropped.append(grad)
            else:
                grad.copy_(current)
            param.grad = grad
        if dropped:
            torch._foreach_zero_(dropped)


class GraphedSteps:
    """Mixed into kotune's SFTTrainer (kotune.sft_trainer.trainer_class); off until enable_cuda_graph_step()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_graph: StepGraph | None = None
        self._graphs_on = False
        self._shapes_seen: Counter = Counter()
        self.graph_step_counts = Counter()  # replayed / without the graph (whole rows, other shape) / not whole rows

    def enable_cuda_graph_step(self) -> None:
        self._graphs_on = True
        self.data_collator = with_batch_facts(self.data_collator)

    def training_step(self, model, inputs, num_items_in_batch=None):
        facts = inputs.pop(HOST_BATCH, None)
        if not self._graphs_on:
            return super().training_step(model, inputs, num_items_in_batch)
        whole = isinstance(facts, BatchOnHost) and facts.whole_rows
        with packed_attention.whole_rows(whole):
            if not whole or not self._runs_trl_default_loss() or not model.training:
                self.graph_step_counts["not whole rows" if not whole else "other loss"] += 1
                return super().training_step(model, inputs, num_items_in_batch)
            key = self._step_key(inputs, num_items_in_batch)
            if self._step_graph is not None and key == self._step_graph.key:
                return self._replay(inputs, num_items_in_batch)
            if self._step_graph is None and self._shapes_seen[key] >= WARMUP_MICRO_BATCHES:
                graph = self._capture(model, inputs, num_items_in_batch, key)
                if graph is not None:
                    self._step_graph = graph
                    log.info("cuda_graph_step: captured the step of %s micro-batches",
                             " x ".join(map(str, inputs["input_ids"].shape)))
                    return self._replay(inputs, num_items_in_batch)
            self._shapes_seen[key] += 1
            self.graph_step_counts["whole rows, without the graph"] += 1
            return super().training_step(model, inputs, num_items_in_batch)

    def _step_key(self, inputs, num_items_in_batch):
        """What the graph bakes in: the inputs' shapes and types, and the host-side choices made in the step."""
        fields = tuple(sorted((name, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (name, type(v))
                              for name, v in inputs.items()))
        items = None if num_items_in_batch is None else (type(num_items_in_batch), getattr(num_items_in_batch,
                                                                                          "dtype", None))
        return fields, items, getattr(self, "current_gradient_accumulation_steps", None), torch.is_grad_enabled()

    def _host_embedding(self, model) -> HostEmbedding | None:
        embedding = model.get_input_embeddings()
        return embedding if isinstance(embedding, HostEmbedding) else None

    def _capture(self, model, inputs, num_items_in_batch, key) -> StepGraph | None:
        inputs = dict(inputs)
        carried = inputs.pop(HOST_IDS, None)
        host = self._host_embedding(model)
        params = [p for p in model.parameters() if p.requires_grad]
        graph = StepGraph(key, inputs, num_items_in_batch, params, host)
        graph.load(inputs, num_items_in_batch, carried.ids if isinstance(carried, IdsOnHost) else None)
        graph.attach_grads()
        pending = len(self._pending_metrics)

        def step():
            pending = len(self._pending_metrics)
            loss = super(GraphedSteps, self).training_step(model, graph.inputs, graph.num_items)
            rows = self._pending_metrics[pending:]  # DeferredMetrics' row for this micro-batch
            del self._pending_metrics[pending:]
            return loss, rows[0] if rows else None

        try:
            if host is not None:
                host.serving = graph.rows
            graph.replay, (graph.loss, graph.metrics_row) = capture(step)
        except Exception as exc:  # noqa: BLE001 - any failure to capture leaves the run as it was
            log.warning("cuda_graph_step: the step could not be captured, so it runs without a graph: %s",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._graphs_on = False
            del self._pending_metrics[pending:]
            return None
        finally:
            if host is not None:
                host.serving = None
        return graph

    def _replay(self, inputs, num_items_in_batch) -> torch.Tensor:
        graph = self._step_graph
        carried = inputs.pop(HOST_IDS, None)
        graph.load(inputs, num_items_in_batch, carried.ids if isinstance(carried, IdsOnHost) else None)
        graph.attach_grads()
        graph.replay()
        self.graph_step_counts["replayed"] += 1
        if graph.metrics_row is not None:
            self._pending_metrics.append(graph.metrics_row.clone())
        return graph.loss.clone()
