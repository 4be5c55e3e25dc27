#!/usr/bin/env bash
# kotune's train stage on an 8B Llama-3-shaped model (random weights, real Llama 3 tokenizer) and real
# Korean data, beside the seed recipe measured in the same run. Run on the GPU device from the repo root:
#
#   bash bench/gpu_train.sh
#
# It expects in .whl/ (ignored, carried) what bench/device_env.sh lists.
# Writes the JSON figures under $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/kotune-bench}
mkdir -p "$OUT" /tmp/raw /tmp/tok
source bench/device_env.sh  # .whl/ packages on PYTHONPATH, tokenizer in /tmp/tok, KoAlpaca in /tmp/raw
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, trl, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'bitsandbytes', bitsandbytes.__version__)" | tee -a "$OUT/gpu.txt"

if [ "${GPU_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
fi

python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b

# The seed recipe's shape: nf4 + double quant + bf16 compute, LoRA r16/alpha16 on the 7 projections,
# bs 2 x 2048, gradient checkpointing, AdamW 8-bit.
common=(model.name_or_path=/tmp/l8b model.pad_token='<|reserved_special_token_250|>' model.torch_dtype=bfloat16
        quant.bnb_4bit_compute_dtype=bfloat16 lora.lora_alpha=16 lora.lora_dropout=0.0
        train.device=cuda train.per_device_train_batch_size=2 train.gradient_checkpointing=true
        train.optim=adamw_8bit train.max_length=2048 train.learning_rate=2e-4 train.warmup_steps=0.1
        train.max_steps=${STEPS:-30} train.logging_steps=1 train.eval_steps=100000 train.save_steps=100000
        data.max_tokens=2048 data.eval_size=0.01)
python3 bench/set_params.py /tmp/packed.yaml "${common[@]}" train.packing=true
python3 bench/set_params.py /tmp/padded.yaml "${common[@]}" train.packing=false
python3 -m kotune prepare --params /tmp/packed.yaml --raw /tmp/raw --out /tmp/processed \
  --metrics "$OUT/data.json" --plot /tmp/lengths.csv
for run in packed padded; do
  python3 -m kotune train --params /tmp/$run.yaml --data /tmp/processed --adapter /tmp/adapter-$run \
    --checkpoints /tmp/checkpoints-$run --tensorboard /tmp/tb-$run --metrics "$OUT/kotune_$run.json" \
    --plots /tmp/plots-$run 2>&1 | grep -v "^{" | tail -8
done
ls -la /tmp/adapter-packed | tee "$OUT/adapter_files.txt"

if [ -f .whl/peer_baselines.py ]; then
  OUT=$OUT python3 .whl/peer_baselines.py seed 2>&1 | tail -4
fi
