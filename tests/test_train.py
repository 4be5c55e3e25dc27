"""The train stage on the tiny model, on the CPU: learning, masking, outputs, resume, fingerprints."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kotune.checkpoints import MARKER
from kotune.config import load_params
from kotune.errors import KotuneError
from kotune.stages import train

from .conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit
def scalars(folder: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_loss_decreases_in_the_tensorboard_events(trained):
    losses = scalars(trained / "tb", "train/loss")
    assert len(losses) == 24
    assert losses[-1] <= 0.95 * losses[0]
    assert scalars(trained / "tb", "eval/loss")


def test_tensorboard_events_sit_at_the_stable_path(trained):
    assert list((trained / "tb").glob("events.out.tfevents.*")) and not list((trained / "tb").glob("*/"))


def test_adapter_config_is_the_same_bytes_in_every_process(trained):
    """target_modules sorted (PEFT writes its set in hash order), so a rerun gives the same DVC hash."""
    text = (trained / "adapter" / "adapter_config.json").read_text()
    modules = json.loads(text)["target_modules"]
    assert modules == sorted(modules) and len(modules) == 7


def test_outputs(trained):
    adapter = trained / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and not list(adapter.glob("*.bin"))
    assert (adapter / "tokenizer.json").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    metrics = json.loads((trained / "train.json").read_text())
    assert metrics["steps"] == 24 and metrics["final_loss"] < metrics["first_loss"]
    assert metrics["tokens"] > 0 and metrics["tokens_per_second"] > 0 and metrics["peak_memory_gib"] > 0
    # Unpacked batches carry padding; the CPU has no allocator reservation to report.
    assert metrics["padded_tokens_per_second"] > metrics["tokens_per_second"]
    assert metrics["peak_reserved_memory_gib"] is None
    steps = (trained / "plots" / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("step,loss,learning_rate,grad_norm,tokens_per_second") and len(steps) == 25
    assert metrics["steady_tokens_per_second"] > 0 and metrics["model_load_seconds"] >= 0
    assert sorted(p.name for p in (trained / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-16", "checkpoint-24", "checkpoint-8"]
    assert all((p / MARKER).exists() for p in (trained / "checkpoints").glob("checkpoint-*"))


@pytest.fixture
def small_trainer(tmp_path, tiny_model_dir, processed):
    params = load_params(params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA,
                                     train={**FAST, "max_steps": 3}))
    args = train.parse_args(stage_args(tmp_path, tmp_path / "params.yaml", processed))
    data = train.load_data(processed)
    trainer, tokenizer, _ = train.build_trainer(params, args, "cpu", "test", data)
    return trainer, tokenizer, data[0]


def test_base_weights_frozen_lora_weights_change(small_trainer):
    trainer, _, _ = small_trainer
    named = dict(trainer.model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    assert lora and all(p.requires_grad for n, p in named.items() if "lora_" in n)
    assert not any(p.requires_grad for n, p in named.items() if "lora_" not in n)
    quantized = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "the base must be 4-bit"
    packed = [m.weight.data.clone() for m in quantized]
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(after[n].detach().equal(v) for n, v in base.items())
    assert all(m.weight.data.equal(p) for m, p in zip(quantized, packed, strict=True))
    assert any(not after[n].detach().equal(v) for n, v in lora.items() if "lora_B" in n)


def first_batch(trainer):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(2)])


def test_labels_end_with_the_end_of_turn_token_and_mask_the_prompt(small_trainer):
    trainer, tokenizer, _ = small_trainer
    batch = first_batch(trainer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        trained_labels = [label for label in labels if label != -100]
        assert trained_labels[-1] == eot  # the model learns to stop
        assert labels[0] == -100  # the prompt (from BOS on) is masked
        assert all(label == -100 for i, label in zip(ids, labels, strict=True) if i == tokenizer.pad_token_id)


def test_training_examples_start_with_the_inference_prompt(small_trainer):
    trainer, tokenizer, dataset = small_trainer
    for index in range(5):
        messages = dataset[index]["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert trainer.train_dataset[index]["input_ids"][: len(prompt_ids)] == prompt_ids


def test_resume_after_a_kill_continues_from_the_checkpoint(tmp_path, tiny_model_dir, processed):
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=FAST)
    command = [sys.executable, "-m", "kotune", "train", *stage_args(tmp_path, params, processed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TQDM_DISABLE": "1"})
    marker = tmp_path / "checkpoints" / "checkpoint-8" / MARKER
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists(), "the first run never wrote checkpoint-8"
    assert not (tmp_path / "adapter").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*")
                    if (p / MARKER).exists())
    assert killed_at < 24
    train.main(stage_args(tmp_path, params, processed))
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["resumed_from_step"] == killed_at and metrics["steps"] == 24
    # over all 24 steps, not the resumed ones divided by 24 (the Trainer's figure after a resume)
    assert metrics["final_loss"] <= metrics["mean_train_loss"] <= metrics["first_loss"]


def test_mismatching_incomplete_and_finished_checkpoints_are_not_resumed(tmp_path, trained, caplog):
    from kotune.checkpoints import resumable_checkpoint

    caplog.set_level(logging.INFO)
    folder = tmp_path / "checkpoints"
    shutil.copytree(trained / "checkpoints", folder)
    fingerprint = json.loads((folder / "checkpoint-8" / MARKER).read_text())["fingerprint"]
    (folder / "checkpoint-16" / MARKER).unlink()  # killed mid-save
    (folder / "tmp-checkpoint-20").mkdir()
    assert resumable_checkpoint(folder, "another-run") is None
    assert "made by a different run" in caplog.text and "incomplete" in caplog.text
    assert not list(folder.glob("*checkpoint-*"))

    shutil.rmtree(folder)
    shutil.copytree(trained / "checkpoints", folder)
    (folder / "checkpoint-24" / MARKER).unlink()
    assert resumable_checkpoint(folder, fingerprint) == folder / "checkpoint-16"
    assert not (folder / "checkpoint-24").exists()

    shutil.rmtree(folder)
    shutil.copytree(trained / "checkpoints", folder)
    assert resumable_checkpoint(folder, fingerprint) is None  # checkpoint-24 ends a finished run
    assert "finished run" in caplog.text


def test_changed_params_start_from_step_zero(tmp_path, trained, tiny_model_dir, processed, caplog):
    caplog.set_level(logging.INFO)
    shutil.copytree(trained / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-24")  # as if killed after step 16
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={**FAST, "max_steps": 4},
                         lora={"lora_r": 8})
    train.main(stage_args(tmp_path, params, processed))
    assert "made by a different run" in caplog.text
    assert json.loads((tmp_path / "train.json").read_text())["resumed_from_step"] == 0


@pytest.mark.parametrize("train_values, message", [
    ({"device": "cuda"}, "no CUDA device is visible"),
    ({"mixed_precision": "bf16"}, "needs CUDA"),
    ({"use_liger_kernel": True}, "needs CUDA"),
])
def test_cpu_misconfiguration_is_a_clear_error(tmp_path, tiny_model_dir, processed, train_values, message):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={**FAST, **train_values})
    with pytest.raises(KotuneError, match=message):
        train.main(stage_args(tmp_path, params, processed))


def test_no_training_examples_is_a_clear_error(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    (data / "eval.jsonl").write_text("")
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=FAST)
    with pytest.raises(KotuneError, match="no training examples"):
        train.main(stage_args(tmp_path, params, data))


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    import importlib.util

    from kotune.config import QuantSection
    from kotune.modeling import bnb_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(KotuneError, match="needs bitsandbytes"):
        bnb_config(QuantSection(), "cpu")


@pytest.mark.gpu
def test_qlora_on_cuda(tmp_path, tiny_model_dir, processed):
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={**FAST, "device": "cuda"})
    train.main(stage_args(tmp_path, params, processed))
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["final_loss"] <= 0.95 * metrics["first_loss"] and metrics["peak_memory_gib"] > 0


def test_cuda_out_of_memory_says_what_to_lower():
    import torch

    from kotune.config import Params

    class Exhausted:
        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(KotuneError) as err:
        train.run_training(Exhausted(), None, Params())
    message = str(err.value)
    assert "per_device_train_batch_size" in message and "max_length" in message
    assert "gradient_checkpointing: true" in message
