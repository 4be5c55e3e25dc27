"""train.cuda_graph_step: a micro-batch of whole rows runs its forward, loss and backward pass as one
replayed CUDA graph.

Why: on the transformers backend the 8B QLoRA step at 2 x 2,048 tokens is host-bound: the host needs longer
to queue its ~7,800 kernel launches (through Python, PEFT, bitsandbytes' dispatch, Dynamo's guards and the
compiled graphs' wrappers) than the GPU needs to run them, and how much longer depends on the host
(bench/results/2026-11-24-h100-issue6.md, calls 10-62). A captured graph replays every one of those launches
with one call, so the step costs its GPU time, whatever the host is doing meanwhile: on an H100, 9,805-9,807
tokens/s on two hosts against 9,038 and drifting without it (calls 63-65).

What a graph can hold: nothing in it may wait for the GPU (no `.item()`, no boolean gather, no
data-dependent shape), and it replays the same addresses and the same shapes. So:
- only micro-batches of whole rows are replayed: every token real, one sequence per row (full-length
  documents), which the host knows from the collator's CPU tensors (`BatchOnHost`), and only those of the
  one shape captured first. Everything else (packed rows, padded batches, the last short batch) runs as
  before, and the run logs how many of each it had;
- attention is told so from the host (`kotune.packed_attention.whole_rows`) instead of checking the mask
  on the GPU, and TRL's fused LM head scores every position instead of gathering the labelled ones
  (`kotune.static_lm_head`, with TRL's kernel too);
- each replay copies the batch into the graph's input tensors. The first micro-batch of an optimizer step
  replays a graph that makes the gradients (in its own memory, handed to the LoRA weights after each replay:
  the Trainer sets them to None after each optimizer step); with gradient accumulation, the later ones replay
  a second graph that adds into those (`StepGraph`);
- with the input embeddings on the CPU, each replay's rows are looked up there and copied into the graph's
  input rows before it runs.
The first two micro-batches of that shape run as before (they compile the layers and warm the kernels up);
the next one of each kind is captured and replayed. A capture that fails is logged and the run goes on
without graphs.

Memory: the two graphs share one pool, which holds what one micro-batch's step allocates at its peak, as a
step without the graph would (measured on the device: bench/results/2026-11-24-h100-issue6.md).
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


def capture(step, pool=None):
    """Capture step() into a CUDA graph without running it; returns the graph's replay, step()'s outputs (which
    every replay rewrites in place) and the graph's memory pool, which the graph of the other kind of micro-batch
    shares (`pool`). The CPU tests swap in an emulation: a graph needs a GPU."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):  # synchronizes and empties the allocator's cache first
        outputs = step()
    return graph.replay, outputs, graph.pool()


FIRST = "first"  # the first micro-batch of an optimizer step: no gradients yet, the graph makes them
ACCUMULATING = "accumulating"  # a later one (gradient_accumulation_steps > 1): the graph adds into the first's


class StepGraph:
    """One captured micro-batch step and the tensors it reads and writes.

    A FIRST graph is captured with every .grad None, as the Trainer leaves them after an optimizer step, so
    autograd hands each weight the gradient it computed, in memory of the graph's pool: gradients exist from the
    backward pass on, as in a step without the graph, and the pool reuses for them what the forward pass freed.
    After each replay they are put back on the weights. An ACCUMULATING graph is captured with those tensors on
    the weights and adds into them, as autograd adds into a .grad that exists.
    """

    def __init__(self, key, kind: str, inputs: dict, num_items_in_batch, params: list[torch.Tensor],
                 host: HostEmbedding | None, sibling: StepGraph | None):
        self.key, self.kind, self.params, self.host = key, kind, params, host
        if sibling is not None:  # the other kind's graph of the same shape: one set of input tensors for both
            self.inputs, self.num_items, self.rows = sibling.inputs, sibling.num_items, sibling.rows
        else:
            self.inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            self.num_items = None if num_items_in_batch is None else torch.as_tensor(
                num_items_in_batch, device=self.device).clone()
            self.rows = None if host is None else torch.zeros(
                (*self.inputs["input_ids"].shape, host.embedding_dim), dtype=host.table.dtype, device=self.device)
        self.grads = None if kind == FIRST else [p.grad for p in params]
        self.replay, self.loss, self.metrics_row, self.pool = None, None, None, None

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
            ids = self.host.ids_in_cpu_memory(inputs["input_ids"], ids_on_host)
            self.rows.copy_(self.host.rows_on_host(ids).view_as(self.rows), non_blocking=True)

    def captured(self, replay, outputs, pool) -> None:
        self.replay, (self.loss, self.metrics_row), self.pool = replay, outputs, pool
        if self.kind == FIRST:
            self.grads = [p.grad for p in self.params]  # in the graph's pool; each replay rewrites them

    def run(self) -> None:
        self.replay()
        if self.kind == FIRST:
            for param, grad in zip(self.params, self.grads, strict=True):
                param.grad = grad


