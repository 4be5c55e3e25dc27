#!/usr/bin/env bash
# The whole pipeline after fetch on an 8B Llama-3-shaped model (random weights, real Llama 3 tokenizer)
# and KoAlpaca, on the GPU device: prepare → train (a few steps) → merge (bf16, dequantized base) →
# evaluate → publish (dry run). Same carried .whl/ as bench/gpu_train.sh. Figures land in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/kotune-bench}
mkdir -p "$OUT" /tmp/raw /tmp/tok
source bench/device_env.sh  # .whl/ packages on PYTHONPATH, tokenizer in /tmp/tok, KoAlpaca in /tmp/raw
python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b
python3 bench/set_params.py /tmp/p.yaml model.name_or_path=/tmp/l8b model.pad_token='<|reserved_special_token_250|>' \
  model.torch_dtype=bfloat16 quant.bnb_4bit_compute_dtype=bfloat16 train.device=cuda train.packing=true \
  train.per_device_train_batch_size=2 train.gradient_checkpointing=true train.optim=adamw_8bit \
  train.max_length=2048 train.learning_rate=2e-4 train.max_steps=${STEPS:-10} train.logging_steps=1 \
  train.eval_steps=100000 train.save_steps=100000 data.max_tokens=2048 data.eval_size=0.01 \
  eval.max_new_tokens=64 eval.mc_limit=40 merge.max_shard_size=5GB
python3 -m kotune prepare --params /tmp/p.yaml --raw /tmp/raw --out /tmp/processed --metrics "$OUT/data.json" \
  --plot /tmp/lengths.csv 2>&1 | grep "kept"
python3 -m kotune train --params /tmp/p.yaml --data /tmp/processed --adapter /tmp/adapter --checkpoints /tmp/ckpt \
  --tensorboard /tmp/tb --metrics "$OUT/train.json" --plots /tmp/plots 2>&1 | grep "kotune.train: done"
# fp32 first: proves the merge itself is faithful at 8B scale (bf16 rounding of W + BA hides a tiny
# 10-step adapter's delta on random weights, so the bf16 run is given an explicit tolerance).
python3 - <<'PY'
import yaml
p = yaml.safe_load(open("/tmp/p.yaml")); p["merge"]["dtype"] = "float32"
yaml.safe_dump(p, open("/tmp/p32.yaml", "w"), allow_unicode=True)
p["merge"]["dtype"] = "bfloat16"; p["merge"]["tolerance"] = 4.0
yaml.safe_dump(p, open("/tmp/p.yaml", "w"), allow_unicode=True)
PY
python3 -m kotune merge --params /tmp/p32.yaml --adapter /tmp/adapter --data /tmp/processed --out /tmp/merged32 \
  --metrics "$OUT/merge_fp32.json" 2>&1 | grep -E "merged into|error" || true
rm -rf /tmp/merged32
python3 -m kotune merge --params /tmp/p.yaml --adapter /tmp/adapter --data /tmp/processed --out /tmp/merged \
  --metrics "$OUT/merge.json" 2>&1 | grep -E "merged into|error"
ls -la /tmp/merged | tee "$OUT/merged_files.txt"
python3 -m kotune evaluate --params /tmp/p.yaml --data /tmp/processed --adapter /tmp/adapter --merged /tmp/merged \
  --tensorboard /tmp/tb --metrics "$OUT/eval.json" --reports "$OUT" 2>&1 | grep -E "eval loss|error"
python3 -m kotune publish --params /tmp/p.yaml --merged /tmp/merged --adapter /tmp/adapter --eval "$OUT/eval.json" \
  --train-metrics "$OUT/train.json" --out /tmp/publish 2>&1 | grep -E "dry run|refused|error" | cut -c1-400
cp /tmp/publish/README.md "$OUT/model_card.md"
