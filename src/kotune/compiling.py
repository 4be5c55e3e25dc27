"""train.compile_layers: regional torch.compile, one decoder layer at a time.

Compiling each decoder layer instead of the whole model keeps the compile to one graph that all
layers share (torch inlines the modules, so the parameters are inputs, not constants), leaves the
4-bit embedding/head code and the Trainer alone, and sits inside gradient checkpointing: the
recomputation in the backward pass runs the same compiled code. What it buys is fusion of the small
ops between the matmuls (RMSNorm, RoPE, SiLU x up, LoRA scaling and residual adds).
"""

from transformers import TrainerCallback

# The test suite swaps in "aot_eager" (no C++/Triton code generation on a CPU runner).
BACKEND = "inductor"


class CompileLayers(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        compile_decoder_layers(model, BACKEND)
        return control


def compile_decoder_layers(model, backend: str) -> int:
    """Compile every decoder layer in place; returns how many were compiled."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    # Shapes change from batch to batch (packed rows, the last batch): one recompile to dynamic shapes,
    # then a single graph; the limit only guards against a recompile storm across the layers.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(layers))
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)
