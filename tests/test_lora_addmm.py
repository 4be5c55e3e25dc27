"""train.fuse_lora_output: the LoRA product added inside one matmul. The output and every gradient must be
PEFT's to bf16 rounding, and PEFT's copy, scale and add passes must be gone."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kotune import lora_addmm
from kotune.config import ConfigError, params_from_dict

pytestmark = pytest.mark.unit


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def lora_4bit(seed: int = 0):
    """One 4-bit linear layer (bitsandbytes' CPU path) with a LoRA adapter whose B is not zero."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    dense = torch.nn.Linear(64, 96, bias=False)
    layer = bnb.nn.Linear4bit(64, 96, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")  # bitsandbytes quantizes as the layer moves to its device
    base = torch.nn.Sequential(layer)
    base.is_loaded_in_4bit = True  # as on a model loaded with a BitsAndBytesConfig: PEFT picks its 4-bit LoRA layer
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["0"],
                                                                   lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def base_only(x):
    """The 4-bit layer's output without its adapter, for the size of the LoRA part."""
    model = lora_4bit()
    with torch.autocast("cpu", dtype=torch.bfloat16), model.disable_adapter(), torch.no_grad():
        return model(x)


def run(model, x):
    ops = Ops()
    with torch.autocast("cpu", dtype=torch.bfloat16), ops:
        out = model(x)
    out.float().square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return out, grads, ops.names


def test_same_output_and_gradients_as_peft_without_its_extra_passes():
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)  # the GPU presets' hidden states
    want, want_grads, peft_ops = run(lora_4bit(), x)
    model = lora_4bit()
    assert lora_addmm.fuse(model) == 1
    got, got_grads, ops = run(model, x)

    assert got.shape == want.shape and got.dtype == want.dtype == torch.bfloat16
    # bf16: addmm rounds once where PEFT rounds three times; both within a few bf16 steps of the other.
    lora_part = (want.float() - base_only(x).float()).abs().max()
    assert (got.float() - want.float()).abs().max() <= 0.1 * lora_part
    assert got_grads.keys() == want_grads.keys() and len(got_grads) == 2
    for name, grad in got_grads.items():
        assert (grad - want_grads[name]).abs().max() <= 0.01 * want_grads[name].abs().max(), name
    assert "clone" in peft_ops and "clone" not in ops
    assert "addmm" in ops and "add" not in ops


def test_without_autocast_peft_runs_unchanged():
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    model = lora_4bit()
    want = model(x)
    lora_addmm.fuse(model)
    ops = Ops()
    with ops:
        got = model(x)
    assert torch.equal(got, want) and "addmm" not in ops.names


def test_refused_with_the_unsloth_backend():
    with pytest.raises(ConfigError, match="fuse_lora_output with train.backend unsloth"):
        params_from_dict({"train": {"fuse_lora_output": True, "backend": "unsloth"}})


@pytest.mark.gpu
def test_on_cuda_the_train_stage_fuses_every_4bit_lora_layer(tmp_path, tiny_model_dir, processed):
    """bf16 autocast on a GPU: the stage's model takes the fused path, and trains to PEFT's losses."""
    from peft.tuners.lora.bnb import Linear4bit

    from tests.test_host_embeddings import trained_losses

    _, want = trained_losses(tmp_path / "peft", tiny_model_dir, processed, device="cuda")
    trainer, got = trained_losses(tmp_path / "fused", tiny_model_dir, processed, device="cuda", fuse_lora_output=True)
    fused = [m for m in trainer.model.modules() if isinstance(m, Linear4bit)]
    assert fused and all("_fused_forward" in m.forward.__qualname__ for m in fused)
    assert got == pytest.approx(want, rel=1e-2)
