"""train.fuse_lora_output: each 4-bit LoRA layer adds its LoRA product into the base output inside one matmul.

PEFT's 4-bit LoRA forward copies the base layer's output ("defensively", for an old autograd problem with
views), multiplies the LoRA product by its scaling and adds the two: three passes over an output the size of
the layer's (tokens x 14,336 bf16 values for an 8B model's MLP, 117 MB at 2 x 2,048 tokens), besides the
matmul that writes the product. `torch.addmm(base, h, B^T, alpha=scaling)` computes the same sum in the
matmul's epilogue: it reads the base output once and writes the result, and its backward pass hands the
incoming gradient to the base output as it is. Unsloth's fused LoRA kernels do the same (`fast_lora`).
With the step no longer host-bound (train.cuda_graph_step), memory traffic like this is what the step
costs.

Only where the sum is the same: under autocast (the GPU presets' bf16), one active vanilla LoRA adapter,
not merged, not disabled, no per-call adapter names. Everything else runs PEFT's forward unchanged. Under
autocast PEFT rounds the product, its scaled value and the sum to bf16 in turn; addmm rounds once, so the
values agree to bf16 rounding (tested).
"""

from __future__ import annotations

import torch


def fuse(model) -> int:
    """Give every 4-bit LoRA layer of the model the fused forward; returns how many."""
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # bitsandbytes absent: no 4-bit layers
        return 0
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        layer.forward = _fused_forward(layer, layer.forward)
    return len(layers)


def _fused_forward(layer, peft_forward):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapters = layer.active_adapters
        # bitsandbytes returns the input's dtype: in autocast's, PEFT's sum is in it too (the GPU presets' bf16
        # hidden states); anything else keeps PEFT's own type promotion.
        if args or kwargs or layer.disable_adapters or layer.merged or len(adapters) != 1 \
                or not torch.is_autocast_enabled(x.device.type) or x.dtype != torch.get_autocast_dtype(x.device.type):
            return peft_forward(x, *args, **kwargs)
        name = adapters[0]
        if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}) \
                or getattr(layer.lora_B[name], "bias", None) is not None:
            return peft_forward(x, *args, **kwargs)
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        result = layer.base_layer(x)
        h = lora_a(layer.lora_dropout[name](x))
        fused = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]).to(x.dtype),
                            lora_b.weight.t().to(x.dtype), alpha=layer.scaling[name])
        return fused.view(*result.shape[:-1], fused.shape[-1])

    return forward
