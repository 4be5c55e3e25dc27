"""publish: the release folder with its model card, and (publish.push: true) the upload to the Hub.

    kotune publish --params params.yaml --merged models/merged --adapter models/adapter \
        --eval metrics/eval.json --train-metrics metrics/train.json --gguf models/gguf --out models/publish

models/publish/ holds the merged model (hard links, not copies), the adapter under adapter/ when
publish.include_adapter, the export stage's GGUF files and Ollama Modelfile when it wrote any, and
README.md: a model card built with huggingface_hub's ModelCard with the eval results, how to run the GGUF
files, the resolved params and the provenance (git commit, dvc.lock hashes). The token comes
from the environment (HF_TOKEN) or `hf auth login`, never from params, and is written nowhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import yaml

from kotune.atomic import atomic_dir
from kotune.config import Params, load_params
from kotune.errors import KotuneError
from kotune.logs import log_config
from kotune.provenance import git_commit, provenance
from kotune.stages import parse_stage_args
from kotune.stages.fetch import is_hub_id
from kotune.typed_config import to_dict

log = logging.getLogger("kotune.publish")
LARGE_FOLDER_BYTES = 5 * 2**30
CARD_SECTIONS = ("data", "model", "quant", "lora", "train", "merge")


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune publish", __doc__,
        merged="merged",
        adapter="adapter",
        eval="metrics/eval.json",
        train_metrics="metrics/train.json",
        gguf="the export stage's folder (models/gguf): its .gguf files and Modelfile join the release",
        out="the release folder (models/publish)",
    )


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # a 16 GB model is not worth a second copy on the same disk
    except OSError:
        shutil.copyfile(source, target)


def hub_id_or_none(name: str) -> str | None:
    try:
        return name if is_hub_id(name) else None
    except KotuneError:
        return None


def gguf_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def gguf_section(folder: Path, model_id: str) -> str:
    """How to run the GGUF files: llama.cpp's chat CLI, and Ollama with the export stage's Modelfile."""
    files = gguf_files(folder)
    if not files:
        return ""
    rows = "\n".join(f"| `{p.name}` | {p.stem.rsplit('-', 1)[-1]} | {p.stat().st_size / 2**20:.1f} MiB |"
                     for p in files)
    modelfile = (folder / "Modelfile").read_text(encoding="utf-8")
    chosen = modelfile.splitlines()[0].removeprefix("FROM ./")
    name = model_id.split("/")[-1].lower()
    return f"""## GGUF (llama.cpp, Ollama)

| file | type | size |
|---|---|---|
{rows}

