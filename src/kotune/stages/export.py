"""export: GGUF files of the merged model for llama.cpp and Ollama, one per type in export.gguf.

    kotune export --params params.yaml --merged models/merged --data data/processed \
        --out models/gguf --metrics metrics/export.json

Writes <out>/<export.name>-<type>.gguf, a Modelfile for `ollama create` and a README.md; with export.gguf
empty (the default), only the README saying so, so DVC still gets its output. f32/f16/bf16/q8_0 are written by
the gguf package (kotune.gguf_export); q4_k_m/q5_k_m/q6_k are quantized from a lossless GGUF by llama.cpp
(`llama-quantize` on PATH, or llama-cpp-python), which is checked before anything is written.
Each file is read back with gguf's reader. With llama-cpp-python installed, llama.cpp also runs each file on
export.verify_examples eval conversations: it must tokenize them as the merged model's tokenizer does and,
for f32/f16/bf16, predict its top-1 next token at >= export.min_top1_agreement of the positions.
"""

from __future__ import annotations

import argparse
import logging
import time
from importlib import metadata
from pathlib import Path

from kotune import gguf_check
from kotune.atomic import atomic_dir, atomic_file, write_json
from kotune.config import GGUF_K_QUANTS, ExportSection, load_section
from kotune.errors import KotuneError
from kotune.gguf_export import TYPES, Planned, read_config, write_gguf
from kotune.logs import log_config
from kotune.stages import parse_stage_args
from kotune.template import END_OF_TURN, stop_token_ids
from kotune.training import verification_texts

log = logging.getLogger("kotune.export")
LOSSLESS = ("f32", "f16", "bf16")
OLLAMA_PREFERENCE = ("q4_k_m", "q5_k_m", "q8_0", "q6_k", "f16", "bf16", "f32")  # the Modelfile's FROM
MERGED_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
VERIFY_TOKENS = 512  # positions compared per conversation: plenty, and bounded for an 8B model on a CPU
# Llama 3's chat template in Ollama's Go template syntax: the system prompt once, then each turn; Ollama and
# llama.cpp add <|begin_of_text|> themselves (tokenizer.ggml.add_bos_token).
OLLAMA_LLAMA3_TEMPLATE = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune export", __doc__,
        merged="the merged model (models/merged)",
        data="folder with eval.jsonl, for llama.cpp's check",
        out="output folder for the GGUF files (models/gguf)",
        metrics="JSON metrics file",
    )


def k_quant_tool(export: ExportSection) -> str | None:
    """Fail before any work when a k-quant is asked for and llama.cpp's quantizer is missing."""
    if not any(kind in GGUF_K_QUANTS for kind in export.gguf):
        return None
    tool = gguf_check.k_quantizer()
    if tool is None:
        raise KotuneError("export.gguf asks for a k-quant (q4_k_m, q5_k_m, q6_k), which the gguf package cannot "
                          "write: put llama.cpp's `llama-quantize` on PATH or `pip install llama-cpp-python`, "
                          "or export f16/q8_0 only")
    return tool


def write_files(export: ExportSection, merged: Path, folder: Path,
                tool: str | None) -> dict[str, tuple[Path, list[Planned]]]:
    """Each requested type as <name>-<type>.gguf: type -> (path, the tensors as planned)."""
    written = {}
    for kind in [k for k in export.gguf if k in TYPES]:
        started, path = time.perf_counter(), folder / f"{export.name}-{kind}.gguf"
        written[kind] = path, write_gguf(merged, path, kind, export.name)
        log.info("wrote %s in %.1fs", path.name, time.perf_counter() - started)
    k_quants = [k for k in export.gguf if k in GGUF_K_QUANTS]
    if k_quants:
        source = next((written[k] for k in LOSSLESS if k in written), None)
        if source is None:  # a temporary lossless file in the merged model's own dtype
            lossless = MERGED_DTYPES.get(read_config(merged).get("dtype") or "", "f32")
            path = folder / f".{export.name}-{lossless}.gguf"
            source = path, write_gguf(merged, path, lossless, export.name)
        for kind in k_quants:
            started, path = time.perf_counter(), folder / f"{export.name}-{kind}.gguf"
            gguf_check.k_quantize(source[0], path, kind, tool)
            written[kind] = path, source[1]  # same tensors; llama.cpp picks each one's type
            log.info("quantized %s with %s in %.1fs", path.name, tool, time.perf_counter() - started)
        if source[0].name.startswith("."):
            source[0].unlink()
    return written


def verification_ids(tokenizer, data: Path, count: int) -> tuple[list[str], list[list[int]]]:
    texts = verification_texts(tokenizer, data, count)
    return texts, [tokenizer(text, add_special_tokens=False)["input_ids"][:VERIFY_TOKENS] for text in texts]


