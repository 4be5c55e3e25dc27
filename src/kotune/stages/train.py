"""train: QLoRA fine-tuning with TRL's SFTTrainer on data/processed, resumable, fully tracked.

    kotune train --params params.yaml --data data/processed --adapter models/adapter \
        --checkpoints models/checkpoints --tensorboard logs/tensorboard --metrics metrics/train.json \
        --plots plots/train

Builds BitsAndBytesConfig, LoraConfig and SFTConfig from params.yaml; resumes from the latest
complete checkpoint of the same run (see kotune.checkpoints); writes the adapter (safetensors),
tokenizer and resolved config, TensorBoard events at a stable path, metrics and per-step plot data.

Stopping: SIGTERM or SIGINT (Ctrl-C) saves a checkpoint after the current step and exits with status
128 + the signal's number (143, 130), as a shell reports a signal; the same command resumes from it.
A second signal stops at once. Out of memory or a full disk exits with status 2 and says what to change.

Several GPUs (train.num_processes > 1): the same command runs itself under `accelerate launch` with DDP or
FSDP-QLoRA (kotune.distributed); rank 0 writes every output above, once.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import yaml

from kotune import distributed, preflight
from kotune.atomic import atomic_dir, write_json
from kotune.config import Params, load_params
from kotune.errors import KotuneError
from kotune.fit import warn_if_it_will_not_fit
from kotune.logs import log_config
from kotune.modeling import load_base_model, load_tokenizer, lora_config, resolve_device
from kotune.stages import parse_stage_args
from kotune.template import ensure_generation_markers
from kotune.typed_config import to_dict

# kotune.checkpoints and kotune.training import transformers, so they are imported in the functions
# below: with train.backend unsloth, Unsloth must be imported before transformers (main() does that).

log = logging.getLogger("kotune.train")
TRACKED_SECTIONS = ("model", "quant", "lora", "train")


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune train", __doc__,
        data="folder with train.jsonl and eval.jsonl (data/processed)",
        adapter="output folder for the final adapter",
        checkpoints="checkpoint folder (persists between runs)",
        tensorboard="TensorBoard event folder",
        metrics="JSON metrics file",
        plots="folder for steps.csv and eval.csv",
    )


def run_fingerprint(params: Params, data: Path) -> str:
    from kotune import checkpoints

    sections = {name: to_dict(getattr(params, name)) for name in TRACKED_SECTIONS}
    return checkpoints.fingerprint(sections, [data / "train.jsonl", data / "eval.jsonl"], params.model.name_or_path)


def load_data(data: Path):
    from kotune import training

    train_records = training.read_records(data / "train.jsonl")
    if not train_records:
        raise KotuneError(f"{data}/train.jsonl has no training examples: see {data}/rejects.jsonl and "
                          "metrics/data.json for what prepare set aside")
    train_set, conversational = training.to_dataset(train_records, data / "train.jsonl")
    eval_records = training.read_records(data / "eval.jsonl")
    eval_set = training.to_dataset(eval_records, data / "eval.jsonl")[0] if eval_records else None
    log.info("%d training and %d eval %s", len(train_set), len(eval_records),
             "conversations" if conversational else "text records")
    return train_set, eval_set, conversational


def build_trainer(params: Params, args, device: str, fingerprint: str, data):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from kotune import checkpoints, training

    train_set, eval_set, conversational = data
    tokenizer = load_tokenizer(params.model)
    if params.train.assistant_only_loss and conversational:
        ensure_generation_markers(tokenizer)
    started = time.perf_counter()
    if params.train.backend == "unsloth":
        from kotune import unsloth_backend

        model, peft_config = unsloth_backend.load_peft_model(params, device), None  # already LoRA-wrapped
    else:
        model = load_base_model(params.model, params.quant, device, distributed.local_rank(), distributed.fsdp())
        peft_config = lora_config(params.lora)
    load_seconds = time.perf_counter() - started
    config = training.sft_config(params.train, device, Path(args.checkpoints), conversational, eval_set is not None)
    # Rank 0 alone writes TensorBoard events: a writer creates its event file as it starts.
    events = SummaryWriter(log_dir=args.tensorboard) if distributed.is_main() else None
    from kotune.sft_trainer import trainer_class

    trainer = trainer_class()(  # on TRL's SFTTrainer, or on Unsloth's patched copy of it
        model=model, args=config, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=peft_config, callbacks=[
            checkpoints.MarkComplete(fingerprint, params.train.save_total_limit, flush=(events,) if events else ()),
            *([TensorBoardCallback(events)] if events else []),
        ],
    )
    if params.train.input_embeddings_on_cpu:
        from kotune.host_embeddings import keep_input_embeddings_on_cpu

        freed = keep_input_embeddings_on_cpu(trainer)
        log.info("input embeddings in CPU memory: %.2f GiB less on the GPU", freed / 2**30)
    from kotune import static_lm_head

    if params.train.fuse_lora_output:
        from kotune import lora_addmm

        log.info("fuse_lora_output: %d 4-bit LoRA layers add their product inside the matmul",
                 lora_addmm.fuse(trainer.model))
    # A CUDA graph of the step cannot hold the gathers, whatever kernel is in TRL's slot.
    every_position, grad_in_forward = params.train.cuda_graph_step, params.train.lm_head_grad_in_forward
    if grad_in_forward:
        from kotune import head_grad_in_forward

        missing = head_grad_in_forward.available(device)
        if missing:
            raise KotuneError(f"train.lm_head_grad_in_forward: {missing}; install the locked TRL or turn it off")
    wrapped = static_lm_head.install(trainer.model, every_position=every_position, grad_in_forward=grad_in_forward)
    if grad_in_forward and not wrapped:
        raise KotuneError("train.lm_head_grad_in_forward: this model's head is not TRL's plain fused head (scaled or "
                         "capped logits, router losses); turn it off")
    if not wrapped:
        fed = "TRL's fused head"
    elif grad_in_forward and not every_position:
        fed = "the labelled positions, gathered as TRL does"
    else:
        fed = "every position in one shape (no gathers: 4 fewer host syncs)"
    log.info("LM head: %s%s", fed, "; its gradient made in the forward pass" if grad_in_forward else "")
    if params.train.cuda_graph_step:
        from kotune import cuda_graph_step

        trainer.enable_cuda_graph_step()
        log.info("cuda_graph_step: micro-batches of whole rows replay one CUDA graph after %d without it",
                 cuda_graph_step.WARMUP_MICRO_BATCHES)
    # Read back from the trainer: Unsloth's copy of it may have changed what SFTConfig asked for.
    log.info("mixed precision: %s", "bf16 autocast" if trainer.args.bf16 else "fp16 autocast" if trainer.args.fp16
             else "none (no autocast: each layer computes in its own weights' dtype)")
    # First, so its figures are in the log dict before the progress output and TensorBoard read it.
    trainer.callback_handler.callbacks.insert(0, training.StepStats(device))
    every, saving = params.train.checkpoint_every_n_layers, params.train.save_attention_layers
    kept = params.train.layers_not_recomputed
    if params.train.backend == "transformers" and (every > 1 or saving or kept):
        from kotune.activation_checkpointing import SelectiveCheckpointing

        trainer.add_callback(SelectiveCheckpointing(every, saving, kept))
    if params.train.gc_every_n_steps:
        from kotune.garbage_collection import ScheduledGarbageCollection

        trainer.add_callback(ScheduledGarbageCollection(params.train.gc_every_n_steps))
    if params.train.compile_layers:
        from kotune.compiling import CompileLayers

        trainer.add_callback(CompileLayers())
    trainable, total = trainer.model.get_nb_trainable_parameters()  # PEFT counts 4-bit weights unpacked
    log.info("trainable LoRA parameters: %d (%.2f%% of %d)", trainable, 100 * trainable / total, total)
    return trainer, tokenizer, load_seconds


def start_or_resume(args, fingerprint: str) -> Path | None:
    from kotune import checkpoints, training

    resume = checkpoints.resumable_checkpoint(Path(args.checkpoints), fingerprint)
    if resume is None:
        # A fresh run: TensorBoard events of an earlier run would interleave with this one's.
        shutil.rmtree(args.tensorboard, ignore_errors=True)
        log.info("starting from step 0")
    else:
        log.info("resuming from %s (same params, data and base model)", resume)
        # Steps after the checkpoint were logged by the stopped run and will be logged again.
        removed = training.drop_events_after(args.tensorboard, checkpoints.step_of(resume))
        if removed:
            log.info("removed %d TensorBoard events logged after that checkpoint", removed)
    return resume


def run_training(trainer, resume: Path | None, params: Params):
    from kotune import checkpoints
    from kotune.garbage_collection import restored_afterwards

    try:
        with restored_afterwards():  # train.gc_every_n_steps switches automatic collection off while training
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if params.train.cuda_graph_step:
            log.info("cuda_graph_step: micro-batches %s", dict(trainer.graph_step_counts) or "none")
        return result
    except Exception as exc:
        error = out_of_memory(exc, params) or checkpoints.checkpoint_disk_full(
            exc, Path(trainer.args.output_dir), params.train.save_total_limit)
        if error is None:
            raise
        raise error from None


def out_of_memory(exc: Exception, params: Params) -> KotuneError | None:
    import torch

    cuda = isinstance(exc, torch.OutOfMemoryError)
    # The CPU allocator raises a plain RuntimeError; Python's own allocations raise MemoryError.
    if not (cuda or isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(exc)):
        return None
    train = params.train
    return KotuneError(
        f"{'CUDA' if cuda else 'CPU (RAM)'} out of memory at micro-batch {train.per_device_train_batch_size} x "
        f"max_length {train.max_length}: lower train.per_device_train_batch_size (raise gradient_accumulation_steps "
        "to keep the effective batch), lower train.max_length"
        + ("" if train.gradient_checkpointing else ", or set train.gradient_checkpointing: true")
        + ("" if cuda else "; or train on a GPU (train.device: cuda)"))


def stop_if_interrupted(trainer, stop, args) -> None:
    """After SIGTERM/SIGINT: the checkpoint is saved; exit without the adapter, which needs every step."""
    state = trainer.state
    if stop.received is None or state.global_step >= state.max_steps:
        return  # a signal during the last step: the run is complete, so it finishes
    if distributed.is_main():
        log.warning("stopped by %s at step %d of %d: saved %s/checkpoint-%d; run the same command (or `dvc repro "
                    "train`) to resume from it", signal.Signals(stop.received).name, state.global_step,
                    state.max_steps, args.checkpoints, state.global_step)
    raise SystemExit(128 + stop.received)


def save_adapter(trainer, tokenizer, params: Params, fingerprint: str, out: str) -> None:
    model, state_dict = trainer.model, None
    if trainer.is_fsdp_enabled:  # every rank sends its shards; rank 0 gets the whole state dict, in CPU memory
        state_dict = trainer.accelerator.get_state_dict(model)
        model = model.module  # the PeftModel inside FSDP's wrapper
    if not trainer.is_world_process_zero():
        return
    with atomic_dir(out) as tmp:
        if state_dict is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            save_gathered_adapter(model, state_dict, tmp)
        check_adapter_saved(tmp)
        sort_target_modules(tmp / "adapter_config.json")
        tokenizer.save_pretrained(tmp)
        resolved = {name: to_dict(getattr(params, name)) for name in TRACKED_SECTIONS}
        (tmp / "kotune_config.yaml").write_text(
            yaml.safe_dump({"fingerprint": fingerprint, **resolved}, allow_unicode=True, sort_keys=False),
            encoding="utf-8")
    log.info("saved the adapter, tokenizer and resolved config to %s", out)


def save_gathered_adapter(model, state_dict: dict, folder: Path) -> None:
    """Write the adapter from FSDP's gathered state dict, in PEFT's layout (keys without the adapter name).
    PEFT (0.21) picks adapter tensors by walking model.named_modules(), whose names carry FSDP's
    `_fsdp_wrapped_module.` while the gathered keys do not, so `save_pretrained(state_dict=...)` finds none
    and writes an empty file (seen on the H100). The rule here is PEFT's own on the clean names."""
    from safetensors.torch import save_file

    adapter = model.active_adapter
    weights = {name.replace(f".{adapter}.", "."): tensor.detach().contiguous().clone()
               for name, tensor in state_dict.items() if ".lora_" in name and f".{adapter}." in name}
    log.info("gathered %d LoRA tensors from %d in FSDP's state dict", len(weights), len(state_dict))
    save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    model.peft_config[adapter].save_pretrained(folder)


