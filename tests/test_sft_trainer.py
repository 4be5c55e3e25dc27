"""kotune.sft_trainer: TRL's SFTTrainer with its per-batch metrics kept on the device until logged.
The logged figures must equal TRL's own, and the loss path must not read anything back from the device."""

import json
import sys
from pathlib import Path

import pytest
import torch
import trl

import kotune.sft_trainer
from kotune.config import load_params
from kotune.stages import train
from tests.conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit

TRACKED = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens")


def build(work, tiny_model_dir, processed, **train_params):
    work.mkdir()
    # Two micro-batches a step, a log line every two steps: figures of several micro-batches are averaged.
    params = load_params(params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={
        **FAST, "max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2, **train_params}))
    args = train.parse_args(stage_args(work, work / "params.yaml", processed))
    trainer, _, _ = train.build_trainer(params, args, "cpu", "test", train.load_data(processed))
    return trainer


def logged_rows(trainer) -> list[dict]:
    """The tracked figures of each training log line."""
    return [{k: h[k] for k in TRACKED} for h in trainer.state.log_history if "loss" in h]


def run(trainer):
    """Trains; returns the logged rows, (tokens seen, total FLOPs, parameter counts) and the values the
    trainers' own code read back from the device in training-mode compute_loss and in the per-micro-batch
    token count (the model's code is not counted: its reads are not the trainer's)."""
    reads = []
    original = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__int__")}

    def note(kind):
        caller = sys._getframe(2).f_code.co_filename
        if trainer.model.training and caller.endswith(("sft_trainer.py", "transformers/trainer.py")):
            reads.append(f"{kind} in {caller}")

    def counting(method):
        def counted(*args, **kwargs):
            for name, read in original.items():
                setattr(torch.Tensor, name, lambda t, name=name, read=read: note(name) or read(t))
            try:
                return method(*args, **kwargs)
            finally:
                for name, read in original.items():
                    setattr(torch.Tensor, name, read)
        return counted

    trainer.compute_loss = counting(trainer.compute_loss)
    trainer._track_num_input_tokens = counting(trainer._track_num_input_tokens)
    counts = []
    count_parameters = trainer.model.num_parameters
    trainer.model.num_parameters = lambda *a, **k: counts.append(1) or count_parameters(*a, **k)
    trainer.train()
    return logged_rows(trainer), (trainer.state.num_input_tokens_seen, trainer.state.total_flos, len(counts)), reads


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
    assert any("sft_trainer" in read for read in want_reads), "TRL reads its metrics back in compute_loss"
    assert any("transformers/trainer.py" in read for read in want_reads), "the Trainer reads its token count back"
    assert got_reads == []


def test_a_checkpoint_between_log_lines_saves_the_tokens_seen_so_far(tmp_path, tiny_model_dir, processed,
                                                                     monkeypatch):
    """kotune adds up the token count between log lines; a checkpoint saved in between must still carry
    the Trainer's count (a resumed run continues from it)."""
    def tokens_at_step_3(trainer):
        trainer.train()
        state = json.loads((Path(trainer.args.output_dir) / "checkpoint-3" / "trainer_state.json").read_text())
        return state["num_input_tokens_seen"]

    between_logs = {"max_steps": 4, "logging_steps": 2, "save_steps": 3, "save_total_limit": None}
    got = tokens_at_step_3(build(tmp_path / "kotune", tiny_model_dir, processed, **between_logs))
    monkeypatch.setattr(kotune.sft_trainer, "trainer_class", lambda: trl.SFTTrainer)
    want = tokens_at_step_3(build(tmp_path / "trl", tiny_model_dir, processed, **between_logs))
    assert got == want > 0


def test_counts_every_position_as_the_trainer_counts_all_tokens(tmp_path, tiny_model_dir, processed, monkeypatch):
    """padded_tokens_per_second's count: every position of every training batch, padding included, which is
    what the Trainer counts with include_num_input_tokens_seen="all"; and more than the real tokens here
    (unpacked batches of the embedded default are padded to their longest conversation)."""
    kotune_trainer = build(tmp_path / "kotune", tiny_model_dir, processed)
    kotune_trainer.train()
    monkeypatch.setattr(kotune.sft_trainer, "trainer_class", lambda: trl.SFTTrainer)
    trl_trainer = build(tmp_path / "trl", tiny_model_dir, processed)
    trl_trainer.args.include_num_input_tokens_seen = "all"
    trl_trainer.train()
    positions = kotune_trainer.input_tokens_with_padding
    assert positions == trl_trainer.state.num_input_tokens_seen > kotune_trainer.state.num_input_tokens_seen > 0
