"""train.gc_every_n_steps: no automatic collection while training, the young generations collected every N
steps, Python's own collector back as it was afterwards (also when training fails)."""

import gc

import pytest
from transformers import TrainerCallback

from kotune.config import load_params, params_from_dict
from kotune.errors import ConfigError
from kotune.stages import train
from tests.conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit


class Watch(TrainerCallback):
    """Notes, at each step's start, whether automatic collection is on."""

    def __init__(self):
        self.enabled = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.enabled.append(gc.isenabled())


def build(work, tiny_model_dir, processed, every):
    params = load_params(params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={
        **FAST, "max_steps": 4, "gc_every_n_steps": every}))
    args = train.parse_args(stage_args(work, work / "params.yaml", processed))
    trainer, _, _ = train.build_trainer(params, args, "cpu", "test", train.load_data(processed))
    watch = Watch()
    trainer.add_callback(watch)
    return trainer, params, watch


def collections_during(run):
    """The generations of the collections that started while automatic collection was off: the ones some
    code asked for with gc.collect()."""
    seen = []

    def note(phase, info):
        if phase == "start" and not gc.isenabled():
            seen.append(info["generation"])

    gc.callbacks.append(note)
    try:
        run()
    finally:
        gc.callbacks.remove(note)
    return seen


def test_collects_every_n_steps_only_and_restores(tmp_path, tiny_model_dir, processed):
    assert gc.isenabled()
    trainer, params, watch = build(tmp_path, tiny_model_dir, processed, every=2)
    seen = collections_during(lambda: train.run_training(trainer, None, params))
    assert watch.enabled == [False] * 4
    # generation 1 after steps 2 and 4 (full collections are the Trainer's own, e.g. as it frees memory)
    assert [generation for generation in seen if generation < 2] == [1, 1], seen
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_off_by_default_python_collects_as_usual(tmp_path, tiny_model_dir, processed):
    trainer, params, watch = build(tmp_path, tiny_model_dir, processed, every=0)
    train.run_training(trainer, None, params)
    assert watch.enabled == [True] * 4


def test_restored_when_training_fails(tmp_path, tiny_model_dir, processed):
    trainer, params, _ = build(tmp_path, tiny_model_dir, processed, every=2)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    trainer.training_step = fail
    with pytest.raises(RuntimeError, match="boom"):
        train.run_training(trainer, None, params)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_negative_is_refused():
    with pytest.raises(ConfigError, match="gc_every_n_steps must be >= 0"):
        params_from_dict({"train": {"gc_every_n_steps": -1}})
