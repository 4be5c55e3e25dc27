#!/usr/bin/env bash
# Speed levers of the train stage, one at a time, on the 8B Llama-3 shape and KoAlpaca packed into
# 2,048-token rows (same carried .whl/ as gpu_train.sh, plus liger_kernel). Writes kotune_<run>.json
# and table.md under $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/kotune-bench}
mkdir -p "$OUT" /tmp/raw /tmp/tok
source bench/device_env.sh  # .whl/ packages on PYTHONPATH, tokenizer in /tmp/tok, KoAlpaca in /tmp/raw
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt"
python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b
common=(model.name_or_path=/tmp/l8b model.pad_token='<|reserved_special_token_250|>' model.torch_dtype=bfloat16
        quant.bnb_4bit_compute_dtype=bfloat16 lora.lora_alpha=16 lora.lora_dropout=0.0 train.device=cuda
        train.gradient_checkpointing=true train.optim=adamw_8bit train.max_length=2048 train.packing=true
        train.learning_rate=2e-4 train.warmup_steps=0.1 train.max_steps=${STEPS:-20} train.logging_steps=1
        train.eval_steps=100000 train.save_steps=100000 data.max_tokens=2048 data.eval_size=0.01)
python3 bench/set_params.py /tmp/base.yaml "${common[@]}"
python3 -m kotune prepare --params /tmp/base.yaml --raw /tmp/raw --out /tmp/processed --metrics /tmp/d.json \
  --plot /tmp/l.csv 2>&1 | grep kept
run() {  # name, overrides...
  local name=$1; shift
  python3 bench/set_params.py "/tmp/$name.yaml" "${common[@]}" "$@"
  python3 -m kotune train --params "/tmp/$name.yaml" --data /tmp/processed --adapter "/tmp/a-$name" \
    --checkpoints "/tmp/c-$name" --tensorboard "/tmp/tb-$name" --metrics "$OUT/kotune_$name.json" \
    --plots "/tmp/p-$name" 2>&1 | grep -E "kotune.train: done|Error|error" || true
  cp "/tmp/p-$name/steps.csv" "$OUT/steps_$name.csv" 2>/dev/null || true
}
run bs2 train.per_device_train_batch_size=2
run bs2-liger train.per_device_train_batch_size=2 train.use_liger_kernel=true
run bs8-liger train.per_device_train_batch_size=8 train.use_liger_kernel=true
python3 bench/summarize.py "$OUT" | tee "$OUT/table.md"
