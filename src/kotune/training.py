"""What the train stage hands TRL, and what it reads back: SFTConfig, datasets, callbacks, metrics, plots."""

from __future__ import annotations

import csv
import json
import resource
import time
from pathlib import Path

from transformers import TrainerCallback

from kotune.atomic import atomic_file
from kotune.config import TrainSection
from kotune.errors import KotuneError


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verification_texts(tokenizer, data: Path, count: int) -> list[str]:
    """The first `count` eval conversations of a prepared data folder as training rendered them (the
    training split's when the eval split is empty): what merge and export check a model on."""
    from kotune.template import render

    records = read_records(data / "eval.jsonl")[:count] or read_records(data / "train.jsonl")[:count]
    return [render(tokenizer, record) for record in records]


def to_dataset(records: list[dict], where: Path):
    """Conversations keep only `messages` (TRL renders them with the chat template); raw text keeps `text`."""
    from datasets import Dataset

    kinds = {"messages" if "messages" in r else "text" for r in records}
    if len(kinds) > 1:
        raise KotuneError(f"{where}: mixes conversations and raw-text records; prepare one kind per run")
    kind = kinds.pop() if kinds else "messages"
    return Dataset.from_list([{kind: r[kind]} for r in records]), kind == "messages"


def sft_config(train: TrainSection, device: str, output_dir: Path, conversational: bool, has_eval: bool):
    """TRL's SFTConfig from params.yaml's train section (the same field names)."""
    import torch
    from trl import SFTConfig

    bf16 = fp16 = False  # what cannot run on the CPU was refused before loading (kotune.preflight)
    if device == "cuda" and train.mixed_precision != "no":
        bf16 = train.mixed_precision == "bf16" or (train.mixed_precision == "auto" and torch.cuda.is_bf16_supported())
        fp16 = not bf16
    # Unsloth has already wrapped the layers in its own (offloaded) checkpointing; transformers' would nest.
    checkpointing = train.gradient_checkpointing and train.backend == "transformers"
    warmup = train.warmup_steps if train.warmup_steps < 1 else int(train.warmup_steps)
    return SFTConfig(
        output_dir=str(output_dir), learning_rate=train.learning_rate, num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps, per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        gradient_checkpointing=checkpointing, optim=train.optim,
        lr_scheduler_type=train.lr_scheduler_type, warmup_steps=warmup, weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm, max_length=train.max_length, packing=train.packing,
        # TRL's default, said out loud: Unsloth's SFTConfig leaves it unset and then picks padded or padding-free
        # batches from the GPU's compute capability, so one params.yaml would train differently on an A100 and an
        # H100. Packing still turns padding-free on (TRL does that itself).
        padding_free=False, pad_to_multiple_of=train.pad_to_multiple_of,
        train_sampling_strategy=train.train_sampling_strategy,
        # Raw text has no assistant turns: the whole text is the target.
        assistant_only_loss=train.assistant_only_loss and conversational,
        bf16=bf16, fp16=fp16, use_cpu=device == "cpu", seed=train.seed, data_seed=train.seed,
        logging_steps=train.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=train.eval_steps,
        # save_total_limit: None, since kotune.checkpoints.MarkComplete deletes old checkpoints itself, once
        # the new one is complete (the Trainer would do it before, leaving a window with too few).
        save_strategy="steps", save_steps=train.save_steps, save_total_limit=None,
        include_num_input_tokens_seen="non_padding", report_to="none",
        # The filter replaces a NaN or infinite loss by the running mean in the logged loss, hiding it, and it
        # reads the loss back from the GPU after every backward pass (a host sync). kotune logs what happened.
        logging_nan_inf_filter=False, use_liger_kernel=train.use_liger_kernel,
        # TRL's offloading copies what autograd keeps for the backward pass (with checkpointing: each layer's
        # input) to pinned CPU memory on a side stream, overlapped with the compute, and prefetches it back.
        activation_offloading=train.offload_activations,
        # Several processes (DDP): every LoRA weight gets a gradient each step, so DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
    )


def peak_memory_gib(device: str) -> float:
    """CUDA: the allocator's peak; CPU: the process's peak resident set."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_reserved_memory_gib(device: str) -> float | None:
    """CUDA: the caching allocator's peak reservation, the allocated peak plus the freed blocks it kept, which
    is what the card must hold besides the CUDA context (11-17% over the allocated peak on the 8B runs,
    bench/results/2026-11-24-fit-validation.md). The CPU has no such figure: None."""
    import torch

    return torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else None


class StepStats(TrainerCallback):
    """Adds to every training log line the peak memory and the throughput since the previous log line
    (transformers adds only the run's average, train_tokens_per_second, which includes warm-up), so
    the progress output, TensorBoard and the history carry both."""

    def __init__(self, device: str):
        self.device, self.last = device, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return control
        now = time.perf_counter()
        if self.last is not None:
            seconds, tokens = now - self.last[0], state.num_input_tokens_seen - self.last[1]
            logs["window_tokens_per_second"] = round(tokens / max(seconds, 1e-9), 1)
        self.last = (now, state.num_input_tokens_seen)
        logs["peak_memory_gib"] = round(peak_memory_gib(self.device), 3)
        # The Trainer appended a copy of `logs` to the history before calling back: update that entry too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update({k: v for k, v in logs.items() if k not in state.log_history[-1]})
        return control


def steady_tokens_per_second(steps: list[dict]) -> float | None:
    """Median logged throughput after the first fifth of the run (compilation, allocator and cache warm-up)."""
    windows = [s["window_tokens_per_second"] for s in steps if s.get("window_tokens_per_second")]
    windows = sorted(windows[len(windows) // 5:])
    return windows[len(windows) // 2] if windows else None


def history_rows(log_history: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-step training rows and per-evaluation rows from the Trainer's log history."""
    steps = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
              "grad_norm": h.get("grad_norm"), "tokens_per_second": h.get("train_tokens_per_second"),
              "window_tokens_per_second": h.get("window_tokens_per_second")}
             for h in log_history if "loss" in h]
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in log_history if "eval_loss" in h]
    return steps, evals


def mean_loss(steps: list[dict], fallback: float) -> float:
    """Mean training loss over the whole run from the logged rows (each the mean of its window of steps).
    The Trainer's own figure counts only the steps since a resume but divides by all of them."""
    total, previous = 0.0, 0
    for row in steps:
        if row.get("loss") is None:
            continue
        total, previous = total + row["loss"] * (row["step"] - previous), row["step"]
    return total / previous if previous else fallback


def drop_events_after(folder: str | Path, step: int) -> int:
    """Remove from the TensorBoard event files in `folder` every event after `step` (the checkpoint a run
    resumes from): the resumed run logs those steps again, and a reader would show both. Each file is
    rewritten whole, atomically; a record cut short by a kill is dropped. Returns how many were removed."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    removed = 0
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [record for record in records if Event.FromString(record).step <= step]
        if len(kept) < len(records) or path.stat().st_size > sum(len(r) + 16 for r in records):
            with atomic_file(path, "wb") as handle:
                writer = RecordWriter(handle)
                for record in kept:
                    writer.write(record)
            removed += len(records) - len(kept)
    return removed


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
