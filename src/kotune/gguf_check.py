"""Check a written GGUF file, and reach llama.cpp (through llama-cpp-python or `llama-quantize`) when installed.

- `read_back`: gguf's reader finds the tensors as planned (names, shapes, types) and the metadata as the
  merged model has it: architecture and sizes, every token, the merges, BOS/EOS ids, the chat template.
- `llama_cpp_predictions`: llama.cpp's top-1 next token at every position of some texts, fed the Hugging Face
  token ids, and its own tokenization of the texts. It runs in a child process (`python -m kotune.gguf_check`)
  so that a crash inside the C++ library is reported, not fatal, and its memory goes back when it ends.
- `k_quantize`: q4_k_m, q5_k_m, q6_k, which gguf.quants cannot write, by llama.cpp's own quantizer.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf

from kotune.errors import KotuneError
from kotune.gguf_export import Planned, chat_template_for_gguf

K_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}  # as llama-quantize names them


def _field(reader: gguf.GGUFReader, key: str):
    found = reader.get_field(key)
    return None if found is None else found.contents()


def read_back(path: Path, planned: list[Planned], tokenizer, config: dict, types: bool = True) -> dict:
    """Raises KotuneError on the first difference; returns what the file holds, for the metrics. `types`: False
    for llama.cpp's k-quants, whose quantizer picks each tensor's type itself."""
    reader = gguf.GGUFReader(path)
    found = {t.name: (tuple(int(d) for d in reversed(t.shape)), t.tensor_type if types else None)
             for t in reader.tensors}
    wanted = {p.name: (p.shape, p.qtype if types else None) for p in planned}
    if found != wanted:
        differ = sorted(set(found.items()) ^ set(wanted.items()))[:4]
        raise KotuneError(f"{path}: tensors read back differ from those written: {differ}")
    if unnamed := [name for name in found if not name.endswith((".weight", ".bias"))]:
        raise KotuneError(f"{path}: llama.cpp loads tensors by <name>.weight or .bias: {unnamed}")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    expected = {
        "general.architecture": "llama", "llama.block_count": config["num_hidden_layers"],
        "llama.embedding_length": config["hidden_size"], "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id, "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.chat_template": chat_template_for_gguf(tokenizer.chat_template),
    }
    for key, value in expected.items():
        if _field(reader, key) != value:
            raise KotuneError(f"{path}: {key} is {_field(reader, key)!r}, expected {value!r}")
    if _field(reader, "tokenizer.ggml.tokens")[: len(tokens)] != tokens:
        raise KotuneError(f"{path}: the token list differs from the tokenizer's")
    merges = len(reader.get_field("tokenizer.ggml.merges").data)
    return {"tensors": len(reader.tensors), "tokens": len(_field(reader, "tokenizer.ggml.tokens")), "merges": merges,
            "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _child(command: list[str], payload: dict, what: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "kotune.gguf_check", *command], input=json.dumps(payload),
                         capture_output=True, text=True)
    if run.returncode != 0:
        why = f"signal {-run.returncode}" if run.returncode < 0 else f"exit {run.returncode}"
        said = [line for line in run.stderr.splitlines() if "error" in line.lower()] or run.stderr.splitlines()
        raise KotuneError(f"llama.cpp failed on {what} ({why}): {' / '.join(said[-2:])[-400:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def llama_cpp_predictions(path: Path, texts: list[str], ids: list[list[int]]) -> dict:
    """{"tokens": llama.cpp's tokenization of each text, "top1": its argmax at each position of each `ids`}."""
    return _child(["predict", str(path)], {"texts": texts, "ids": ids}, path.name)


def k_quantizer() -> str | None:
    """`llama-quantize` on PATH, else llama-cpp-python's binding of the same code, else None."""
    return shutil.which("llama-quantize") or ("llama-cpp-python" if llama_cpp_available() else None)


def k_quantize(source: Path, target: Path, kind: str, tool: str) -> None:
    if tool == "llama-cpp-python":
        _child(["quantize", str(source), str(target), K_QUANTS[kind]], {}, source.name)
        return
    run = subprocess.run([tool, str(source), str(target), K_QUANTS[kind]], capture_output=True, text=True)
    if run.returncode != 0:
        raise KotuneError(f"{tool} {source.name} -> {kind} failed: {run.stderr.strip()[-400:]}")


def _predict(path: str, payload: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    longest = max(len(ids) for ids in payload["ids"])
    llm = Llama(model_path=path, n_ctx=longest + 8, n_batch=max(512, longest), logits_all=True,
                verbose=True)  # llama.cpp's log (stderr) names what went wrong; the parent keeps only errors
    tokens, top1 = [], []
    for text, ids in zip(payload["texts"], payload["ids"], strict=True):
        tokens.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        llm.reset()
        llm.eval(ids)
        top1.append(np.asarray(llm.scores[: len(ids)]).argmax(-1).tolist())
    return {"tokens": tokens, "top1": top1}


def _quantize(source: str, target: str, name: str) -> dict:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf.LlamaFileType[f"MOSTLY_{name}"]
    status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")
    return {"status": status}


if __name__ == "__main__":  # the child process: a JSON payload on stdin, a JSON line on stdout
    given = json.loads(sys.stdin.read() or "{}")
    if sys.argv[1] == "predict":
        result = _predict(sys.argv[2], given)
    else:
        result = _quantize(sys.argv[2], sys.argv[3], sys.argv[4])
    print(json.dumps(result))