class GraphedSteps:
    """Mixed into kotune's SFTTrainer (kotune.sft_trainer.trainer_class); off until enable_cuda_graph_step()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._step_graphs: dict[tuple, StepGraph] = {}  # (key, kind) -> graph; one key, up to two kinds
        self._graphs_on = False
        self._graph_params: list[torch.Tensor] | None = None
        self._shapes_seen: Counter = Counter()
        self.graph_step_counts = Counter()  # how the training micro-batches ran

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
            if self._graph_params is None:
                self._graph_params = [p for p in model.parameters() if p.requires_grad]
            key = self._step_key(inputs, num_items_in_batch)
            kind = self._kind(key)
            graph = self._step_graphs.get((key, kind))
            if graph is not None:
                return self._replay(graph, inputs, num_items_in_batch)
            if kind is not None and self._may_capture(key) and self._shapes_seen[key] >= WARMUP_MICRO_BATCHES:
                graph = self._capture(model, inputs, num_items_in_batch, key, kind)
                if graph is not None:
                    self._step_graphs[(key, kind)] = graph
                    log.info("captured the step of %s micro-batches (%s of an optimizer step)",
                             " x ".join(map(str, inputs["input_ids"].shape)), kind)
                    return self._replay(graph, inputs, num_items_in_batch)
            self._shapes_seen[key] += 1
            self.graph_step_counts["whole rows, without the graph"] += 1
            return super().training_step(model, inputs, num_items_in_batch)

    def _kind(self, key) -> str | None:
        """FIRST where no weight has a gradient yet; ACCUMULATING where the weights hold the FIRST graph's own
        gradient tensors (the addresses the graph adds into); None otherwise (a step that ran without the graph
        began this optimizer step): this micro-batch runs without a graph."""
        grads = [p.grad for p in self._graph_params]
        if all(g is None for g in grads):
            return FIRST
        first = self._step_graphs.get((key, FIRST))
        if first is not None and all(g is f for g, f in zip(grads, first.grads, strict=True)):
            return ACCUMULATING
        return None

    def _may_capture(self, key) -> bool:
        """One shape gets graphs (each holds a step's activations in its pool): the first one captured."""
        return all(captured_key == key for captured_key, _ in self._step_graphs)

    def _step_key(self, inputs, num_items_in_batch):
        """What the graph bakes in: the inputs' shapes and types, and the host-side choices made in the step."""
        fields = tuple(sorted((name, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (name, type(v))
                              for name, v in inputs.items() if name != HOST_IDS))
        items = None if num_items_in_batch is None else (type(num_items_in_batch), getattr(num_items_in_batch,
                                                                                          "dtype", None))
        return fields, items, getattr(self, "current_gradient_accumulation_steps", None), torch.is_grad_enabled()

    def _host_embedding(self, model) -> HostEmbedding | None:
        embedding = model.get_input_embeddings()
        return embedding if isinstance(embedding, HostEmbedding) else None

    def _capture(self, model, inputs, num_items_in_batch, key, kind) -> StepGraph | None:
        """The graph of this micro-batch's step, captured (not run: the replay that follows loads and runs it)."""
        inputs = {name: value for name, value in inputs.items() if name != HOST_IDS}
        host = self._host_embedding(model)
        sibling = next(iter(self._step_graphs.values()), None)  # same key (_may_capture): share its inputs, pool
        graph = StepGraph(key, kind, inputs, num_items_in_batch, self._graph_params, host, sibling)

        def step():
            pending = len(self._pending_metrics)
            loss = super(GraphedSteps, self).training_step(model, graph.inputs, graph.num_items)
            rows = self._pending_metrics[pending:]  # DeferredMetrics' row for this micro-batch
            del self._pending_metrics[pending:]
            return loss, rows[0] if rows else None

        pending = len(self._pending_metrics)
        try:
            if host is not None:
                host.serving = graph.rows
            graph.captured(*capture(step, pool=sibling.pool if sibling is not None else None))
        except Exception as exc:  # noqa: BLE001 - any failure to capture leaves the run as it was
            log.warning("the step could not be captured, so it runs without a graph: %s",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._graphs_on = False
            del self._pending_metrics[pending:]
            if kind == FIRST:  # a capture that got into the backward pass left graph memory on the weights
                for param in self._graph_params:
                    param.grad = None
            return None
        finally:
            if host is not None:
                host.serving = None
        return graph

    def _replay(self, graph: StepGraph, inputs, num_items_in_batch) -> torch.Tensor:
        carried = inputs.pop(HOST_IDS, None)
        graph.load(inputs, num_items_in_batch, carried.ids if isinstance(carried, IdsOnHost) else None)
        graph.run()
        self.graph_step_counts[f"replayed, {graph.kind}"] += 1
        if graph.metrics_row is not None:
            self._pending_metrics.append(graph.metrics_row.clone())
        return graph.loss.clone()
