"""Table of kotune train-stage runs: python bench/summarize.py OUT_DIR > table.md

Reads every `kotune_*.json` (metrics/train.json of a run) in OUT_DIR and prints steady tokens/s, peak
memory and MFU: 4 · N_mm FLOPs per trained token (forward 2·N, backward through frozen weights 2·N;
LoRA's own FLOPs are under 1%) over the GPU's dense bf16 peak.
"""

import json
import sys
from pathlib import Path

N_MM_8B = 6.98e9  # matmul parameters of Llama-3-8B (all projections + lm_head, no embedding lookup)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def main() -> None:
    out = Path(sys.argv[1])
    gpu = (out / "gpu.txt").read_text() if (out / "gpu.txt").exists() else "H100"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), 989e12)
    print("| run | steady tok/s | whole-run tok/s | peak GiB | MFU | load s |")
    print("|---|---|---|---|---|---|")
    for path in sorted(out.glob("kotune_*.json")):
        m = json.loads(path.read_text())
        steady = m.get("steady_tokens_per_second") or 0
        print(f"| {path.stem.removeprefix('kotune_')} | {steady:,.0f} | {m['tokens_per_second']:,.0f} | "
              f"{m['peak_memory_gib']:.2f} | {steady * 4 * N_MM_8B / peak:.1%} | {m['model_load_seconds']} |")


if __name__ == "__main__":
    main()
