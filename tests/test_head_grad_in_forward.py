"""train.lm_head_grad_in_forward: the LM head's gradient made in its forward pass. Every output and gradient must
be TRL's kernel's, and the backward pass must not project onto the vocabulary again."""

import pytest
import torch
import trl.trainer.utils as trl_utils
from torch.utils._python_dispatch import TorchDispatchMode

from kotune import head_grad_in_forward, static_lm_head
from kotune.config import ConfigError, params_from_dict
from kotune.head_grad_in_forward import LogProbs
from tests.test_sft_trainer import TRACKED, build
from tests.test_static_lm_head import tiny_llama, train

pytestmark = pytest.mark.unit

TRL = trl_utils._ChunkedLogProbFunction
OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
VOCAB, WIDTH, TOKENS = 50, 16, 37


class Matmuls(TorchDispatchMode):
    """Counts matrix products: in the head's backward pass, TRL's recompute its tiles and make the gradient."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.split(".")[0] in ("mm", "addmm", "addmm_", "bmm", "matmul")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 20 tokens over the whole (50-entry) vocabulary, so 37 tokens take two tiles and a partial one."""
    from trl.kernels import chunked_logprob

    monkeypatch.setattr(chunked_logprob, "TOKEN_CHUNK_SIZE", 64)
    assert head_grad_in_forward.rows_per_tile(TOKENS, VOCAB, 16) == 20


def head_inputs(bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    hidden = torch.randn(TOKENS, WIDTH, requires_grad=True)
    weight = torch.randn(VOCAB, WIDTH) / 4
    return hidden, weight, torch.randn(VOCAB) if bias else None, torch.randint(0, VOCAB, (TOKENS,))


def outputs_and_grad(kernel, hidden, weight, bias, targets, transforms, entropy_weight):
    per_token = kernel.apply(hidden, weight, bias, targets, *transforms, OUTPUTS)
    log_probs, entropy = per_token[:2]
    weights = torch.linspace(-1.0, 2.0, TOKENS)  # a different incoming gradient on every token
    loss = (weights * log_probs).sum() + (entropy_weight * entropy.sum() if entropy_weight else 0)
    (grad,) = torch.autograd.grad(loss, hidden)
    return [x.detach() for x in per_token], grad


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("transforms", [(1.0, 16, None, 1.0), (0.7, 16, 5.0, 1.3)],
                         ids=["plain", "temperature-softcap-scale"])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.5], ids=["logprob-loss", "entropy-in-loss"])
def test_outputs_and_gradient_are_trls(small_tiles, bias, transforms, entropy_weight):
    inputs = head_inputs(bias)
    want, want_grad = outputs_and_grad(TRL, *inputs, transforms, entropy_weight)
    got, grad = outputs_and_grad(LogProbs, *inputs, transforms, entropy_weight)
    for mine, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_within_rounding(small_tiles):
    hidden, weight, _, targets = head_inputs(bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_grad = outputs_and_grad(TRL, hidden, weight, None, targets, (1.0, 16, None, 1.0), 0.0)
        got, grad = outputs_and_grad(LogProbs, hidden, weight, None, targets, (1.0, 16, None, 1.0), 0.0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(grad, want_grad, rtol=2e-2, atol=2e-3)


def test_the_backward_pass_does_not_project_again(small_tiles):
    hidden, weight, _, targets = head_inputs(bias=False)
    counted = {}
    for kernel in (TRL, LogProbs):
        log_probs = kernel.apply(hidden, weight, None, targets, 1.0, 16, None, 1.0, OUTPUTS)[0]
        matmuls = Matmuls()
        with matmuls:
            log_probs.sum().backward()
        counted[kernel] = matmuls.count
    # TRL's: 4 vocabulary chunks of one token chunk, each projected again and multiplied into the gradient.
    assert counted == {TRL: 8, LogProbs: 0}


def test_no_gradient_or_a_trained_head_goes_to_trls_kernel(small_tiles, monkeypatch):
    made = []
    monkeypatch.setattr(head_grad_in_forward.GradInForward, "apply", lambda *a: made.append(a) or TRL.apply(*a))
    hidden, weight, _, targets = head_inputs(bias=False)
    with torch.no_grad():
        LogProbs.apply(hidden, weight, None, targets, 1.0, 16)
    trained = weight.clone().requires_grad_()
    LogProbs.apply(hidden, trained, None, targets, 1.0, 16)[0].sum().backward()
    assert made == [] and trained.grad is not None
    LogProbs.apply(hidden, weight, None, targets, 1.0, 16)
    assert len(made) == 1


def test_the_models_loss_and_gradient_through_the_head_with_and_without_gathers():
    """Both ways the wrapper feeds the kernel: every position (a CUDA graph's step) and the labelled ones."""
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.masked_fill(torch.rand(2, 12) < 0.4, -100)
    want = model(input_ids=ids, labels=labels).loss  # transformers' loss from the full logits
    (want_grad,) = torch.autograd.grad(want, model.model.norm.weight)
    forward = model.forward
    for every_position in (True, False):
        model.forward = forward
        assert static_lm_head.install(model, every_position=every_position, grad_in_forward=True)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (grad,) = torch.autograd.grad(out.loss, model.model.norm.weight)
        assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_trains_and_logs_like_trls_head(tmp_path, tiny_model_dir, processed):
    want, _ = train(build(tmp_path / "trl", tiny_model_dir, processed))
    got, _ = train(build(tmp_path / "kotune", tiny_model_dir, processed, lm_head_grad_in_forward=True))
    assert len(got) == len(want) >= 2
    for mine, theirs in zip(got, want, strict=True):
        for key in TRACKED:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key


def test_refused_with_the_unsloth_backend():
    with pytest.raises(ConfigError, match="lm_head_grad_in_forward with train.backend unsloth"):
        params_from_dict({"train": {"lm_head_grad_in_forward": True, "backend": "unsloth"}})


def test_a_trl_without_the_pieces_is_named(monkeypatch):
    from trl.kernels import chunked_logprob

    monkeypatch.delattr(chunked_logprob, "_backward_kernel")
    monkeypatch.delattr(chunked_logprob, "_backward_tile")
    assert head_grad_in_forward.available(torch.device("cpu")) == "TRL's chunked log-prob kernel lacks _backward_tile"
    monkeypatch.setattr(chunked_logprob, "_use_triton", lambda device: device.type == "cuda")
    assert head_grad_in_forward.available(torch.device("cuda")) == \
        "TRL's chunked log-prob kernel lacks _backward_kernel"


@pytest.mark.gpu
def test_on_cuda_triton_folds_match_trls_kernel():
    """The Triton path: whole-vocabulary tiles of a Llama-3-sized vocabulary, bf16 autocast."""
    torch.manual_seed(0)
    tokens, width, vocab = 2048, 256, 128256
    hidden = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, width, device="cuda") / 16).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    results = []
    for kernel in (TRL, LogProbs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            per_token = kernel.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0, OUTPUTS)
        (grad,) = torch.autograd.grad(-per_token[0].sum() / tokens, hidden)
        results.append((per_token[0].detach(), per_token[1].detach(), per_token[4], grad))
    (lp, ent, top1, grad), (lp2, ent2, top12, grad2) = results
    torch.testing.assert_close(lp2, lp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent2, ent, rtol=1e-4, atol=1e-4)
    assert torch.equal(top12, top1)
    torch.testing.assert_close(grad2.float(), grad.float(), rtol=2e-2, atol=1e-5)
