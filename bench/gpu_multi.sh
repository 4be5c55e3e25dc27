#!/usr/bin/env bash
# Issue 9: the real `kotune train` on two GPUs (the device tool's nvidia-h200-x2 kind), DDP and FSDP-QLoRA,
# against one GPU in the same call, on the 8B Llama-3 shape (random weights, real tokenizer) and KoAlpaca
# packed into 2,048-token rows. Every run trains on the same batch per step (4 rows x 2,048 tokens: one GPU
# with gradient_accumulation_steps 2, two GPUs with 1), so the per-step losses must agree. Then a SIGTERM
# and a resume of each two-GPU mode. From the repo root, with .whl/ carried as bench/device_env.sh lists
# (unsloth-site.tgz from ../shared/wheels brings bitsandbytes, trl and datasets):
#
#   RUNS="one-gpu ddp fsdp" RESUME=0 bash bench/gpu_multi.sh   # a first call: about 7 minutes
#   RUNS="" RESUME=1 bash bench/gpu_multi.sh                    # a second call, on the warm machine
#
# (A call may run 10 minutes; the second reuses the model and data the first left in /tmp.)
# Writes multi.md (tokens/s per GPU, peak memory per GPU, per-step loss against one-gpu), resume.txt and
# raw.tgz under $OUT (a few files: the device tool brings back eight at most). raw.tgz holds, per run,
# kotune_<run>.json (the stage's metrics: tokens/s of all GPUs together, the largest peak of any rank),
# steps_<run>.csv, smi_<run>.csv (nvidia-smi memory of each GPU, every second) and log_<run>.txt.
set -uo pipefail
OUT=${OUT:-/tmp/kotune-bench}
RAW=$OUT/raw
mkdir -p "$RAW"
source bench/device_env.sh
# The device's rule for its multi-GPU kinds: NVLink multicast stays off, in every process started here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RAW/gpu.txt"
python3 -c "import torch, transformers, peft, trl, accelerate, bitsandbytes; print(torch.cuda.device_count(), 'GPUs;', ' '.join(f'{m.__name__} {m.__version__}' for m in (torch, transformers, peft, trl, accelerate, bitsandbytes)))" | tee -a "$RAW/gpu.txt"
[ -f /tmp/l8b/config.json ] || python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b

# The shape of bench/gpu_backends.sh's fastest plain run (varlen attention, fused AdamW, checkpointing).
common=(model.name_or_path=/tmp/l8b model.pad_token='<|reserved_special_token_250|>' model.torch_dtype=bfloat16
        model.attn_implementation=varlen quant.bnb_4bit_compute_dtype=bfloat16 lora.lora_alpha=16
        lora.lora_dropout=0.0 train.device=cuda train.gradient_checkpointing=true train.optim=adamw_torch_fused
        train.max_length=2048 train.packing=true train.per_device_train_batch_size=2 train.learning_rate=2e-4
        train.warmup_steps=0.1 train.logging_steps=1 train.eval_steps=100000 data.max_tokens=2048
        data.eval_size=0.01 data.max_records=${RECORDS:-3000})
python3 bench/set_params.py /tmp/base.yaml "${common[@]}"
[ -f /tmp/processed/train.jsonl ] || python3 -m kotune prepare --params /tmp/base.yaml --raw /tmp/raw \
  --out /tmp/processed --metrics /tmp/d.json --plot /tmp/l.csv 2>&1 | grep kept

declare -A MODES=(
  [one-gpu]="train.num_processes=1 train.gradient_accumulation_steps=2"
  [ddp]="train.num_processes=2 train.distributed=ddp"
  [fsdp]="train.num_processes=2 train.distributed=fsdp-qlora quant.bnb_4bit_quant_storage=bfloat16"
)

params() {  # name, max_steps, save_steps: writes /tmp/<name>.yaml
  # shellcheck disable=SC2086
  python3 bench/set_params.py "/tmp/$1.yaml" "${common[@]}" ${MODES[${1%-resume}]} train.max_steps="$2" \
    train.save_steps="$3"
}
stage_args() {
  echo --params "/tmp/$1.yaml" --data /tmp/processed --adapter "/tmp/a-$1" --checkpoints "/tmp/c-$1" \
    --tensorboard "/tmp/tb-$1" --metrics "$RAW/kotune_$1.json" --plots "/tmp/p-$1"
}

for name in ${RUNS-one-gpu ddp fsdp}; do
  params "$name" "${STEPS:-30}" 100000
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -l 1 > "$RAW/smi_$name.csv" &
  smi=$!
  visible=$([ "$name" = one-gpu ] && echo 0 || echo 0,1)
  # shellcheck disable=SC2046
  CUDA_VISIBLE_DEVICES=$visible timeout "${RUN_TIMEOUT:-240}" python3 -m kotune train $(stage_args "$name") \
    > "$RAW/log_$name.txt" 2>&1
  echo "$name: exit $?"; grep -E "kotune.train: done|Error|error:" "$RAW/log_$name.txt" | tail -3
  kill "$smi"
  cp "/tmp/p-$name/steps.csv" "$RAW/steps_$name.csv" 2>/dev/null
done

if [ "${RESUME:-1}" = 1 ]; then  # SIGTERM to `kotune train` once checkpoint-4 is marked; the same command resumes
  for mode in ddp fsdp; do
    name=$mode-resume
    params "$name" 12 4
    # shellcheck disable=SC2046
    python3 -m kotune train $(stage_args "$name") > "$RAW/log_$name.txt" 2>&1 &
    pid=$!
    for _ in $(seq 480); do [ -f "/tmp/c-$name/checkpoint-4/kotune_checkpoint.json" ] && break; sleep 0.5; done
    kill -TERM "$pid"
    wait "$pid"; first=$?
    # shellcheck disable=SC2046
    timeout 180 python3 -m kotune train $(stage_args "$name") >> "$RAW/log_$name.txt" 2>&1; second=$?
    echo "$name: stopped with $first (expect 143), resumed with $second (expect 0):" \
      "$(python3 -c "import json; print(json.load(open('$RAW/kotune_$name.json')))" 2>&1)" | tee -a "$OUT/resume.txt"
    ls "/tmp/tb-$name" "/tmp/a-$name" "/tmp/c-$name"/checkpoint-* >> "$OUT/resume.txt" 2>&1
  done
fi

[ -n "${RUNS-one-gpu ddp fsdp}" ] && python3 bench/summarize_multi.py "$RAW" | tee "$OUT/multi.md"
tar czf "$OUT/raw.tgz" -C "$OUT" raw && rm -rf "$RAW"
