"""TRL's SFTTrainer, minus the host syncs it makes in the middle of every training step.

TRL turns its per-batch metrics (entropy, token accuracy, token count) into Python numbers right after
the forward pass (`.item()`, three times per micro-batch), and the Trainer reads each batch's input
token count back from the GPU after the backward pass. Each of those makes the host wait for the GPU to
drain, which throws away whatever lead the host had built queueing kernels. The backward pass
(recomputation, compiled backward graphs, 4-bit dequantization) is host-bound: on the 8B QLoRA step at
2 x 2,048 tokens, 2,151 GPU waits per step were found there (bench/profile_train.py,
bench/results/2026-11-24-h100-issue6.md). Removing the token count's read alone gave +7% tokens/s.

Here the metrics and the token count stay on the GPU and become numbers when the Trainer logs or
saves (one sync per logged step), with the same values TRL and the Trainer would log. The loss is
TRL's own default ("nll" through its fused LM head). Any other configuration (a custom loss, label
smoothing, MoE auxiliary loss, sequence parallelism, evaluation) runs TRL's code unchanged.

The class is built on whatever `trl.SFTTrainer` is when `trainer_class()` is called: with
`train.backend: unsloth`, Unsloth's patched copy of TRL's trainer (the same compute_loss code, the same
fused LM head, which Unsloth's models honour).
"""

from __future__ import annotations

import torch


def trainer_class() -> type:
    """kotune's SFTTrainer on top of the current `trl.SFTTrainer` (import Unsloth before calling this)."""
    import trl

    from kotune.cuda_graph_step import GraphedSteps

    return type("SFTTrainer", (GraphedSteps, DeferredMetrics, trl.SFTTrainer), {"__module__": __name__})


class DeferredMetrics:
    """Mixed into TRL's SFTTrainer by trainer_class()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # One row per training micro-batch since the last log: label tokens, entropy sum, top-1 hits, input tokens.
        self._pending_metrics: list[torch.Tensor] = []
        self._flops_per_token: int | None = None
        self._pending_input_tokens: torch.Tensor | int = 0  # input tokens counted since the last log or save
        # Every position of every training batch, padding included, counted by this process since it started
        # (a resumed run does not restore it): the batches' shapes, known on the host, so no sync.
        self.input_tokens_with_padding = 0

    def _runs_trl_default_loss(self) -> bool:
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        sequence_parallel = parallelism is not None and getattr(parallelism, "sp_enabled", False)
        knows_trl_state = all(hasattr(self, name) for name in ("_metrics", "_total_train_tokens", "_tp_size"))
        return (knows_trl_state and self.compute_loss_func is None and self.label_smoother is None
                and not getattr(self, "aux_loss_enabled", False) and getattr(self.args, "loss_type", "nll") == "nll"
                and not sequence_parallel)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.model.training or not self._runs_trl_default_loss():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's default branch (trl.SFTTrainer.compute_loss, "nll"), line for line.
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if "attention_mask" in inputs:
            input_tokens = inputs["attention_mask"].sum()
        else:  # padding-free batches carry position_ids instead (as TRL counts them)
            # A fill on the device, not a copy from the host: nothing a CUDA graph cannot hold (kotune.cuda_graph_step).
            input_tokens = torch.full((), inputs["position_ids"].size(1), device=loss.device)
        self._pending_metrics.append(torch.stack([
            outputs.label_mask.sum().double(), outputs.entropy.detach().sum().double(),
            outputs.is_top1.sum().double(), input_tokens.double()]))
        return loss

    def _flush_metrics(self) -> None:
        """TRL's per-micro-batch figures from the rows kept since the last log: one transfer for all."""
        if not self._pending_metrics:
            return
        rows = torch.stack(self._pending_metrics)
        self._pending_metrics = []
        # Every process ran the same number of micro-batches: sum each one's figures over the processes.
        rows = self.accelerator.gather(rows).reshape(-1, *rows.shape).sum(dim=0).tolist()
        metrics = self._metrics["train"]
        for valid, entropy, correct, tokens in rows:
            metrics["entropy"].append(entropy / valid if valid > 0 else 0.0)
            metrics["mean_token_accuracy"].append(correct / valid if valid > 0 else 0.0)
            self._total_train_tokens += int(tokens) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._flush_metrics()
        self._flush_input_tokens()
        super().log(logs, start_time)

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's estimate (6 x tokens x parameters) with the parameters counted once: it calls
        model.num_parameters() on every micro-batch, a walk over all of the model's tensors (hundreds on
        an 8B model, 4-bit ones included) on the host, for a count that does not change while training."""
        ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        if not isinstance(ids, torch.Tensor) or ids.numel() == 0:
            return super().floating_point_ops(inputs)
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops(inputs) // ids.numel()
        return self._flops_per_token * ids.numel()

    def _track_num_input_tokens(self, inputs):
        """One process: the batch's token count is added up where the batch is and becomes a number when the
        Trainer logs or saves. The Trainer reads each micro-batch's count back (`.item()`) right after its
        backward pass, and on a GPU the batch is already there (accelerate's dataloader moved it), so that
        read was a wait for the whole step to drain."""
        ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        if isinstance(ids, torch.Tensor):
            self.input_tokens_with_padding += ids.numel()
        if self.accelerator.num_processes > 1 or self.args.include_num_input_tokens_seen == "no":
            return super()._track_num_input_tokens(inputs)
        mask = inputs.get("attention_mask")
        pad = getattr(self.processing_class, "pad_token_id", None)
        if not isinstance(ids, torch.Tensor):
            return super()._track_num_input_tokens(inputs)  # the Trainer warns about the missing input
        if self.args.include_num_input_tokens_seen != "non_padding":
            counted = ids.numel()
        elif isinstance(mask, torch.Tensor):
            counted = mask.sum()
        elif pad is not None:
            counted = (ids != pad).sum()
        else:
            return super()._track_num_input_tokens(inputs)  # the Trainer warns and counts every token
        self._pending_input_tokens = self._pending_input_tokens + counted

    def _flush_input_tokens(self) -> None:
        self.state.num_input_tokens_seen += int(self._pending_input_tokens)
        self._pending_input_tokens = 0

    def _save_checkpoint(self, model, trial) -> None:
        self._flush_input_tokens()  # the saved trainer state carries the count a resumed run continues from
        super()._save_checkpoint(model, trial)
