"""train.input_embeddings_on_cpu: the same losses with the input embedding table kept in CPU memory."""

import pytest
import torch

from kotune.config import ConfigError, load_params, params_from_dict
from kotune.host_embeddings import HOST_IDS, HostEmbedding, keep_input_embeddings_on_cpu, move_input_embeddings_to_cpu
from kotune.stages import train
from tests.conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit


def trained_losses(work, tiny_model_dir, processed, device="cpu", **train_keys):
    work.mkdir()
    params = load_params(params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={
        **FAST, "max_steps": 3, "gradient_checkpointing": True, "device": device, **train_keys}))
    args = train.parse_args(stage_args(work, work / "params.yaml", processed))
    trainer, _, _ = train.build_trainer(params, args, device, "test", train.load_data(processed))
    trainer.train()
    return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_same_losses_with_the_table_in_cpu_memory(tmp_path, tiny_model_dir, processed, monkeypatch):
    looked_up = []  # (ids the batch brought in CPU memory, ids the model was called with), per lookup
    forward = HostEmbedding.forward
    monkeypatch.setattr(HostEmbedding, "forward", lambda self, input_ids: (
        looked_up.append((self.ids_on_host, input_ids)), forward(self, input_ids))[1])
    _, want = trained_losses(tmp_path / "gpu", tiny_model_dir, processed)
    trainer, got = trained_losses(tmp_path / "cpu", tiny_model_dir, processed, input_embeddings_on_cpu=True)
    embedding = trainer.model.get_input_embeddings()
    # Every training batch brought its ids along: on a GPU none would have been copied back (a host sync each).
    assert embedding.lookups_without_host_ids == 0 and len(looked_up) >= 3
    assert all(carried is not None and torch.equal(carried, ids) for carried, ids in looked_up)
    assert isinstance(embedding, HostEmbedding) and embedding.weight.device.type == "cpu"
    names = [name for name, _ in (*trainer.model.named_parameters(), *trainer.model.named_buffers())]
    assert not any("embed_tokens" in name for name in names)  # model.to(device) must not move it back
    assert len(got) == len(want) == 3
    assert got == want


@pytest.mark.gpu
def test_on_cuda_no_batch_copies_its_ids_back(tmp_path, tiny_model_dir, processed):
    """accelerate moves each batch to the GPU; the ids the collator made must still reach the lookup."""
    _, want = trained_losses(tmp_path / "gpu", tiny_model_dir, processed, device="cuda")
    trainer, got = trained_losses(tmp_path / "cpu", tiny_model_dir, processed, device="cuda",
                                  input_embeddings_on_cpu=True)
    assert trainer.model.get_input_embeddings().lookups_without_host_ids == 0
    assert got == pytest.approx(want, rel=1e-3)


def test_refuses_a_table_the_output_head_shares(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.lm_head.weight = model.get_input_embeddings().weight
    model.get_input_embeddings().weight.requires_grad_(False)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        move_input_embeddings_to_cpu(model)


def test_a_call_without_the_batch_key_looks_up_its_own_ids(tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    table = model.get_input_embeddings().weight.detach().clone()
    model.get_input_embeddings().weight.requires_grad_(False)
    trainer = SimpleNamespace(model=model, data_collator=lambda rows: {"input_ids": torch.tensor(rows)})
    keep_input_embeddings_on_cpu(trainer)
    host = model.get_input_embeddings()
    rows = []
    host.register_forward_hook(lambda module, inputs, output: rows.append(output))

    batch = trainer.data_collator([[1, 2, 3]])
    assert HOST_IDS in batch
    model(**batch)  # the hook takes the key off: the model's forward never sees it
    assert host.lookups_without_host_ids == 0
    model(input_ids=torch.tensor([[4, 5, 6]]))  # as generation calls it: no carried ids, and not the last batch's
    assert host.lookups_without_host_ids == 1
    assert torch.equal(rows[0], table[torch.tensor([[1, 2, 3]])])
    assert torch.equal(rows[1], table[torch.tensor([[4, 5, 6]])])


def test_the_table_stays_on_the_cpu_when_the_model_moves():
    host = HostEmbedding(torch.nn.Embedding(10, 4), torch.device("cpu"))
    host.to(torch.float64).to("meta")
    assert host.weight.device.type == "cpu" and host.weight.dtype == torch.float32


def test_rows_and_hooks_carry_over():
    table = torch.nn.Embedding(10, 4)
    table.weight.requires_grad_(False)
    table.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    host = HostEmbedding(table, torch.device("cpu"))
    host._forward_hooks.update(table._forward_hooks)
    ids = torch.tensor([[1, 2, 9]])
    out = host(ids)
    assert torch.equal(out, table(ids)) and out.requires_grad


def test_config_refuses_several_processes():
    with pytest.raises(ConfigError, match="one process"):
        params_from_dict({"train": {"input_embeddings_on_cpu": True, "num_processes": 2}})
