"""Selective and offloaded gradient checkpointing: the chosen layers, and the same gradients."""

import pytest
import torch

from kotune import training
from kotune.config import ConfigError, params_from_dict

pytestmark = pytest.mark.unit


def tiny(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.num_hidden_layers = 4
    model.model.layers.extend([type(model.model.layers[0])(model.config, i) for i in (2, 3)])
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def layers(model):
    return list(model.model.layers)


def test_every_second_layer_is_recomputed_and_offloaded(tiny_model_dir):
    model = tiny(tiny_model_dir)
    training.SelectiveCheckpointing(2, offload=True).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in layers(model)] == [True, False, True, False]
    assert getattr(layers(model)[0]._gradient_checkpointing_func, "kotune_offloaded", False)


def gradients(model, ids):
    model.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_offloading_does_not_change_the_gradients(tiny_model_dir):
    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)
    torch.manual_seed(0)
    want = gradients(model, ids)
    training.SelectiveCheckpointing(2, offload=True).on_train_begin(None, None, None, model=model)
    got = gradients(model, ids)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_options_need_checkpointing_on():
    with pytest.raises(ConfigError, match="set gradient_checkpointing: true"):
        params_from_dict({"train": {"offload_activations": True}})
    with pytest.raises(ConfigError, match="checkpoints \\(and offloads\\) every layer"):
        params_from_dict({"train": {"backend": "unsloth", "gradient_checkpointing": True,
                                    "checkpoint_every_n_layers": 2}})
