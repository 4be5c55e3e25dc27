"""`kotune fit`: will this training run fit in GPU memory? Answered before a GPU hour is spent.

    kotune fit --params params.yaml [--gpu-mem 24GiB] [--config path/to/config.json]

Estimates the peak GPU memory of one training step from the model's config.json alone (no weights
loaded), broken down by component (kotune.memory); says whether it fits the given or detected GPU,
and the largest micro-batch and max_length that would. Exits with status 2 when it predicts out of
memory. The train stage runs the same estimate at start-up (`warn_if_it_will_not_fit`).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from kotune.config import EIGHT_BIT_OPTIMIZERS, Params, load_params
from kotune.errors import KotuneError
from kotune.memory import Estimate, GiB, Workload, estimate, lora_params
from kotune.model_shapes import PROJECTIONS, ModelShape, resolve_shape

log = logging.getLogger("kotune.fit")
# Not in torch.cuda.max_memory_allocated, which the estimate models: the CUDA context (driver state,
# loaded kernels, cuBLAS/cuDNN handles), measured 0.74-0.82 GiB (device memory in use minus the allocator's
# reserve), and the caching allocator's reserved-but-unallocated blocks, measured 11-17% of the allocated
# peak, in the four preset runs of bench/results/2026-11-24-fit-validation.md (H100, torch 2.11, CUDA 13).
CUDA_CONTEXT = 0.75 * GiB
ALLOCATOR_SLACK = 0.15
FLASH_ATTENTION_CAPABILITY = (8, 0)  # FlashAttention kernels (SDPA's, varlen, flash_attention_2): Ampere or newer
LENGTH_STEP = 256  # suggested max_length values are multiples of this
SEARCH_LIMITS = {"micro_batch": 4096, "seq_len": 2**20}
UNITS = {"": GiB, "G": GiB, "GIB": GiB, "GB": 10**9, "M": 2**20, "MIB": 2**20, "MB": 10**6, "T": 2**40, "TIB": 2**40}


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    capability: tuple[int, int] | None = None  # None: not known (--gpu-mem); assumed Ampere or newer
    bf16: bool = True


def detect_gpu() -> Gpu | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return Gpu(props.name, props.total_memory, (props.major, props.minor), torch.cuda.is_bf16_supported())


def parse_size(text: str) -> int:
    """`24GiB`, `24GB` (decimal), `80G`, `24` (GiB) -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size like 24GiB, 24GB or 80G")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def workload_from_params(params: Params, shape: ModelShape, gpu: Gpu | None = None) -> Workload:
    """What kotune's train stage (TRL's SFTTrainer, PEFT, bitsandbytes) runs for these params."""
    train, quant, lora = params.train, params.quant, params.lora
    unsloth = train.backend == "unsloth"
    activation = 4 if params.model.torch_dtype == "float32" else 2  # auto: bf16, or fp16 where bf16 is missing
    # TRL casts a quantized model's LoRA weights to bf16; PEFT keeps a 16-bit base's adapters in fp32.
    lora_bytes = 2 if quant.load_in_4bit else 4
    attention, repeated = attention_kernel(params, shape, activation, gpu)
    return Workload(
        micro_batch=train.per_device_train_batch_size, seq_len=train.max_length,
        load_in_4bit=quant.load_in_4bit, double_quant=quant.bnb_4bit_use_double_quant,
        weight_bytes=activation, activation_bytes=activation,
        compute_bytes=4 if quant.bnb_4bit_compute_dtype == "float32" else 2,
        lora_r=lora.lora_r, lora_targets=lora_targets(lora.target_modules), lora_dropout=lora.lora_dropout > 0,
        lora_bytes=lora_bytes, optimizer_bytes=2 if train.optim in EIGHT_BIT_OPTIMIZERS else 2 * lora_bytes,
        gradients_held=train.gradient_accumulation_steps > 1,
        checkpointing=train.gradient_checkpointing, checkpoint_every_n_layers=train.checkpoint_every_n_layers,
        layers_not_recomputed=train.layers_not_recomputed if train.gradient_checkpointing else 0,
        offload_checkpoints=train.offload_activations or (unsloth and train.gradient_checkpointing),
        embeddings_on_cpu=train.input_embeddings_on_cpu,
        saved_attention_layers=train.save_attention_layers if train.gradient_checkpointing else 0,
        layer_kernels="compiled" if train.compile_layers else "liger" if train.use_liger_kernel else "eager",
        attention=attention, kv_repeated=repeated,
        loss_head="chunked",  # TRL >= 1.16 always scores through its fused LM head; Liger's replaces none of it
    )


def lora_targets(names: tuple[str, ...]) -> tuple[str, ...]:
    if "all-linear" in names:  # PEFT's shorthand
        return PROJECTIONS
    return tuple(name for name in PROJECTIONS if name in names)


