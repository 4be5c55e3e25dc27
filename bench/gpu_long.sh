#!/usr/bin/env bash
# Long context through the real `kotune train`: one 8B Llama-3-shaped model (random weights, position
# table widened to 262,144), one Korean text record per context length (KoAlpaca outputs joined, cut
# to the length by the trainer), micro-batch 1, a few steps each. Run on the GPU device:
#
#   CTX="131072 262144" LEVER="train.backend=unsloth" bash bench/gpu_long.sh
#
# TAG names a second pass's outputs (kotune_long-<ctx><TAG>.json).
# Writes kotune_long-<ctx>.json (the stage's metrics: steady tokens/s, peak memory) under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/kotune-bench}
mkdir -p "$OUT"
source bench/device_env.sh
[ -d /tmp/l8b ] || python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b
python3 - <<'PY'
import json
from pathlib import Path
config = Path("/tmp/l8b/config.json")
values = json.loads(config.read_text())
values["max_position_embeddings"] = 262144  # the weights do not depend on it; RoPE is computed per position
config.write_text(json.dumps(values, indent=1))
rows = json.loads(Path("/tmp/raw/ko_alpaca_data.json").read_text())
# 1.32M characters, 757k Llama 3 tokens (1.75 characters per token)
text = "\n\n".join(f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows)
folder = Path("/tmp/long"); folder.mkdir(exist_ok=True)
chunks = [text[i:i + 600_000] for i in range(0, len(text) - 600_000 + 1, 600_000)]  # ~343k tokens each
print(f"{len(chunks)} text records of 600k characters", flush=True)
(folder / "train.jsonl").write_text("".join(json.dumps({"text": c}, ensure_ascii=False) + "\n" for c in chunks))
(folder / "eval.jsonl").write_text("")
PY
for ctx in ${CTX:-131072}; do
  run=long-$ctx${TAG:-}
  rm -rf "/tmp/c-$run" "/tmp/a-$run"
  # shellcheck disable=SC2086
  python3 bench/set_params.py "/tmp/$run.yaml" model.name_or_path=/tmp/l8b \
    model.pad_token='<|reserved_special_token_250|>' model.torch_dtype=bfloat16 quant.bnb_4bit_compute_dtype=bfloat16 \
    lora.lora_alpha=16 lora.lora_dropout=0.0 train.device=cuda train.gradient_checkpointing=true \
    train.optim=adamw_8bit train.max_length="$ctx" data.max_tokens="$ctx" train.packing=false \
    train.per_device_train_batch_size=1 train.max_steps="${STEPS:-4}" train.logging_steps=1 \
    train.eval_steps=100000 train.save_steps=100000 ${LEVER:-}
  timeout "${RUN_TIMEOUT:-300}" python3 -m kotune train --params "/tmp/$run.yaml" --data /tmp/long \
    --adapter "/tmp/a-$run" --checkpoints "/tmp/c-$run" --tensorboard "/tmp/tb-$run" \
    --metrics "$OUT/kotune_$run.json" --plots "/tmp/p-$run" > "$OUT/log_$run.txt" 2>&1
  echo "$run: exit $?"; grep -E "done:|Error|error|peak_memory" "$OUT/log_$run.txt" | tail -4 | cut -c1-300
done
