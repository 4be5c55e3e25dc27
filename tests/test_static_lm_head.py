"""kotune.static_lm_head: TRL's fused LM head fed every position. Training must log what TRL's own head
gives, and the head must not gather the labelled positions (a host sync each on a GPU)."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

from kotune import static_lm_head
from tests.test_sft_trainer import TRACKED, build, logged_rows

pytestmark = pytest.mark.unit


class UnslothLikeKernel:
    """Stands in for Unsloth's kernel in TRL's slot: rows whose target is out of range come back as 0."""

    _unsloth_fused_linear = True

    def __init__(self, kernel):
        self.kernel = kernel

    def apply(self, hidden, weight, bias, targets, *rest):
        outside = (targets < 0) | (targets >= weight.shape[0])
        per_token = self.kernel.apply(hidden, weight, bias, targets.clamp(min=0), *rest)
        return tuple(None if x is None else x.masked_fill(outside, 0) for x in per_token)


class DataDependentShapes(TorchDispatchMode):
    """Counts the ops whose output size depends on tensor values: on a GPU, each one waits for it."""

    OPS = ("nonzero", "masked_select", "masked_scatter")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(op in func.__name__ for op in self.OPS):
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def unsloth_like_kernel(monkeypatch):
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", UnslothLikeKernel(trl_utils._ChunkedLogProbFunction))


@pytest.fixture
def trl_gathers(monkeypatch):
    """TRL's head as it runs on a Triton device: it gathers the labelled positions (on the CPU it would not)."""
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: True)


def train(trainer):
    shapes = DataDependentShapes()
    with shapes:
        trainer.train()
    return logged_rows(trainer), shapes.seen


def test_trains_and_logs_like_trls_head_without_gathering(tmp_path, tiny_model_dir, processed, trl_gathers,
                                                          monkeypatch):
    want, trl_ops = train(build(tmp_path / "trl", tiny_model_dir, processed))
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", UnslothLikeKernel(trl_utils._ChunkedLogProbFunction))
    trainer = build(tmp_path / "kotune", tiny_model_dir, processed)
    assert trainer.model.get_base_model().forward.__wrapped__  # installed by the train stage
    got, ops = train(trainer)

    assert trl_ops, "the data has prompt tokens without labels, so TRL's head gathers"
    assert ops == []
    assert len(got) == len(want) >= 2
    for mine, theirs in zip(got, want, strict=True):
        for key in TRACKED:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key


def tiny_llama(**config) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **config))
    trl_utils.add_fused_lm_head(model, outputs=static_lm_head.SFT_OUTPUTS)
    return model


def test_loss_and_gradient_are_the_models_own(unsloth_like_kernel):
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.masked_fill(torch.rand(2, 12) < 0.4, -100)
    labels[1] = -100  # a row without a single label still counts as zero
    want = model(input_ids=ids, labels=labels).loss  # transformers' loss from the full logits
    (want_grad,) = torch.autograd.grad(want, model.model.norm.weight)

    assert static_lm_head.install(model)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    (grad,) = torch.autograd.grad(out.loss, model.model.norm.weight)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert not out.log_probs[~out.label_mask].any() and not out.is_top1[~out.label_mask].any()
    assert out.label_mask.sum() == (labels[:, 1:] != -100).sum()


def test_other_calls_and_heads_are_trls(unsloth_like_kernel):
    model = tiny_llama()
    ids = torch.randint(0, 64, (1, 8))
    assert static_lm_head.install(model)
    assert model(input_ids=ids).logits.shape == (1, 8, 64)  # generation's path: the model's own forward

    assert not static_lm_head.install(tiny_llama(final_logit_softcapping=30.0)), "TRL's head caps the logits"


def test_trls_own_kernel_keeps_trls_head():
    """TRL's kernel computes every row it gets: unlabelled positions would cost head FLOPs there."""
    model = tiny_llama()
    forward = model.forward
    assert not static_lm_head.install(model)
    assert model.forward is forward
