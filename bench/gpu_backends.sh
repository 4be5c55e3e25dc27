#!/usr/bin/env bash
# Issue 6's levers, one at a time, through the real `kotune train` on the 8B Llama-3 shape (random
# weights, real tokenizer) and KoAlpaca packed into 2,048-token rows, then (PEERS=1) Unsloth's own
# references from ../shared/bench in the same call. Run on the GPU device from the repo root:
#
#   RUNS="tf-sdpa tf-varlen unsloth" PEERS=1 bash bench/gpu_backends.sh
#
# LOGGING=10 logs (and times) every 10th step, as the presets do; the default 1 gives per-step windows.
#
# DATA=full trains on full-length rows instead (the issue's first goal, Unsloth's random-token shape):
# raw Korean text cut into ~4,000-character records, each truncated to 2,048 tokens, no packing, so every
# step is 2 x 2,048 real tokens under one causal mask per row.
#
# Writes kotune_<run>.json (the stage's metrics), steps_<run>.csv (per-step loss) and the peers' JSON
# under $OUT, then table.md (bench/summarize.py: tokens/s, memory, MFU, loss against the first run).
set -uo pipefail
OUT=${OUT:-/tmp/kotune-bench}
mkdir -p "$OUT"
source bench/device_env.sh
# BASE=<folder> runs an earlier commit's src/ and params.yaml from that folder (`git archive <commit> src
# params.yaml | tar -x -C .whl/base`): a baseline in the same call for a change to the stage code.
if [ -n "${BASE:-}" ]; then export PYTHONPATH=$BASE/src:$PYTHONPATH PARAMS=$BASE/params.yaml; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, trl, bitsandbytes, datasets; print(' '.join(f'{m.__name__} {m.__version__}' for m in (torch, transformers, peft, trl, bitsandbytes, datasets)))" | tee -a "$OUT/gpu.txt"
if [ "${GPU_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tail -4 | tee "$OUT/gpu_tests.txt"
fi
[ -d /tmp/l8b ] || python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b

# The seed recipe's shape: nf4 + double quant, bf16 compute, LoRA r16/alpha16 on the 7 projections,
# micro-batch 2 x 2048, gradient checkpointing, AdamW 8-bit; KoAlpaca packed (no pad tokens).
common=(model.name_or_path=/tmp/l8b model.pad_token='<|reserved_special_token_250|>' model.torch_dtype=bfloat16
        quant.bnb_4bit_compute_dtype=bfloat16 lora.lora_alpha=16 lora.lora_dropout=0.0 train.device=cuda
        train.gradient_checkpointing=true train.optim=adamw_8bit train.max_length=2048
        train.per_device_train_batch_size=2 train.learning_rate=2e-4 train.warmup_steps=0.1
        train.max_steps=${STEPS:-20} train.logging_steps=${LOGGING:-1} train.eval_steps=100000 train.save_steps=100000
        data.max_tokens=2048 data.eval_size=0.01 data.max_records=${RECORDS:-3000})
if [ "${DATA:-koalpaca}" = full ]; then
  common+=(train.packing=false)
  python3 - <<'PY'
import json
from pathlib import Path
rows = json.loads(Path("/tmp/raw/ko_alpaca_data.json").read_text())
text = "\n\n".join(f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows)
folder = Path("/tmp/processed"); folder.mkdir(exist_ok=True)
chunks = [text[i:i + 4000] for i in range(0, len(text) - 4000, 4000)]  # ~2,300 tokens each: cut to 2,048
(folder / "train.jsonl").write_text("".join(json.dumps({"text": c}, ensure_ascii=False) + "\n" for c in chunks))
(folder / "eval.jsonl").write_text("")
print(f"{len(chunks)} full-length text records", flush=True)
PY
else
  common+=(train.packing=true)
  python3 bench/set_params.py /tmp/base.yaml "${common[@]}"
  python3 -m kotune prepare --params /tmp/base.yaml --raw /tmp/raw --out /tmp/processed --metrics /tmp/d.json \
    --plot /tmp/l.csv 2>&1 | grep kept
fi

declare -A LEVERS=(
  [tf-sdpa]=""
  [tf-sdpa-liger]="train.use_liger_kernel=true"
  [tf-sdpa-liger-bs8]="train.use_liger_kernel=true train.per_device_train_batch_size=8"
  [tf-varlen]="model.attn_implementation=varlen"
  [tf-varlen-liger]="model.attn_implementation=varlen train.use_liger_kernel=true"
  [tf-varlen-liger-fused]="model.attn_implementation=varlen train.use_liger_kernel=true train.optim=adamw_torch_fused"
  [tf-varlen-fused]="model.attn_implementation=varlen train.optim=adamw_torch_fused"
  [tf-varlen-fused-every2]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.checkpoint_every_n_layers=2"
  [tf-varlen-fused-compile]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true"
  [tf-varlen-fused-every2-compile]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.checkpoint_every_n_layers=2 train.compile_layers=true"
  # the last 12 layers not recomputed: what `kotune fit` leaves room for on a 22.5 GiB card (qlora-24gb's levers)
  [tf-varlen-fused-compile-keep12]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.layers_not_recomputed=12"
  [tf-varlen-liger-fused-compile]="model.attn_implementation=varlen train.use_liger_kernel=true train.optim=adamw_torch_fused train.compile_layers=true"
  [tf-varlen-fused-compile-embcpu]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.input_embeddings_on_cpu=true"
  # full-length rows through the transformers backend, replayed from one CUDA graph a micro-batch (train.cuda_graph_step),
  # with and without compiled layers; the plain run to compare with is tf-varlen-fused-compile-embcpu
  [tf-full-graph]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.input_embeddings_on_cpu=true train.cuda_graph_step=true"
  # ... with the LM head's gradient made in its forward pass (train.lm_head_grad_in_forward): one vocabulary matmul fewer
  [tf-full-graph-head]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.input_embeddings_on_cpu=true train.cuda_graph_step=true train.lm_head_grad_in_forward=true"
  # ... as conf/train/qlora-24gb-full.yaml ships it: 8 micro-batches a step (the accumulating graph at 8B)
  [tf-full-graph-head-ga8]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.input_embeddings_on_cpu=true train.cuda_graph_step=true train.lm_head_grad_in_forward=true train.gradient_accumulation_steps=8"
  [tf-full-graph-fused]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.input_embeddings_on_cpu=true train.cuda_graph_step=true train.fuse_lora_output=true"
  [tf-full-graph-eager]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.input_embeddings_on_cpu=true train.cuda_graph_step=true"
  [tf-varlen-fused-compile-offload]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.offload_activations=true"
  [tf-varlen-liger-fused-compile-offload]="model.attn_implementation=varlen train.use_liger_kernel=true train.optim=adamw_torch_fused train.compile_layers=true train.offload_activations=true"
  # KoAlpaca unpacked, 16 conversations a batch padded to the longest (the issue's bs 16 reference): shuffled, or
  # grouped by length (train.train_sampling_strategy); compare their whole-run tok/s, as grouped batches run
  # from the longest to the shortest within each mega-batch of 50 batches
  [tf-sdpa-fused-bs16]="train.optim=adamw_torch_fused train.packing=false train.per_device_train_batch_size=16"
  [tf-sdpa-fused-bs16-grouped]="train.optim=adamw_torch_fused train.packing=false train.per_device_train_batch_size=16 train.train_sampling_strategy=group_by_length"
  [tf-sdpa-fused-compile-bs16]="train.optim=adamw_torch_fused train.compile_layers=true train.packing=false train.per_device_train_batch_size=16"
  [unsloth-fused-bs16]="train.backend=unsloth train.optim=adamw_torch_fused train.packing=false train.per_device_train_batch_size=16"
  [unsloth-fused-bs16-grouped]="train.backend=unsloth train.optim=adamw_torch_fused train.packing=false train.per_device_train_batch_size=16 train.train_sampling_strategy=group_by_length"
  [tf-sdpa-fused-compile-bs16-grouped]="train.optim=adamw_torch_fused train.compile_layers=true train.packing=false train.per_device_train_batch_size=16 train.train_sampling_strategy=group_by_length"
  # conf/train/qlora-80gb.yaml's shape: one 4,096-token packed row, LoRA r64
  [preset-80gb-compile]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.checkpoint_every_n_layers=2 train.compile_layers=true train.per_device_train_batch_size=1 train.max_length=4096 lora.lora_r=64 lora.lora_alpha=128"
  [unsloth]="train.backend=unsloth"
  [unsloth-fused]="train.backend=unsloth train.optim=adamw_torch_fused"
  [unsloth-fused-embcpu]="train.backend=unsloth train.optim=adamw_torch_fused train.input_embeddings_on_cpu=true"
  [unsloth-fused-embcpu-noamp]="train.backend=unsloth train.optim=adamw_torch_fused train.input_embeddings_on_cpu=true train.mixed_precision='no'"  # quoted: YAML reads a bare no as false
  [unsloth-fused-embcpu-gc]="train.backend=unsloth train.optim=adamw_torch_fused train.input_embeddings_on_cpu=true train.gc_every_n_steps=10"
  [tf-varlen-fused-compile-gc]="model.attn_implementation=varlen train.optim=adamw_torch_fused train.compile_layers=true train.gc_every_n_steps=10"
  [unsloth-pad]="train.backend=unsloth train.pad_to_multiple_of=4096"
)
# TAG names the outputs of a second pass, e.g. TAG=-cppwrapper TORCHINDUCTOR_CPP_WRAPPER=1 bash bench/...
for lever in ${RUNS:-tf-sdpa tf-varlen tf-varlen-liger unsloth}; do
  name=$lever${TAG:-}
  rm -rf "/tmp/c-$name" "/tmp/a-$name"  # a run of an earlier pass must not be resumed
  # shellcheck disable=SC2086
  python3 bench/set_params.py "/tmp/$name.yaml" "${common[@]}" ${LEVERS[$lever]}
  # HOST_LOAD=1: host_<run>.txt, the CPU each of the run's threads used and waited for (bench/host_load.py)
  wrap=(); [ "${HOST_LOAD:-0}" = 1 ] && wrap=(python3 bench/host_load.py --out "$OUT/host_$name.txt" --series "$OUT/host_$name.csv" --tail "${HOST_TAIL:-15}" --)
  "${wrap[@]}" timeout "${RUN_TIMEOUT:-240}" python3 -m kotune train --params "/tmp/$name.yaml" --data /tmp/processed \
    --adapter "/tmp/a-$name" --checkpoints "/tmp/c-$name" --tensorboard "/tmp/tb-$name" \
    --metrics "$OUT/kotune_$name.json" --plots "/tmp/p-$name" > "$OUT/log_$name.txt" 2>&1
  echo "$name: exit $?"; grep -E "kotune.train: done|Error|error" "$OUT/log_$name.txt" | tail -3
  cp "/tmp/p-$name/steps.csv" "$OUT/steps_$name.csv" 2>/dev/null
done

if [ -n "${PROFILE:-}" ]; then  # e.g. PROFILE=tf-sdpa: torch.profiler tables of a few steady steps
  # shellcheck disable=SC2086
  python3 bench/set_params.py /tmp/prof.yaml "${common[@]}" train.max_steps=10 ${LEVERS[$PROFILE]}
  timeout 240 python3 bench/profile_train.py --params /tmp/prof.yaml --data /tmp/processed --adapter /tmp/a-prof \
    --checkpoints /tmp/c-prof --tensorboard /tmp/tb-prof --metrics /tmp/m-prof.json --plots /tmp/p-prof \
    2>&1 | grep -v "^{" > "$OUT/profile_$PROFILE.txt"
  echo "profile $PROFILE: exit $?"
fi

if [ "${PEERS:-0}" != 0 ]; then
  # Unsloth's own numbers in this call: random full-length tokens (PEERS=1), then packed real-length KoAlpaca
  # (PEERS=1 or PEERS=packed, which skips the full-length shapes).
  if [ "$PEERS" != packed ]; then
    OUT=$OUT timeout 240 python3 .whl/peer_baselines.py unsloth 2>&1 | grep -E "^unsloth|Error" | tail -4
  fi
  mkdir -p /tmp/rl && cp /tmp/tok/tokenizer.json /tmp/raw/ko_alpaca_data.json /tmp/rl/
  OUT=$OUT DATA_DIR=/tmp/rl BS=2 PACK=1 timeout 240 python3 .whl/real_length_sft.py unsloth 2>&1 | grep -E "RESULT|Error" | tail -3
fi
python3 bench/summarize.py "$OUT" | tee "$OUT/table.md"
