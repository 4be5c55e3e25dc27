"""Tables of a bench run: python bench/summarize.py OUT_DIR > table.md

Reads every `kotune_*.json` (metrics/train.json of a `kotune train` run) in OUT_DIR and prints steady
tokens/s (real tokens), whole-run tokens/s without and with padding, allocated and reserved peak memory
and MFU: 4 · N_mm FLOPs per trained token (forward 2·N, backward through frozen weights 2·N; LoRA's own
FLOPs are under 1%) over the GPU's dense bf16 peak. With `steps_*.csv`, it
compares each run's per-step loss with the first run's (speed must not change the math). The peers'
JSON from ../shared/bench (unsloth.json, real-*.json) are listed below when present.
"""

import csv
import json
import sys
from pathlib import Path

N_MM_8B = 6.98e9  # matmul parameters of Llama-3-8B (all projections + lm_head, no embedding lookup)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def losses(path: Path) -> list[float]:
    with path.open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def loss_gap(out: Path, name: str, reference: str) -> str:
    mine, theirs = out / f"steps_{name}.csv", out / f"steps_{reference}.csv"
    if name == reference or not (mine.exists() and theirs.exists()):
        return "reference" if name == reference else ""
    pairs = list(zip(losses(mine), losses(theirs), strict=False))
    return f"{max(abs(a - b) / abs(b) for a, b in pairs):.2%} max over {len(pairs)} steps" if pairs else ""


def optional(metrics: dict, key: str, spec: str) -> str:
    """A figure that runs of older code (or the CPU) do not have: blank then."""
    value = metrics.get(key)
    return "" if value is None else format(value, spec)


def main() -> None:
    out = Path(sys.argv[1])
    gpu = (out / "gpu.txt").read_text() if (out / "gpu.txt").exists() else "H100"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), 989e12)
    runs = sorted(out.glob("kotune_*.json"), key=lambda p: p.stat().st_mtime)
    reference = runs[0].stem.removeprefix("kotune_") if runs else ""
    print("| run | steady tok/s | whole-run tok/s | whole-run, padding included | peak GiB | reserved GiB | MFU "
          "| load s | loss vs first run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in runs:
        m, name = json.loads(path.read_text()), path.stem.removeprefix("kotune_")
        steady = m.get("steady_tokens_per_second") or 0
        padded = optional(m, "padded_tokens_per_second", ",.0f")
        reserved = optional(m, "peak_reserved_memory_gib", ".2f")
        print(f"| {name} | {steady:,.0f} | {m['tokens_per_second']:,.0f} | {padded} | {m['peak_memory_gib']:.2f} "
              f"| {reserved} | {steady * 4 * N_MM_8B / peak:.1%} | {m['model_load_seconds']} "
              f"| {loss_gap(out, name, reference)} |")
    peers = sorted(out.glob("unsloth*.json")) + sorted(out.glob("seed*.json")) + sorted(out.glob("real-*.json"))
    if peers:
        print("\n| peer run (../shared/bench) | tok/s | peak GiB |\n|---|---|---|")
    for path in peers:
        m = json.loads(path.read_text())
        for r in m.get("runs", [m]):
            packed = ", packed" if r.get("packing") else ""
            shape = f"bs {r['bs']} × {r['seq']}" if "seq" in r else f"bs {r['bs']}{packed}"
            speed = r.get("tok_s") or r.get("nonpad_tok_s") or r.get("fail", "")
            print(f"| {path.stem} {shape} | {speed:,} | {r.get('peak_gib', '')} |" if isinstance(speed, int)
                  else f"| {path.stem} {shape} | {speed} | |")


if __name__ == "__main__":
    main()