def attention_kernel(params: Params, shape: ModelShape, activation: int, gpu: Gpu | None) -> tuple[str, bool]:
    """Which attention kernel runs, and whether key/value heads are repeated to the query heads first."""
    implementation, train = params.model.attn_implementation, params.train
    rows_share = train.packing or train.per_device_train_batch_size > 1  # packed rows, or padding
    if train.backend == "unsloth":
        return "flash", False
    if implementation == "eager":
        return "eager", False
    if implementation in ("varlen", "flash_attention_2"):
        if implementation == "varlen" and not rows_share:
            return "flash", False  # kotune.packed_attention hands whole rows to SDPA
        return "varlen", implementation == "varlen" and varlen_repeats_kv()
    if rows_share:
        return "masked", True  # transformers builds a dense mask, and then repeats the heads itself
    grouped = shape.num_key_value_heads != shape.num_attention_heads
    fused = activation == 2 and (gpu is None or gpu.capability is None or gpu.capability >= FLASH_ATTENTION_CAPABILITY)
    # SDPA's FlashAttention needs 16-bit inputs on Ampere or newer; its other fused kernel takes no grouped heads.
    return ("math" if grouped and not fused else "flash"), False


def varlen_repeats_kv() -> bool:
    """torch versions whose varlen_attn has no `enable_gqa` (2.11, where it was measured) get repeated heads."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return True
    return "enable_gqa" not in inspect.signature(varlen_attn).parameters


def needed_bytes(result: Estimate) -> float:
    return result.allocated * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT


def fits(shape: ModelShape, workload: Workload, total_bytes: int) -> bool:
    return needed_bytes(estimate(shape, workload)) <= total_bytes


def most_that_fits(high: int, fits_at: Callable[[int], bool]) -> int:
    """The largest n in 0..high for which fits_at(n) holds (memory grows with n, so it holds up to some n); 0 if
    none does. A binary search: every fits_at is a whole estimate."""
    low = 0  # invariant: low fits (or is 0), high + 1 does not
    while low < high:
        middle = (low + high + 1) // 2
        if fits_at(middle):
            low = middle
        else:
            high = middle - 1
    return low


def largest(shape: ModelShape, workload: Workload, total_bytes: int, field: str) -> int | None:
    """The largest micro_batch (or seq_len, in steps of LENGTH_STEP) that fits; None if even the smallest fails."""
    step = LENGTH_STEP if field == "seq_len" else 1
    most = most_that_fits(SEARCH_LIMITS[field] // step,
                          lambda n: fits(shape, replace(workload, **{field: n * step}), total_bytes))
    return most * step or None


def most_layers_not_recomputed(shape: ModelShape, workload: Workload, total_bytes: int) -> int | None:
    """With every layer checkpointed, the most of the last layers that can keep their activations and still fit
    (train.layers_not_recomputed); None where it does not apply (no checkpointing, every n-th layer, or
    checkpoints offloaded: TRL's offloading and Unsloth's move what layers keep to the CPU anyway)."""
    if not workload.checkpointing or workload.checkpoint_every_n_layers > 1 or workload.offload_checkpoints:
        return None
    return most_that_fits(shape.num_hidden_layers,
                          lambda k: fits(shape, replace(workload, layers_not_recomputed=k), total_bytes))


def describe(params: Params, shape: ModelShape, source: str, w: Workload) -> list[str]:
    train = params.train
    every = f"every {w.checkpoint_every_n_layers} layers" if w.checkpoint_every_n_layers > 1 else "every layer"
    if w.layers_not_recomputed:
        every += f" but the last {w.layers_not_recomputed}"
    return [
        f"model: {params.model.name_or_path} (shape from {source})",
        f"  {shape.num_hidden_layers} layers, hidden {shape.hidden_size}, heads {shape.num_attention_heads}/"
        f"{shape.num_key_value_heads}, intermediate {shape.intermediate_size}, vocab {shape.vocab_size} "
        f"({shape.total_params / 1e9:.3g}B parameters)",
        f"run: micro-batch {w.micro_batch} x max_length {w.seq_len}{' packed' if train.packing else ''}, "
        + (f"{params.quant.bnb_4bit_quant_type}{' + double quant' if w.double_quant else ''}, " if w.load_in_4bit
           else "16-bit base, ")
        + f"LoRA r{w.lora_r} on {len(w.lora_targets)} projections ({lora_params(shape, w):,} parameters), "
        f"{train.optim}",
        f"  checkpointing {every if w.checkpointing else 'off'}{', offloaded' if w.offload_checkpoints else ''}, "
        f"{w.attention} attention{' (repeated KV heads)' if w.kv_repeated else ''}, {w.layer_kernels} layer kernels",
    ]


def breakdown(result: Estimate) -> list[str]:
    rows = [(name, size) for name, size in result.parts.items() if size]
    rows += [("= peak allocated (what torch.cuda.max_memory_allocated reports)", result.allocated),
             ("CUDA context", CUDA_CONTEXT),
             (f"allocator slack ({ALLOCATOR_SLACK:.0%})", result.allocated * ALLOCATOR_SLACK),
             ("= needed on the GPU", needed_bytes(result))]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {size / GiB:6.2f} GiB" for name, size in rows]
    return [f"peak at {result.peak_at}, assuming full rows of max_length (packed rows are; unpacked batches pad "
            "only to their longest example):"] + lines


def verdict(shape: ModelShape, w: Workload, gpu: Gpu, where: str) -> tuple[bool, list[str]]:
    needed = needed_bytes(estimate(shape, w))
    ok = needed <= gpu.total_bytes
    spare = f"{abs(gpu.total_bytes - needed) / GiB:.1f} GiB {'to spare' if ok else 'short'}"
    batch, length = largest(shape, w, gpu.total_bytes, "micro_batch"), largest(shape, w, gpu.total_bytes, "seq_len")
    kept = most_layers_not_recomputed(shape, w, gpu.total_bytes)
    kept_line = [] if kept is None else [
        f"  layers that can skip recomputation and still fit (train.layers_not_recomputed): up to {kept} of "
        f"{shape.num_hidden_layers}" + (" (each saves about one layer's forward pass a step)" if kept else "")]
    return ok, [
        f"GPU: {gpu.total_bytes / GiB:.2f} GiB ({where}): {'fits' if ok else 'OUT OF MEMORY'}, {spare}",
        f"  largest micro-batch at max_length {w.seq_len}: {batch or 'none (lower max_length)'}"
        + (" (raise gradient_accumulation_steps to keep the batch)" if batch and batch < w.micro_batch else ""),
        f"  largest max_length at micro-batch {w.micro_batch}: "
        + (f"{length:,} (a multiple of {LENGTH_STEP})" if length else "none: the model alone does not fit")
        + (f"; the model was trained to {shape.max_position_embeddings:,} positions (beyond needs RoPE scaling)"
           if length and shape.max_position_embeddings and length > shape.max_position_embeddings else ""),
    ] + kept_line


def warn_if_it_will_not_fit(params: Params, device: str) -> None:
    """The train stage's start-up check: log a warning with the breakdown when the estimate exceeds the
    detected GPU's memory. Never raises: an estimate that cannot be made must not stop a run."""
    if device != "cuda":
        return
    try:
        gpu = detect_gpu()
        shape, source = resolve_shape(params.model, params.tiny_model)
        workload = workload_from_params(params, shape, gpu)
    except (KotuneError, ValueError) as exc:
        log.info("no GPU memory estimate: %s", exc)
        return
    if gpu is None:
        return
    result = estimate(shape, workload)
    if needed_bytes(result) <= gpu.total_bytes:
        log.info("predicted GPU memory: %.1f of %.1f GiB (kotune fit)", needed_bytes(result) / GiB,
                 gpu.total_bytes / GiB)
        return
    ok, advice = verdict(shape, workload, gpu, f"detected {gpu.name}")
    log.warning("this run is predicted to run out of GPU memory (kotune fit; estimates were within 15%% of measured "
                "peaks):\n%s", "\n".join(describe(params, shape, source, workload) + breakdown(result) + advice))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kotune fit", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--gpu-mem", type=parse_size, help="the GPU's memory, e.g. 24GiB, 80GB (default: detected)")
    parser.add_argument("--config", help="the model's config.json (for a Hub id that is not downloaded)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    shape, source = resolve_shape(params.model, params.tiny_model, args.config)
    gpu = Gpu("--gpu-mem", args.gpu_mem) if args.gpu_mem else detect_gpu()
    workload = workload_from_params(params, shape, gpu)
    result = estimate(shape, workload)
    print("\n".join(describe(params, shape, source, workload) + breakdown(result)))
    if params.lora.use_dora:
        print("note: DoRA's weight-norm pass is not modelled: expect more than this")
    if gpu is None:
        print("GPU: none detected; pass --gpu-mem (e.g. 24GiB) to compare")
        return
    ok, lines = verdict(shape, workload, gpu, "--gpu-mem" if args.gpu_mem else f"detected {gpu.name}")
    print("\n".join(lines))
    if not ok:
        raise KotuneError(f"predicted out of GPU memory ({needed_bytes(result) / GiB:.1f} GiB needed, "
                          f"{gpu.total_bytes / GiB:.1f} GiB on the GPU): see the suggestions above")
