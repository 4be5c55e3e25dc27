"""The table of bench/gpu_multi.sh: python bench/summarize_multi.py RAW_DIR > multi.md

Per run (one-gpu, ddp, fsdp): steady tokens/s of all GPUs and per GPU (kotune_<run>.json, the train
stage's metrics), the allocator's peak of the busiest rank, nvidia-smi's largest reading of each GPU
(smi_<run>.csv), and the largest per-step loss gap against one-gpu (steps_<run>.csv: every run trains
on the same 4 rows per step, so the math must agree).
"""

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

RUNS = ("one-gpu", "ddp", "fsdp")


def losses(raw: Path, name: str) -> list[float]:
    path = raw / f"steps_{name}.csv"
    return [float(row["loss"]) for row in csv.DictReader(path.open())] if path.exists() else []


def smi_peaks(path: Path) -> str:
    """Largest memory.used of each GPU, GiB (nvidia-smi counts the CUDA context and allocator cache too)."""
    peaks = defaultdict(float)
    for index, used in csv.reader(path.open()):
        peaks[index.strip()] = max(peaks[index.strip()], float(used) / 1024)
    return ", ".join(f"{used:.1f}" for _, used in sorted(peaks.items()))


def row(raw: Path, name: str) -> str:
    path = raw / f"kotune_{name}.json"
    if not path.exists():
        return f"| {name} | did not finish: see log_{name}.txt in raw.tgz | | | | | |"
    metrics = json.loads(path.read_text())
    gaps = [abs(a - b) / abs(b) for a, b in zip(losses(raw, name), losses(raw, "one-gpu"), strict=False)]
    gap = f"{max(gaps):.2%} over {len(gaps)} steps" if gaps and name != "one-gpu" else ""
    steady, processes = metrics["steady_tokens_per_second"] or 0, metrics["processes"]
    return (f"| {name} | {processes} | {steady:,.0f} | {steady / processes:,.0f} | {metrics['peak_memory_gib']} "
            f"| {smi_peaks(raw / f'smi_{name}.csv')} | {gap} |")


def main() -> None:
    raw = Path(sys.argv[1])
    print((raw / "gpu.txt").read_text())
    print("| run | GPUs | steady tok/s, all GPUs | per GPU | peak GiB (allocator, busiest rank) "
          "| nvidia-smi max GiB, each GPU | largest loss gap vs one-gpu |")
    print("|---|---|---|---|---|---|---|")
    for name in RUNS:
        print(row(raw, name))


if __name__ == "__main__":
    main()