[llama.cpp](https://github.com/ggml-org/llama.cpp): chat in the terminal, with the chat template stored in the file:

```sh
hf download {model_id} {chosen} Modelfile --local-dir .
llama-cli -m {chosen} -cnv
```

[Ollama](https://ollama.com): the `Modelfile` beside the files (the chat template in Ollama's syntax, the stop
tokens):

```
{modelfile.strip()}
```

```sh
ollama create {name} -f Modelfile
ollama run {name} "운영체제가 뭐하는 거야?"
```
"""


def model_card(params: Params, evals: dict, train_metrics: dict, origin: dict, gguf: Path):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = params.publish.repo_id or "kotune-model"
    results = [EvalResult(task_type="text-generation", dataset_type="held-out", dataset_name="kotune eval split",
                          metric_type="loss", metric_name=f"eval loss ({model})",
                          metric_value=evals[model]["eval_loss"])
               for model in ("merged", "base") if model in evals]
    data = ModelCardData(
        base_model=hub_id_or_none(params.model.name_or_path), datasets=hub_id_or_none(params.data.source),
        language=list(params.publish.language), license=params.publish.license or "other",
        library_name="transformers", pipeline_tag="text-generation", tags=list(params.publish.tags),
        model_name=name, eval_results=results)
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, model_id=name, evals=_eval_table(evals),
                                   base=params.model.name_or_path, source=params.data.source,
                                   gguf=gguf_section(gguf, name),
                                   train=json.dumps(train_metrics, indent=2), origin=_table(origin),
                                   params=yaml.safe_dump({s: to_dict(getattr(params, s)) for s in CARD_SECTIONS},
                                                         allow_unicode=True, sort_keys=False))


def _table(rows: dict) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in rows.items())


def _eval_table(evals: dict) -> str:
    models = [m for m in ("base", "adapter", "merged") if m in evals]
    lines = ["| model | eval loss | perplexity | EOS-stop rate |", "|---|---|---|---|"]
    for m in models:
        row = evals[m]
        lines.append(f"| {m} | {row.get('eval_loss')} | {row.get('perplexity')} | {row.get('eos_stop_rate', '—')} |")
    for task, row in evals.get("mc", {}).items():
        lines.append(f"| multiple choice `{task}` | base {row.get('base')} → tuned {row.get('merged')} "
                     f"(chance {row.get('chance')}, {row.get('items')} items) | | |")
    return "\n".join(lines)


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_id }}

A Korean instruction/chat model fine-tuned with QLoRA by kotune from `{{ base }}`
on `{{ source }}`. The weights here are the LoRA adapter merged into the base (and, under `adapter/`,
the adapter itself).

## Usage

```python
from transformers import pipeline

chat = pipeline("text-generation", model="{{ model_id }}")
messages = [{"role": "user", "content": "운영체제가 뭐하는 거야?"}]
print(chat(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])
```

The tokenizer carries the chat template used in training (Llama-3 format); generation stops at
`<|eot_id|>` (see `generation_config.json`).

{{ gguf }}
## Evaluation (held-out split of the training data)

{{ evals }}

## Training

```json
{{ train }}
```

## Parameters

```yaml
{{ params }}
```

## Provenance

{{ origin }}
"""


def build_release(args, params: Params, evals: dict, train_metrics: dict) -> None:
    origin = provenance(("data/processed", "models/adapter", "models/merged", "models/gguf"))
    with atomic_dir(args.out) as tmp:
        for path in sorted(Path(args.merged).iterdir()):
            if path.is_file():
                link_or_copy(path, tmp / path.name)
        if params.publish.include_adapter:
            for path in sorted(Path(args.adapter).iterdir()):
                if path.is_file() and path.name != "README.md":
                    link_or_copy(path, tmp / "adapter" / path.name)
        ggufs = gguf_files(Path(args.gguf))
        for path in ggufs + ([Path(args.gguf) / "Modelfile"] if ggufs else []):
            link_or_copy(path, tmp / path.name)  # at the top level, where the Hub looks for GGUF files
        model_card(params, evals, train_metrics, origin, Path(args.gguf)).save(tmp / "README.md")


def quality_gate(params: Params, evals: dict) -> str | None:
    base, tuned = evals["base"]["eval_loss"], evals["merged"]["eval_loss"]
    if tuned > base and not params.publish.allow_worse_than_base:
        return (f"the tuned model's eval loss {tuned} is worse than the base's {base}; set "
                "publish.allow_worse_than_base: true to publish it anyway")
    return None


def push(folder: Path, params: Params, api_factory=None) -> str:
    from huggingface_hub import HfApi, get_token

    publish = params.publish
    if not publish.repo_id:
        raise KotuneError("publish.push is true but publish.repo_id is not set (e.g. your-name/model-name)")
    token = get_token()
    if not token:
        raise KotuneError("publish.push needs a Hugging Face token: export HF_TOKEN=... or run `hf auth login`; "
                          "kotune never reads it from params")
    api = (api_factory or HfApi)(token=token)
    message = f"kotune: model from git commit {git_commit() or 'unknown'}"
    try:
        api.create_repo(repo_id=publish.repo_id, private=publish.private, exist_ok=True, repo_type="model")
        if publish.revision:
            api.create_branch(repo_id=publish.repo_id, branch=publish.revision, exist_ok=True)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        large = getattr(api, "upload_large_folder", None)
        if size > LARGE_FOLDER_BYTES and large is not None:
            large(repo_id=publish.repo_id, folder_path=str(folder), repo_type="model", revision=publish.revision,
                  private=publish.private)
        else:
            api.upload_folder(repo_id=publish.repo_id, folder_path=str(folder), repo_type="model",
                              revision=publish.revision, commit_message=message)
    except OSError as exc:  # requests' ConnectionError and huggingface_hub's HTTP errors are OSErrors
        raise KotuneError(f"upload to {publish.repo_id} failed: {type(exc).__name__}: {exc}") from None
    return f"https://huggingface.co/{publish.repo_id}"


def main(argv=None, api_factory=None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    log_config(log, "publish", params.publish)
    evals = json.loads(Path(args.eval).read_text(encoding="utf-8"))
    train_metrics = json.loads(Path(args.train_metrics).read_text(encoding="utf-8"))
    build_release(args, params, evals, train_metrics)
    files = sorted(str(p.relative_to(args.out)) for p in Path(args.out).rglob("*") if p.is_file())
    refusal = quality_gate(params, evals)
    target = f"{params.publish.repo_id or '<publish.repo_id>'} ({'private' if params.publish.private else 'public'}" \
             f", revision {params.publish.revision or 'main'})"
    if not params.publish.push:
        log.info("dry run (publish.push is false): %d files in %s would be uploaded to %s: %s", len(files), args.out,
                 target, ", ".join(files))
        if refusal:
            log.warning("a push would be refused: %s", refusal)
        return
    if refusal:
        raise KotuneError(f"not pushing: {refusal}")
    url = push(Path(args.out), params, api_factory)
    log.info("uploaded %d files to %s", len(files), url)
