"""train.lm_head_grad_in_forward: the LM head's gradient is computed in its forward pass, so the backward pass does
not project the hidden states onto the vocabulary a second time.

TRL's fused head (`trl.kernels.ChunkedLogProbFunction`) never holds a token's logits over the whole vocabulary:
its forward pass folds tiles of 4,096 tokens x 32,768 vocabulary entries into online log-sum-exp statistics, and its
backward pass recomputes every tile to turn it into the logits' gradient. That recomputation is a third LM-head
matmul next to the forward's and the gradient's: 2 x tokens x hidden x vocabulary FLOPs, 4.3 TFLOP for 4,096 tokens
of Llama 3 8B, about 6 ms of a 0.42 s H100 step, the size of the gap to Unsloth's step that was left at full length
(bench/results/2026-11-24-h100-issue6.md). Liger's and Unsloth's fused cross-entropy do not recompute: a chunk of
tokens holds its logits over the whole vocabulary, so the forward pass can turn them into the gradient at once.
Neither fits in TRL's slot: Liger's reads the token count on the host (a sync, which a CUDA graph of the step cannot
hold) and gives no entropy; Unsloth's comes with its backend.

This does the same with TRL's own pieces. A chunk of tokens (as many as fill the tile TRL uses: ~1,000 for a
128k vocabulary, so no more memory) is projected onto the whole vocabulary; TRL's forward fold gives its
log-sum-exp, entropy and top-1; TRL's backward fold turns the tile, in place, into d log p(target) / d logits with a
unit incoming gradient; one matmul takes that to d log p(target) / d hidden, accumulated in fp32 as TRL does. The
backward pass then only scales each token's row by its incoming gradient. Held between the head's forward and
backward: tokens x hidden fp32 (64 MiB for 4,096 tokens of 4,096), which TRL's backward allocates at the same
point.

Only the log-probability's gradient is made ahead. A gradient on the entropy (TRL's SFT logs it without one) is
added in the backward pass through TRL's kernel, recomputing; a trained head (its weight or bias requiring a
gradient) or a forward without gradients goes to TRL's kernel as it is.
"""

from __future__ import annotations

import torch

# The private pieces of TRL's kernel this reuses (trl 1.15 and 1.16 have them); `available()` checks them before a
# run relies on them. Triton folds the tiles on a GPU; the torch folds (trl >= 1.16) do it elsewhere.
PIECES = ("ChunkedLogProbFunction", "OPTIONAL_OUTPUTS", "TOKEN_CHUNK_SIZE", "_BLOCK_SIZE", "_addmm_fp32")
FOLDS = {"triton": ("_forward_kernel", "_backward_kernel"), "torch": ("_forward_tile", "_backward_tile")}


def _trl():
    from trl.kernels import chunked_logprob

    return chunked_logprob


def available(device: torch.device | str) -> str | None:
    """None when TRL's kernel has every piece this uses on `device`, else what is missing."""
    device = torch.device(device)
    try:
        trl_kernel = _trl()
    except ImportError as error:
        return f"TRL's chunked log-prob kernel does not import ({error})"
    needed = PIECES + FOLDS["triton" if uses_triton(device) else "torch"]
    missing = [name for name in needed if not hasattr(trl_kernel, name)]
    return f"TRL's chunked log-prob kernel lacks {', '.join(missing)}" if missing else None


def uses_triton(device: torch.device) -> bool:
    """As TRL decides (trl 1.15 has Triton folds only, and no `_use_triton`)."""
    decide = getattr(_trl(), "_use_triton", None)
    return decide(device) if decide is not None else device.type in ("cuda", "xpu")


