"""train.compile_layers: every decoder layer compiled, inside checkpointing, with the same gradients."""

import pytest
import torch

from kotune.compiling import compile_decoder_layers
from kotune.config import ConfigError, params_from_dict
from tests.test_checkpointing import gradients, tiny

pytestmark = pytest.mark.unit


def test_compiled_layers_give_the_same_gradients(tiny_model_dir):
    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)  # 4 layers, non-reentrant gradient checkpointing on
    want = gradients(model, ids)
    # aot_eager traces forward and backward the way inductor gets them, without generating C++ here.
    assert compile_decoder_layers(model, "aot_eager") == 4
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = gradients(model, ids)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo traced the layers
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_unsloth_backend_refuses_compile_layers():
    with pytest.raises(ConfigError, match="Unsloth compiles its own"):
        params_from_dict({"train": {"backend": "unsloth", "compile_layers": True}})
