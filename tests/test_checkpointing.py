"""Selective and offloaded gradient checkpointing: the chosen layers, what is recomputed, the same gradients."""

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from kotune import activation_checkpointing, training
from kotune.config import ConfigError, load_params, params_from_dict
from kotune.stages import train
from tests.conftest import DATA, FAST, params_file, stage_args

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


def test_every_second_layer_is_recomputed(tiny_model_dir):
    model = tiny(tiny_model_dir)
    activation_checkpointing.SelectiveCheckpointing(2).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in layers(model)] == [True, False, True, False]


def test_the_last_layers_are_not_recomputed(tiny_model_dir):
    model = tiny(tiny_model_dir)
    activation_checkpointing.SelectiveCheckpointing(layers_not_recomputed=1).on_train_begin(None, None, None,
                                                                                           model=model)
    assert [layer.gradient_checkpointing for layer in layers(model)] == [True, True, True, False]
    model = tiny(tiny_model_dir)
    activation_checkpointing.apply(model, 1, 0, layers_not_recomputed=9)  # more than there are: none recomputed
    assert not any(layer.gradient_checkpointing for layer in layers(model))


def test_the_train_stage_keeps_the_last_layers(tmp_path, tiny_model_dir, processed):
    params = load_params(params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={
        **FAST, "max_steps": 1, "gradient_checkpointing": True, "layers_not_recomputed": 1}))
    args = train.parse_args(stage_args(tmp_path, tmp_path / "params.yaml", processed))
    trainer, _, _ = train.build_trainer(params, args, "cpu", "test", train.load_data(processed))
    trainer.train()
    flags = [m.gradient_checkpointing for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert flags == [True, False]


def gradients(model, ids, context=None):
    import contextlib

    model.zero_grad()
    with context or contextlib.nullcontext():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(got, want, **tolerance):
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tolerance)


def test_checkpointing_every_second_layer_does_not_change_the_gradients(tiny_model_dir):
    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)
    want = gradients(model, ids)
    activation_checkpointing.SelectiveCheckpointing(2).on_train_begin(None, None, None, model=model)
    assert_same(gradients(model, ids), want, rtol=1e-5, atol=1e-6)


def test_keeping_the_last_layers_does_not_change_the_gradients(tiny_model_dir):
    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)
    want = gradients(model, ids)
    activation_checkpointing.SelectiveCheckpointing(layers_not_recomputed=2).on_train_begin(None, None, None,
                                                                                           model=model)
    assert_same(gradients(model, ids), want, rtol=1e-5, atol=1e-6)


def test_offloading_is_trl_s_and_only_on_request():
    from kotune.config import TrainSection

    on = TrainSection(gradient_checkpointing=True, offload_activations=True)
    assert training.sft_config(on, "cuda", "/tmp/x", True, False).activation_offloading
    assert not training.sft_config(TrainSection(), "cpu", "/tmp/x", True, False).activation_offloading


class CountAttention(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += activation_checkpointing.is_attention(func)
        return func(*args, **(kwargs or {}))


def test_saved_attention_is_not_recomputed_and_gradients_stay(tiny_model_dir):
    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)
    with CountAttention() as plain:
        want = gradients(model, ids)
    assert plain.calls == 8  # 4 layers: the forward pass and the recomputation
    assert activation_checkpointing.apply(model, 1, 2) == [0, 1]
    with CountAttention() as saving:
        got = gradients(model, ids)
    assert saving.calls == 6  # layers 0 and 1 kept their attention output
    assert_same(got, want, rtol=1e-5, atol=1e-6)


def test_saved_attention_inside_compiled_layers(tiny_model_dir):
    from kotune.compiling import compile_decoder_layers

    ids = torch.arange(1, 33).unsqueeze(0)
    model = tiny(tiny_model_dir)
    want = gradients(model, ids)
    activation_checkpointing.apply(model, 2, 1)
    compile_decoder_layers(model, "aot_eager")
    assert_same(gradients(model, ids), want, rtol=1e-4, atol=1e-5)


def test_attention_ops_are_told_apart():
    aten = torch.ops.aten
    assert activation_checkpointing.is_attention(aten._scaled_dot_product_flash_attention_for_cpu.default)
    assert activation_checkpointing.is_attention(aten._scaled_dot_product_cudnn_attention.default)
    assert activation_checkpointing.is_attention(aten._flash_attention_forward.default)
    assert not activation_checkpointing.is_attention(aten._scaled_dot_product_cudnn_attention_backward.default)
    assert not activation_checkpointing.is_attention(aten.mm.default)


@pytest.mark.gpu
def test_offloading_does_not_change_the_gradients(tiny_model_dir):
    """TRL's streamed offloading of the checkpointed layers' inputs, on the GPU where it runs."""
    from trl.models import get_act_offloading_ctx_manager

    ids = torch.arange(1, 2049).unsqueeze(0).cuda() % 200 + 1
    model = tiny(tiny_model_dir).cuda()
    want = gradients(model, ids)
    offloading = get_act_offloading_ctx_manager(model)
    assert_same(gradients(model, ids, offloading), want, rtol=1e-5, atol=1e-6)
    assert_same(gradients(model, ids, offloading), want, rtol=1e-5, atol=1e-6)  # a second step, same context




def test_options_need_checkpointing_on():
    with pytest.raises(ConfigError, match="set gradient_checkpointing: true"):
        params_from_dict({"train": {"offload_activations": True}})
    with pytest.raises(ConfigError, match="set gradient_checkpointing: true"):
        params_from_dict({"train": {"save_attention_layers": 2}})
    with pytest.raises(ConfigError, match="checkpoints \\(and offloads\\) every layer"):
        params_from_dict({"train": {"backend": "unsloth", "gradient_checkpointing": True,
                                    "save_attention_layers": 2}})
    with pytest.raises(ConfigError, match="checkpoints \\(and offloads\\) every layer itself"):
        params_from_dict({"train": {"backend": "unsloth", "gradient_checkpointing": True,
                                    "offload_activations": True}})
    with pytest.raises(ConfigError, match="save_attention_layers must be >= 0"):
        params_from_dict({"train": {"gradient_checkpointing": True, "save_attention_layers": -1}})
    with pytest.raises(ConfigError, match="set gradient_checkpointing: true"):
        params_from_dict({"train": {"layers_not_recomputed": 2}})
    with pytest.raises(ConfigError, match="layers_not_recomputed must be >= 0"):
        params_from_dict({"train": {"gradient_checkpointing": True, "layers_not_recomputed": -1}})
    with pytest.raises(ConfigError, match="both choose which layers are recomputed"):
        params_from_dict({"train": {"gradient_checkpointing": True, "layers_not_recomputed": 2,
                                    "checkpoint_every_n_layers": 2}})
    with pytest.raises(ConfigError, match="keeping them on the GPU buys nothing"):
        params_from_dict({"train": {"gradient_checkpointing": True, "layers_not_recomputed": 2,
                                    "offload_activations": True}})
    with pytest.raises(ConfigError, match="checkpoints \\(and offloads\\) every layer itself"):
        params_from_dict({"train": {"backend": "unsloth", "gradient_checkpointing": True,
                                    "layers_not_recomputed": 2}})
