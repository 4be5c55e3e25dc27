"""train.train_sampling_strategy: group_by_length draws each batch from examples of similar length, so padded
batches carry less padding, and it still trains on every example once an epoch, in the same order for the
same seed."""

import shutil

import pytest

from tests.conftest import DATA, ROOT, params_file
from tests.test_sft_trainer import build

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def all_samples(tmp_path_factory, tiny_model_dir):
    """Every conversation of the embedded default: transformers groups within mega-batches of up to 50
    batches, so a handful of examples would leave nothing to group."""
    from kotune.stages import prepare

    root = tmp_path_factory.mktemp("all-samples")
    (root / "raw").mkdir()
    shutil.copyfile(ROOT / "data" / "samples" / "messages.jsonl", root / "raw" / "messages.jsonl")
    params = params_file(root / "params.yaml", tiny_model_dir, data={**DATA, "max_records": None},
                         train={"max_length": 256})
    prepare.main(["--params", str(params), "--raw", str(root / "raw"), "--out", str(root / "out"),
                  "--metrics", str(root / "m.json"), "--plot", str(root / "p.csv")])
    return root / "out"


def batches(trainer) -> list[list[int]]:
    """The real (unpadded) length of each example, batch by batch, in the order the Trainer would train them.
    The Trainer seeds the samplers as training starts (`set_seed`); the same here, so two calls compare."""
    from transformers import set_seed

    set_seed(trainer.args.seed)
    return [batch["attention_mask"].sum(1).tolist() for batch in trainer.get_train_dataloader()]


def padding(lengths: list[list[int]]) -> int:
    return sum(max(batch) * len(batch) - sum(batch) for batch in lengths)


def test_group_by_length_pads_less_and_keeps_every_example(tmp_path, tiny_model_dir, all_samples):
    shape = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    shuffled = batches(build(tmp_path / "random", tiny_model_dir, all_samples, **shape))
    trainer = build(tmp_path / "grouped", tiny_model_dir, all_samples, train_sampling_strategy="group_by_length",
                    **shape)
    grouped = batches(trainer)
    assert len(grouped) > 50
    assert sorted(sum(grouped, [])) == sorted(sum(shuffled, []))  # every example, once
    assert padding(grouped) < padding(shuffled) / 3, (padding(grouped), padding(shuffled))
    assert max(grouped[0]) == max(map(max, grouped)), "the longest batch first: out of memory shows at step 1"
    assert batches(trainer) == grouped, "the same seed, the same order"