class LogProbs:
    """Takes the place of `ChunkedLogProbFunction` (`apply` with its arguments, its five outputs)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None, logit_scale=1.0,
              outputs=None):
        trl_kernel = _trl()
        outputs = trl_kernel.OPTIONAL_OUTPUTS if outputs is None else outputs
        trained_head = weight.requires_grad or (bias is not None and bias.requires_grad)
        if not (torch.is_grad_enabled() and hidden.requires_grad) or trained_head:
            return trl_kernel.ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                                           final_logit_softcapping, logit_scale, outputs)
        return GradInForward.apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping,
                                   logit_scale, outputs)


def rows_per_tile(tokens: int, vocab: int, chunk_size: int) -> int:
    """Tokens per whole-vocabulary tile: no more elements than TRL's own tile (TOKEN_CHUNK_SIZE x chunk_size)."""
    return max(1, min(tokens, _trl().TOKEN_CHUNK_SIZE * chunk_size // vocab))


class GradInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping, logit_scale,
                outputs):
        trl_kernel = _trl()
        ctx.set_materialize_grads(False)  # no gradient on the entropy (logged only) must cost nothing
        device, (tokens, width), vocab = hidden.device, hidden.shape, weight.shape[0]
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
            else hidden.dtype
        kernel_args = {"logit_scale": logit_scale, "softcap": final_logit_softcapping or 1.0,
                       "inv_t": 1 / temperature, "HAS_SOFTCAP": final_logit_softcapping is not None}
        flags = {f"HAS_{name.upper()}": name in outputs for name in trl_kernel.OPTIONAL_OUTPUTS}
        triton = uses_triton(device)

        def fp32(fill):
            return torch.full((tokens,), fill, device=device, dtype=torch.float32)

        running_max, max_before_target = fp32(float("-inf")), fp32(float("-inf"))
        sum_exp, x_sum_exp, sq_sum_exp, z_sum, target_logit = (fp32(0.0) for _ in range(5))
        log_z = torch.empty((tokens,), device=device, dtype=torch.float32)
        # d log p(target) / d hidden, one row per token, for a unit gradient on its log-probability
        unit_grad = torch.zeros((tokens, width), device=device, dtype=torch.float32)
        rows = rows_per_tile(tokens, vocab, chunk_size)
        tiles = torch.empty((rows, vocab), device=device, dtype=compute_dtype)
        ones = torch.ones((rows,), device=device, dtype=torch.float32)
        head = weight.to(compute_dtype)
        for start in range(0, tokens, rows):
            part = slice(start, min(start + rows, tokens))
            n = part.stop - start
            tile = tiles[:n]
            torch.mm(hidden[part].to(compute_dtype), head.t(), out=tile)
            if bias is not None:
                tile.add_(bias.to(compute_dtype))
            fold = trl_kernel._forward_kernel[(n,)] if triton else trl_kernel._forward_tile
            fold(tile, tile.stride(0), targets[part], running_max[part], sum_exp[part], x_sum_exp[part],
                 sq_sum_exp[part], z_sum[part], max_before_target[part], target_logit[part], 0, vocab,
                 BLOCK_SIZE=trl_kernel._BLOCK_SIZE, **flags, **kernel_args)
            torch.add(running_max[part], torch.log(sum_exp[part]), out=log_z[part])
            # The tile becomes the logits' gradient; the entropy slot is unused without HAS_ENTROPY_GRAD.
            unfold = trl_kernel._backward_kernel[(n, -(-vocab // trl_kernel._BLOCK_SIZE))] if triton \
                else trl_kernel._backward_tile
            unfold(tile, tile.stride(0), targets[part], log_z[part], log_z[part], ones[:n], ones[:n], 0, vocab,
                   HAS_LOGPROB_GRAD=True, HAS_ENTROPY_GRAD=False, BLOCK_SIZE=trl_kernel._BLOCK_SIZE, **kernel_args)
            trl_kernel._addmm_fp32(unit_grad[part], tile, head)

        # The outputs as TRL's forward computes them from the same statistics.
        logprobs = target_logit - log_z
        entropy = log_z - x_sum_exp / sum_exp if "entropy" in outputs else None
        log_sum_sq_probs = torch.log(sq_sum_exp) - 2 * torch.log(sum_exp) if "log_sum_sq_probs" in outputs else None
        mean_logits = z_sum / vocab if "mean_logits" in outputs else None
        is_top1 = (target_logit >= running_max) & (target_logit > max_before_target) if "is_top1" in outputs \
            else None
        ctx.save_for_backward(unit_grad, hidden, weight, bias, targets)
        ctx.recompute_args = (temperature, chunk_size, final_logit_softcapping, logit_scale)
        ctx.mark_non_differentiable(*(x for x in (log_sum_sq_probs, mean_logits, is_top1) if x is not None))
        return logprobs, entropy, log_sum_sq_probs, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, *_):
        unit_grad, hidden, weight, bias, targets = ctx.saved_tensors
        grad_hidden = None
        if grad_logprobs is not None:
            # One pass: scale each token's row and round it to the hidden states' dtype (no fp32 temporary).
            grad_hidden = torch.empty_like(hidden)
            torch.mul(unit_grad, grad_logprobs.float().unsqueeze(-1), out=grad_hidden)
        if grad_entropy is not None:  # an entropy term in the loss: TRL's kernel, recomputing, for that term alone
            with torch.enable_grad():
                again = hidden.detach().requires_grad_()
                entropy = _trl().ChunkedLogProbFunction.apply(again, weight.detach(), bias, targets,
                                                             *ctx.recompute_args, ("entropy",))[1]
                (extra,) = torch.autograd.grad(entropy, again, grad_entropy)
            grad_hidden = extra if grad_hidden is None else grad_hidden + extra
        return grad_hidden, None, None, None, None, None, None, None, None
