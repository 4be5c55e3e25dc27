"""kotune.sft_trainer: TRL's SFTTrainer with its per-batch metrics kept on the device until logged.
The logged figures must equal TRL's own, and the loss path must not read anything back from the device."""

import sys

import pytest
import torch
import trl

import kotune.sft_trainer
from kotune.config import load_params
from kotune.stages import train
from tests.conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit

TRACKED = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")


def build(work, tiny_model_dir, processed):
    work.mkdir()
    # Two micro-batches a step, a log line every two steps: figures of several micro-batches are averaged.
    params = load_params(params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={
        **FAST, "max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2}))
    args = train.parse_args(stage_args(work, work / "params.yaml", processed))
    trainer, _, _ = train.build_trainer(params, args, "cpu", "test", train.load_data(processed))
    return trainer


def run(trainer):
    """Trains; returns the logged rows, (tokens seen, total FLOPs, parameter counts) and the values the
    trainers' own code read back from the device in training-mode compute_loss (the model's code is not
    counted: its reads are not the trainer's)."""
    reads = []
    original_item, original_bool = torch.Tensor.item, torch.Tensor.__bool__
    compute_loss = trainer.compute_loss

    def note(kind):
        caller = sys._getframe(2).f_code.co_filename
        if trainer.model.training and caller.endswith("sft_trainer.py"):
            reads.append(f"{kind} in {caller}")

    def counting_loss(*args, **kwargs):
        torch.Tensor.item = lambda t: note("item") or original_item(t)
        torch.Tensor.__bool__ = lambda t: note("bool") or original_bool(t)
        try:
            return compute_loss(*args, **kwargs)
        finally:
            torch.Tensor.item, torch.Tensor.__bool__ = original_item, original_bool

    trainer.compute_loss = counting_loss
    counts = []
    count_parameters = trainer.model.num_parameters
    trainer.model.num_parameters = lambda *a, **k: counts.append(1) or count_parameters(*a, **k)
    trainer.train()
    rows = [{k: h[k] for k in TRACKED} for h in trainer.state.log_history if "loss" in h]
    return rows, (trainer.state.num_input_tokens_seen, trainer.state.total_flos, len(counts)), reads


def test_logs_what_trl_logs_without_reading_the_device_in_the_loss(tmp_path, tiny_model_dir, processed,
                                                                    monkeypatch):
    kotune_trainer = build(tmp_path / "kotune", tiny_model_dir, processed)
    assert isinstance(kotune_trainer, kotune.sft_trainer.DeferredMetrics)
    got, got_counts, got_reads = run(kotune_trainer)

    monkeypatch.setattr(kotune.sft_trainer, "trainer_class", lambda: trl.SFTTrainer)
    trl_trainer = build(tmp_path / "trl", tiny_model_dir, processed)
    assert type(trl_trainer) is trl.SFTTrainer
    want, want_counts, want_reads = run(trl_trainer)

    assert len(got) == len(want) >= 2, (got, want)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key in TRACKED:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key
    (tokens, flos, parameter_walks), (want_tokens, want_flos, want_walks) = got_counts, want_counts
    assert tokens == want_tokens > 0
    assert flos == want_flos > 0
    assert parameter_walks == 1 < want_walks, "parameters counted once, not on every micro-batch"
    assert want_reads, "TRL reads its metrics back inside compute_loss (else this test proves nothing)"
    assert got_reads == []
