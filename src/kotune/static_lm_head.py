"""TRL's fused LM head, fed every position: no gathers, so none of the host syncs they make.

TRL's SFTTrainer scores the next-token labels through a fused LM head (`trl.trainer.utils.add_fused_lm_head`).
On a GPU it first gathers the positions that have a label (`hidden_states[mask]`, `labels[mask]`) and
scatters the results back (`masked_scatter`). A boolean gather's size is only known once the mask has
been computed, so each of those makes the host wait for the GPU to drain: two waits in the forward pass
and two in the backward pass of every micro-batch (bench/results/2026-11-24-h100-issue6.md, SYNC_TRACE).
A wait throws away the lead the host had built queueing kernels. On the 8B QLoRA step (Unsloth backend,
2 x 2,048 tokens) this module took the syncs from 8.7 to 4.7 a step and gave +1.8% and +2.7% tokens/s.

Here the head gets every position in a fixed shape, as TRL itself does on devices without Triton, and the
unlabelled positions are zeroed afterwards (`masked_fill`), so the loss, its gradient and the logged
entropy and token accuracy are the ones TRL computes. Which kernel sits in TRL's slot decides the cost:
Unsloth's (the `unsloth` backend) skips rows whose target is out of range by itself, so handing it every
position costs nothing. TRL's own kernel computes every row it is given, so unlabelled positions (prompt
tokens under `assistant_only_loss`, padding) would cost LM-head FLOPs: with it, `install` leaves TRL's
head as it is, unless a CUDA graph needs every position.

The same wrapper is where `train.lm_head_grad_in_forward` puts kotune.head_grad_in_forward's kernel in
place of TRL's; without a graph it gathers the labelled positions first, as TRL's own path does.

Anything the plain head does not cover (scaled or soft-capped logits, MoE router losses, pre-shifted
labels, sharded heads) goes to TRL's forward unchanged.
"""

from __future__ import annotations

import functools

import torch

# The per-token fields TRL's SFTTrainer asks its head for: the loss, and its entropy and accuracy metrics.
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")
# Config fields that make TRL's head scale or cap the logits (it reads the same ones).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def install(model, every_position: bool = False, grad_in_forward: bool = False) -> bool:
    """Wrap the forward that TRL's add_fused_lm_head patched (the base model's, under a PEFT wrapper) so that
    its fused calls score every position. Returns False, leaving the model alone, where that would cost
    more than the syncs it saves (TRL's own kernel, unless every_position) or where TRL's head transforms the
    logits. every_position: with TRL's own kernel too, for a step that must not wait for the GPU at all (a CUDA
    graph, kotune.cuda_graph_step); its targets are clamped into range, as TRL's own ungathered path does.
    grad_in_forward: TRL's own kernel is replaced by kotune.head_grad_in_forward, which makes the head's gradient
    in the forward pass; without every_position the labelled positions are gathered first, as TRL does."""
    import trl.trainer.utils as trl_utils

    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # where TRL put its head
    config = model.config.get_text_config()
    kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None)  # None: a TRL without the fused head
    if kernel is None or not (skips_unlabelled(kernel) or every_position or grad_in_forward) \
            or getattr(config, "output_router_logits", False) \
            or any(getattr(config, name, None) is not None for name in LOGIT_TRANSFORMS):
        return False
    trl_forward = model.forward
    gather = not (every_position or skips_unlabelled(kernel))  # only grad_in_forward brought us here

    @functools.wraps(trl_forward)  # keeps the signature `generate` validates its kwargs against
    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = model.get_output_embeddings() if fused_lm_head else None
        if fused_lm_head and not args and labels is not None and shift_labels is None and _plain(head):
            kwargs["use_cache"] = False
            hidden = model.base_model(**kwargs).last_hidden_state[:, :-1]
            labels = labels[:, 1:].to(head.weight.device)
            return score(hidden.to(head.weight.device), head, labels, num_items_in_batch, gather, grad_in_forward)
        return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                           num_items_in_batch=num_items_in_batch, **kwargs)

    model.forward = forward
    return True


def skips_unlabelled(kernel) -> bool:
    """Unsloth's kernel in TRL's slot: rows whose target is out of range (-100) return 0 and are not computed."""
    return getattr(kernel, "_unsloth_fused_linear", False)


def _plain(head) -> bool:
    """A whole, unsharded head: FSDP2's DTensor and DeepSpeed ZeRO-3's partitions need TRL's gathering."""
    from torch.distributed.tensor import DTensor

    return not isinstance(head.weight, DTensor) and not hasattr(head.weight, "ds_id")


def score(hidden: torch.Tensor, head, labels: torch.Tensor, num_items_in_batch=None, gather: bool = False,
          grad_in_forward: bool = False):
    """TRL's FusedCausalLMOutput for `hidden` [batch, positions, hidden] and next-token `labels` (-100: none).
    gather: only the labelled positions are scored (TRL's own path on a GPU; its boolean gathers wait for the GPU)."""
    import trl.trainer.utils as trl_utils

    kernel = trl_utils._ChunkedLogProbFunction  # looked up per call: Unsloth swaps its own kernel in
    if grad_in_forward and not skips_unlabelled(kernel):
        from kotune.head_grad_in_forward import LogProbs

        kernel = LogProbs
    mask = labels != -100
    if gather:
        rows, targets = hidden[mask], labels[mask]
    else:
        # A kernel that skips targets out of range (-100) takes the labels as they are; TRL's own needs them in range
        # (the unlabelled positions are zeroed below either way).
        rows = hidden.reshape(-1, hidden.size(-1))
        targets = (labels if skips_unlabelled(kernel) else labels.clamp(min=0)).reshape(-1)
    per_token = kernel.apply(rows, head.weight, head.bias, targets, 1.0, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, None,
                             1.0, SFT_OUTPUTS)
    if gather:  # as TRL: masked_scatter keeps an all-unlabelled micro-batch connected to the graph
        per_token = (None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
    else:
        per_token = (None if x is None else x.view(mask.shape).masked_fill(~mask, 0) for x in per_token)
    log_probs, entropy, _, _, is_top1 = per_token
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return trl_utils.FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                         is_top1=is_top1, label_mask=mask)
