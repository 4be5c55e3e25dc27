"""Packed-row attention for training: PyTorch's FlashAttention variable-length kernel, as a transformers
attention implementation (`model.attn_implementation: varlen`).

Packing (train.packing) puts several examples into one row and restarts the position ids at 0 where
each example begins. This turns those restarts into cumulative sequence lengths and calls
`torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 bundled with PyTorch >= 2.10, CUDA only), so
an example never attends to another example's tokens, without the dense block-diagonal mask SDPA needs
and without the flash-attn package (which rarely installs). Padded batches (no packing) are un-padded
the same way, so pad tokens cost no attention either.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

NAME = "varlen"
# Set by the trainer around a micro-batch whose rows the host knows to be whole sequences with no padding
# (kotune.cuda_graph_step): attention then skips the two checks that read the GPU (the mask's `.all()`, the
# boundaries' lengths). A module global, not a thread-local: the backward pass's recomputation runs the
# layers on autograd's own thread.
_whole_rows = False


@contextlib.contextmanager
def whole_rows(active: bool = True):
    """Inside, every batch's rows are whole sequences with every token real (active=True)."""
    global _whole_rows
    previous, _whole_rows = _whole_rows, active
    try:
        yield
    finally:
        _whole_rows = previous


def sequence_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative lengths (int32, starting with 0) of the examples in the flattened rows, and the longest.

    A new example starts at every position id 0 and at the start of every row.
    """
    flat = position_ids.reshape(-1)
    starts = flat == 0
    starts[:: position_ids.shape[-1]] = True
    begin = torch.nonzero(starts).flatten()
    cu = torch.cat([begin, begin.new_tensor([flat.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _kernel():
    """PyTorch's varlen_attn, causal, with grouped-query heads, across its signatures: torch 2.10 takes
    `is_causal`, 2.11 `window_size`, and only later versions `enable_gqa` (else the key/value heads
    are repeated, as SDPA does without it)."""
    from torch.nn.attention.varlen import varlen_attn

    accepted = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in accepted else {"is_causal": True}
    native_gqa = "enable_gqa" in accepted

    def attend(q, k, v, cu, longest, scale):
        if q.shape[1] != k.shape[1]:
            if native_gqa:
                return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale, enable_gqa=True, **causal)
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale, **causal)

    return attend


class _Boundaries:
    """Every decoder layer of one forward gets the same position_ids tensor: compute its boundaries once
    (finding the longest example needs a device-to-host copy)."""

    def __init__(self):
        # A strong reference: an address or id could be reused by the next batch's tensor.
        self.tensor, self.value = None, None

    def __call__(self, position_ids: torch.Tensor, batch: int, seq: int) -> tuple[torch.Tensor, int]:
        if position_ids is not self.tensor:
            self.tensor, self.value = position_ids, sequence_boundaries(position_ids.expand(batch, seq))
        return self.value


_boundaries = _Boundaries()
_causal_varlen = None


# Opaque to torch.compile (train.compile_layers): the boundaries cache and the host-side lengths are
# Python work that would only break the graph inside; the layer compiles around this call.
@torch.compiler.disable
def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, position_ids=None, cu_seq_lens_q=None,
                             max_length_q=None, **kwargs):
    """transformers' attention interface: query (batch, heads, seq, dim), key/value (batch, kv_heads, seq,
    dim); returns (batch, seq, heads, dim) and no weights."""
    global _causal_varlen
    if _causal_varlen is None:
        _causal_varlen = _kernel()
    if dropout:
        raise ValueError("the varlen attention implementation has no attention dropout")
    batch, heads, seq, dim = query.shape
    if _whole_rows and attention_mask is None:
        return _whole_rows_attention(query, key, value, scaling)
    q, k, v = (t.transpose(1, 2).reshape(batch * seq, t.shape[1], dim) for t in (query, key, value))
    if attention_mask is not None:
        # A padded batch: the mask function below hands over the 2D padding mask; keep the real tokens.
        # Each row's real tokens are contiguous (left or right padding), so they form one sequence.
        keep = torch.nonzero(attention_mask.reshape(-1)).flatten()
        lengths = attention_mask.sum(dim=-1, dtype=torch.int32)
        cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        out = _causal_varlen(q[keep], k[keep], v[keep], cu, int(lengths.max()), scaling)
        full = out.new_zeros(batch * seq, heads, dim)
        full[keep] = out
        return full.view(batch, seq, heads, dim), None
    if cu_seq_lens_q is not None and max_length_q is not None:
        # TRL >= 1.16's padding-free collator computes the boundaries on the CPU: no device-to-host copy.
        cu, longest = cu_seq_lens_q.to(device=query.device, dtype=torch.int32), int(max_length_q)
    else:
        if position_ids is None:
            position_ids = torch.arange(seq, device=query.device).expand(batch, seq)
        cu, longest = _boundaries(position_ids, batch, seq)
    if cu.numel() - 1 == batch and longest == seq:
        return _whole_rows_attention(query, key, value, scaling)
    return _causal_varlen(q, k, v, cu, longest, scaling).view(batch, seq, heads, dim), None


def _whole_rows_attention(query, key, value, scaling):
    """One whole sequence per row (full rows, long-context documents): SDPA's causal kernel. On Hopper SDPA picks
    cuDNN's, 1.65x the FlashAttention-2 kernel varlen_attn runs at 131,072 tokens and 1.7x at 2 x 2,048
    (bench/attention_kernels.py, H100; forcing cuDNN first changed nothing end to end)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2), None


def varlen_mask(*args, **kwargs):
    """FlashAttention's mask rule (None when nothing is padded, else the 2D padding mask; never a dense one),
    without its check on the GPU where the host knows the rows are whole (whole_rows)."""
    from transformers.masking_utils import flash_attention_mask

    return None if _whole_rows else flash_attention_mask(*args, **kwargs)


def register() -> None:
    """Make `attn_implementation="varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
