"""kotune fit's estimator against measured peaks: python bench/fit_validation.py > table.md

Each row is a run measured on an H100 80GB (torch.cuda.max_memory_allocated; 8B Llama-3 shape, random
weights; sources in the last column), rebuilt here as params (conf/ presets + the bench scripts'
overrides, composed as `kotune params` does) and estimated by kotune.fit / kotune.memory, except the
seed recipe (../shared/bench/peer_baselines.py), which is not a kotune config and is written out as a
Workload. tests/test_fit.py holds the acceptance rows to within ±15%.

On the GPU device, `python bench/fit_validation.py measure --params P --data D` runs the real train
stage and prints its allocated and reserved peaks and the memory the device reports in use.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kotune.fit import Gpu, workload_from_params  # noqa: E402
from kotune.memory import GiB, Workload, estimate  # noqa: E402
from kotune.model_shapes import LLAMA_3_8B  # noqa: E402

H100 = Gpu("NVIDIA H100 80GB HBM3", 85_045_395_456, (9, 0), True)
ISSUE6, SPEED, LONG = "2026-11-24-h100-issue6.md", "2026-11-24-h100-speed.md", "issue6 long context"
FIT = "this file's measure, 2026-11-24"  # the presets as shipped, measured for this table
# bench/gpu_backends.sh's `common` overrides: the seed recipe's shape on KoAlpaca packed into rows.
PACKED = ["model.torch_dtype=bfloat16", "quant.bnb_4bit_compute_dtype=bfloat16", "lora.lora_alpha=16",
          "lora.lora_dropout=0.0", "train.device=cuda", "train.gradient_checkpointing=true", "train.optim=adamw_8bit",
          "train.max_length=2048", "train.packing=true", "train.per_device_train_batch_size=2", "data.max_tokens=2048"]
VARLEN_FUSED = ["model.attn_implementation=varlen", "train.optim=adamw_torch_fused"]
# bench/gpu_long.sh: one document per row, then the qlora-long-80gb levers.
LONG_LEVERS = ["model.torch_dtype=bfloat16", "quant.bnb_4bit_compute_dtype=bfloat16", "lora.lora_alpha=16",
               "lora.lora_dropout=0.0", "train.device=cuda", "train.gradient_checkpointing=true",
               "train.packing=false", "train.per_device_train_batch_size=1", "train.offload_activations=true",
               "train.use_liger_kernel=true", "train.optim=adamw_torch_fused", "model.attn_implementation=varlen"]
# ../shared/bench/peer_baselines.py seed: prepare_model_for_kbit_training upcasts the embeddings, head and
# norms to fp32, so activations flow in fp32; PEFT keeps LoRA in fp32; SDPA gets fp32 grouped-query heads
# without a mask (math kernel); transformers' own loss materializes fp32 logits; bitsandbytes' AdamW8bit.
SEED = Workload(2, 2048, weight_bytes=4, activation_bytes=4, lora_bytes=4, optimizer_bytes=2,
                attention="math", loss_head="full")


@dataclass(frozen=True)
class Row:
    name: str
    measured_gib: float | None  # None: out of memory on 80 GB
    source: str
    overrides: tuple[str, ...] = ()  # `kotune params` overrides; empty with `workload`
    workload: Workload | None = None
    acceptance: bool = False  # one of the shapes the ±15% bar applies to


def length(tokens: int) -> list[str]:
    return [f"train.max_length={tokens}", f"data.max_tokens={tokens}"]


ROWS = [
    Row("seed recipe, bs 2 x 2048", 15.5, "../shared/bench/README.md", workload=SEED, acceptance=True),
    Row("seed recipe, bs 8 x 2048", 39.3, "../shared/bench/README.md", workload=replace(SEED, micro_batch=8),
        acceptance=True),
    Row("seed recipe, bs 1 x 8192", 44.5, "../shared/bench/README.md",
        workload=replace(SEED, micro_batch=1, seq_len=8192), acceptance=True),
    Row("seed recipe, bs 1 x 16384", None, "../shared/bench/README.md",
        workload=replace(SEED, micro_batch=1, seq_len=16384)),
    Row("kotune bs 2 x 2048 packed, SDPA, adamw_8bit", 7.59, ISSUE6, tuple(PACKED)),
    Row("  + Liger", 7.38, SPEED, (*PACKED, "train.use_liger_kernel=true")),
    Row("  + Liger, bs 8", 13.48, SPEED,
        (*PACKED, "train.use_liger_kernel=true", "train.per_device_train_batch_size=8")),
    Row("kotune varlen + adamw_torch_fused", 7.62, ISSUE6, (*PACKED, *VARLEN_FUSED)),
    Row("  + compile_layers (qlora-24gb levers)", 7.79, ISSUE6, (*PACKED, *VARLEN_FUSED, "train.compile_layers=true"),
        acceptance=True),
    Row("  + compile + layers_not_recomputed 12 (call 60)", 13.82, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.compile_layers=true", "train.layers_not_recomputed=12")),
    Row("  + Liger", 7.41, ISSUE6, (*PACKED, *VARLEN_FUSED, "train.use_liger_kernel=true")),
    Row("  + Liger + compile + offload_activations", 6.58, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.use_liger_kernel=true", "train.compile_layers=true",
         "train.offload_activations=true")),
    Row("  + checkpoint_every_n_layers 2", 18.51, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.checkpoint_every_n_layers=2")),
    Row("  + every 2nd layer + compile", 15.96, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.checkpoint_every_n_layers=2", "train.compile_layers=true")),
    Row("qlora-80gb shape: r64, bs 1 x 4096, every 2nd, compile", 16.77, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.checkpoint_every_n_layers=2", "train.compile_layers=true",
         "train.per_device_train_batch_size=1", *length(4096), "lora.lora_r=64", "lora.lora_alpha=128"),
        acceptance=True),
    Row("131,072 tokens, qlora-long-80gb levers, no compile", 31.8, LONG, (*LONG_LEVERS, *length(131072))),
    Row("131,072 tokens, qlora-long-80gb levers + compile", 29.41, LONG,
        (*LONG_LEVERS, *length(131072), "train.compile_layers=true"), acceptance=True),
    Row("262,144 tokens, no compile", 57.7, LONG, (*LONG_LEVERS, *length(262144))),
    # third session: offload_activations is TRL's streamed offloading (the rows above used save_on_cpu)
    Row("131,072 tokens, long levers + compile, TRL offloading", 30.33, LONG,
        (*LONG_LEVERS, *length(131072), "train.compile_layers=true")),
    Row("  + save_attention_layers 7 (qlora-long-80gb's levers now)", 37.44, LONG,
        (*LONG_LEVERS, *length(131072), "train.compile_layers=true", "train.save_attention_layers=7"),
        acceptance=True),
    Row("train.backend unsloth, bs 2 x 2048 packed", 6.82, ISSUE6, (*PACKED, "train.backend=unsloth")),
    # DATA=full: full-length rows, no packing (fourth session, calls 18-19; padding-free batches, Unsloth's choice then)
    Row("train.backend unsloth + fused AdamW, bs 2 x 2048 full-length", 6.91, ISSUE6,
        (*PACKED, "train.packing=false", "train.backend=unsloth", "train.optim=adamw_torch_fused")),
    Row("  + input_embeddings_on_cpu (qlora-24gb-unsloth's levers)", 5.93, ISSUE6,
        (*PACKED, "train.packing=false", "train.backend=unsloth", "train.optim=adamw_torch_fused",
         "train.input_embeddings_on_cpu=true")),
    # fourteenth session (calls 64-65): the transformers backend on full-length rows with the step as one CUDA graph
    Row("full-length, varlen + fused + compile + embeddings on CPU + cuda_graph_step", 6.78, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.packing=false", "train.compile_layers=true",
         "train.input_embeddings_on_cpu=true", "train.cuda_graph_step=true")),
    Row("  + fuse_lora_output", 6.45, ISSUE6,
        (*PACKED, *VARLEN_FUSED, "train.packing=false", "train.compile_layers=true",
         "train.input_embeddings_on_cpu=true", "train.cuda_graph_step=true", "train.fuse_lora_output=true")),
    # conf/train presets as shipped (LoRA dropout 0.05, gradient accumulation), Llama-3-8B shape.
    Row("qlora-24gb preset, layers_not_recomputed 0 (as shipped then)", 7.984, FIT,
        ("model=llama-3-8b", "train=qlora-24gb", "train.layers_not_recomputed=0"), acceptance=True),
    Row("qlora-80gb preset", 21.325, FIT, ("model=llama-3-8b", "train=qlora-80gb"), acceptance=True),
    Row("qlora-80gb preset, compile_layers false", 23.341, FIT,
        ("model=llama-3-8b", "train=qlora-80gb", "train.compile_layers=false")),
    # measured before the preset kept attention outputs and before offloading was TRL's
    Row("qlora-long-80gb preset, gradient_accumulation_steps 1", 40.638, FIT,
        ("model=llama-3-8b", "train=qlora-long-80gb", "train.gradient_accumulation_steps=1",
         "train.save_attention_layers=0"), acceptance=True),
]


def workload_of(row: Row) -> Workload:
    if row.workload is not None:
        return row.workload
    from kotune.presets import compose

    params = compose(list(row.overrides), ROOT / "conf")
    workload = workload_from_params(params, LLAMA_3_8B, H100)
    # Measured with torch 2.11, whose varlen_attn has no enable_gqa: kotune repeated the key/value heads.
    return replace(workload, kv_repeated=workload.kv_repeated or workload.attention == "varlen")


def table() -> str:
    lines = ["| run | estimate GiB | measured GiB | error | peak at | source |", "|---|---|---|---|---|---|"]
    for row in ROWS:
        result = estimate(LLAMA_3_8B, workload_of(row))
        got = result.allocated / GiB
        if row.measured_gib is None:
            measured, error = "out of memory (80 GB)", "OOM predicted" if got > H100.total_bytes / GiB else "MISSED"
        else:
            measured, error = f"{row.measured_gib:.2f}", f"{100 * (got - row.measured_gib) / row.measured_gib:+.1f}%"
        name = f"**{row.name.strip()}**" if row.acceptance else row.name.strip()
        lines.append(f"| {name} | {got:.2f} | {measured} | {error} | {result.peak_at} | {row.source} |")
    return "\n".join(lines)


def measure(argv: list[str]) -> None:
    """The train stage in this process, then its peaks and the device's memory in use (context included)."""
    import torch

    from kotune.stages import train

    try:
        train.main(argv)
    finally:
        free, total = torch.cuda.mem_get_info()
        print("MEASURED " + json.dumps({
            "allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 3),
            "reserved_now_gib": round(torch.cuda.memory_reserved() / GiB, 3),
            "device_used_now_gib": round((total - free) / GiB, 3)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2:])
    else:
        print(table())