def sort_target_modules(config: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in hash order, which changes with each process's
    PYTHONHASHSEED: the same training would give a different adapter folder hash, and DVC would rerun
    every later stage. The order means nothing to PEFT (it reads a set back), so write it sorted."""
    import json

    values = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(values.get("target_modules"), list):
        values["target_modules"] = sorted(values["target_modules"])
        config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_adapter_saved(folder: Path) -> None:
    """An adapter file without LoRA tensors loads and merges without a complaint, as the base model: refuse it."""
    from safetensors import safe_open

    with safe_open(folder / "adapter_model.safetensors", framework="pt") as saved:
        if not any("lora_" in name for name in saved.keys()):
            raise KotuneError(f"the adapter saved to {folder} holds no LoRA weights (a state-dict gathering "
                              "problem); nothing was written in its place")


def write_results(trainer, result, args, device: str, timings: dict, resume: Path | None) -> None:
    from kotune import checkpoints, training

    # Every rank's figures, in one collective: allocated and reserved peaks, and the positions it trained on.
    reserved = training.peak_reserved_memory_gib(device)
    ranks = distributed.gather((round(training.peak_memory_gib(device), 3), reserved and round(reserved, 3),
                                getattr(trainer, "input_tokens_with_padding", None)))
    if not trainer.is_world_process_zero():
        return
    peaks, reserved_peaks, positions = zip(*ranks, strict=True)
    steps, evals = training.history_rows(trainer.state.log_history)
    training.write_csv(Path(args.plots) / "steps.csv", steps,
                       ["step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "window_tokens_per_second"])
    training.write_csv(Path(args.plots) / "eval.csv", evals, ["step", "eval_loss"])
    tokens, seconds = trainer.state.num_input_tokens_seen, max(timings["train"], 1e-9)
    write_json(args.metrics, {
        "first_loss": steps[0]["loss"] if steps else None, "final_loss": steps[-1]["loss"] if steps else None,
        "mean_train_loss": round(training.mean_loss(steps, result.training_loss), 4),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0, 3),
        "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
        # Padding included, counted by this run's processes since they started: beside tokens_per_second (real
        # tokens only), what the padding cost. None where nothing counted them (a trainer loop that never calls
        # the Trainer's token tracking) rather than a rate of 0.
        "padded_tokens_per_second": round(sum(positions) / seconds, 1) if None not in positions and any(positions)
        else None,
        "steady_tokens_per_second": training.steady_tokens_per_second(steps),
        "peak_memory_gib": max(peaks),
        "peak_reserved_memory_gib": None if None in reserved_peaks else max(reserved_peaks), "processes": len(peaks),
        "model_load_seconds": round(timings["load"], 1), "wall_seconds": round(timings["train"], 1),
        "resumed_from_step": checkpoints.step_of(resume) if resume else 0,
    })


def launch_processes(params: Params, argv: list[str]) -> None:
    """train.num_processes > 1, run as a plain command: the same command, under `accelerate launch`."""
    status = distributed.launch(params.train, argv)
    if status:
        raise SystemExit(status)


def main(argv=None) -> None:
    # transformers 5.23 renamed gradient_checkpointing; SFTConfig keeps the old name, which older
    # transformers (5.17 on the GPU image) still need.
    warnings.filterwarnings("ignore", r".*gradient_checkpointing.* is deprecated", FutureWarning)

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    params = load_params(args.params)
    device = resolve_device(params.train.device)  # imports torch only: Unsloth may still come first
    preflight.check_train(params, device)
    distributed.check(params.train, device)
    if distributed.should_launch(params.train):
        return launch_processes(params, argv)
    distributed.start(device)
    if params.train.backend == "unsloth":
        from kotune import unsloth_backend

        unsloth_backend.import_first()
    from transformers import set_seed

    from kotune import checkpoints

    set_seed(params.train.seed)
    for name in TRACKED_SECTIONS:
        log_config(log, name, getattr(params, name))
    log.info("device: %s; %d process(es)", device, distributed.world_size())
    warn_if_it_will_not_fit(params, device)  # an estimate from config.json, before a GPU minute is spent
    fingerprint = run_fingerprint(params, Path(args.data))
    resume = distributed.on_main(start_or_resume, args, fingerprint)  # others wait: rank 0 deletes files
    data = load_data(Path(args.data))
    trainer, tokenizer, load_seconds = build_trainer(params, args, device, fingerprint, data)
    started = time.perf_counter()
    with checkpoints.SaveOnSignal() as stop:
        trainer.add_callback(stop)
        result = run_training(trainer, resume, params)
    stop_if_interrupted(trainer, stop, args)
    timings = {"load": load_seconds, "train": time.perf_counter() - started}
    save_adapter(trainer, tokenizer, params, fingerprint, args.adapter)
    write_results(trainer, result, args, device, timings, resume)
    log.info("done: %d steps in %.1f s", trainer.state.global_step, timings["train"])