def reference_top1(merged: Path, ids: list[list[int]]) -> list[list[int]]:
    """The merged model's own next-token choices, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0].argmax(-1).tolist() for row in ids]


def agreement(path: Path, texts: list[str], ids: list[list[int]], reference: list[list[int]]) -> dict:
    try:
        got = gguf_check.llama_cpp_predictions(path, texts, ids)
    except KotuneError as exc:  # a crash inside llama.cpp says nothing certain about the file: report it
        log.warning("%s", exc)
        return {"llama_cpp_error": str(exc)[:300]}
    pairs = zip(reference, got["top1"], strict=True)
    same = sum(a == b for want, found in pairs for a, b in zip(want, found, strict=True))
    positions = sum(len(row) for row in reference)
    tokenized = sum(found == want for found, want in zip(got["tokens"], ids, strict=True))
    return {"top1_agreement": round(same / positions, 4), "positions": positions,
            "same_tokenization": round(tokenized / len(ids), 4)}


def verify(export: ExportSection, written: dict[str, tuple[Path, list[Planned]]], merged: Path, data: Path) -> dict:
    from transformers import AutoTokenizer

    tokenizer, config = AutoTokenizer.from_pretrained(merged), read_config(merged)
    files = {}
    for kind, (path, planned) in written.items():
        files[path.name] = {"type": kind, "bytes": path.stat().st_size,
                            "size_mib": round(path.stat().st_size / 2**20, 2),
                            **gguf_check.read_back(path, planned, tokenizer, config, types=kind in TYPES)}
    if export.verify_examples and gguf_check.llama_cpp_available():
        texts, ids = verification_ids(tokenizer, data, export.verify_examples)
        reference = reference_top1(merged, ids)
        for path, _ in written.values():
            files[path.name].update(agreement(path, texts, ids, reference))
    elif export.verify_examples:
        log.warning("llama-cpp-python is not installed: the files were read back with gguf's reader but not run "
                    "(pip install llama-cpp-python to compare llama.cpp's predictions with the merged model's)")
    stop = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
    template = tokenizer.chat_template or ""
    llama3 = END_OF_TURN in template and "<|start_header_id|>" in template
    return {"files": files, "stop": stop, "llama3_template": llama3}


def failures(export: ExportSection, files: dict) -> list[str]:
    problems = []
    for name, row in files.items():
        if row.get("same_tokenization", 1.0) < 1.0:
            problems.append(f"{name}: llama.cpp tokenizes {row['same_tokenization']:.0%} of the texts alike")
        if row["type"] in LOSSLESS and row.get("top1_agreement", 1.0) < export.min_top1_agreement:
            problems.append(f"{name}: top-1 agreement {row['top1_agreement']} < export.min_top1_agreement "
                            f"{export.min_top1_agreement}")
    return problems


def preferred(files: dict) -> str:
    """The file the Modelfile and the usage lines run: the smallest of the usual choices."""
    return min(files, key=lambda name: OLLAMA_PREFERENCE.index(files[name]["type"]))


def modelfile(gguf_name: str, stop: list[str], llama3_template: bool) -> str:
    """Ollama's recipe; without Llama 3's turn format, Ollama picks a template from the file's own."""
    lines = [f"FROM ./{gguf_name}"]
    if llama3_template:
        lines.append(f'TEMPLATE """{OLLAMA_LLAMA3_TEMPLATE}"""')
    return "\n".join(lines + [f'PARAMETER stop "{token}"' for token in stop]) + "\n"


def readme(export: ExportSection, files: dict) -> str:
    if not files:
        return ("# GGUF export\n\nNothing exported: `export.gguf` is empty in params.yaml. Set it, e.g.\n"
                "`export.gguf: [f16, q8_0]`, and run `dvc repro export`.\n")
    rows = "\n".join(f"| `{name}` | {row['type']} | {row['size_mib']} MiB |" for name, row in files.items())
    return (f"# GGUF export of `{export.name}`\n\n| file | type | size |\n|---|---|---|\n{rows}\n\n"
            f"    llama-cli -m {preferred(files)} -cnv\n"
            f"    ollama create {export.name} -f Modelfile && ollama run {export.name}\n")


def quiet_gguf_logs() -> None:
    """gguf logs each key it writes, and warns about Llama 3's `<BOS> A <BOS> B` pair template, which llama.cpp
    never uses; kotune's own lines say what was written."""
    logging.getLogger("gguf").setLevel(logging.WARNING)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)


def main(argv=None) -> None:
    args = parse_args(argv)
    export = load_section(args.params, "export")
    log_config(log, "export", export)
    quiet_gguf_logs()
    tool = k_quant_tool(export)
    started = time.perf_counter()
    with atomic_dir(args.out) as tmp:
        written = write_files(export, Path(args.merged), tmp, tool)
        checked = verify(export, written, Path(args.merged), Path(args.data)) if written else {"files": {}}
        files = checked["files"]
        if files:
            with atomic_file(tmp / "Modelfile") as handle:
                handle.write(modelfile(preferred(files), checked["stop"], checked["llama3_template"]))
        with atomic_file(tmp / "README.md") as handle:
            handle.write(readme(export, files))
    tools = {"gguf": metadata.version("gguf"), "k_quantizer": tool, "llama_cpp_python":
             metadata.version("llama_cpp_python") if gguf_check.llama_cpp_available() else None} if files else {}
    write_json(args.metrics, {"types": list(export.gguf), "files": files, **tools,
                              "seconds": round(time.perf_counter() - started, 1)})
    log.info("%s", "; ".join(f"{n}: {r['size_mib']} MiB, {r['tensors']} tensors, top-1 agreement "
                             f"{r.get('top1_agreement', 'not measured')}" for n, r in files.items())
             or "export.gguf is empty: nothing exported")
    if problems := failures(export, files):
        raise KotuneError("GGUF check failed: " + "; ".join(problems) + f" (see {args.metrics})")
