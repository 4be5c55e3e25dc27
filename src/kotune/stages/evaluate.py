"""evaluate: base vs adapter vs merged — held-out loss, generations, EOS-stop rate, Korean multiple choice.

    kotune evaluate --params params.yaml --data data/processed --adapter models/adapter \
        --merged models/merged --tensorboard logs/tensorboard --metrics metrics/eval.json --reports reports

Writes metrics/eval.json, reports/eval.md and a self-contained reports/eval.html (loss curves from
TensorBoard, the metric table, generations side by side).
"""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path

from kotune import evaluation, mctasks, report, training
from kotune.atomic import atomic_file, write_json
from kotune.config import EvalSection, Params, load_params
from kotune.logs import log_config
from kotune.modeling import load_base_model, require_safetensors, resolve_device
from kotune.provenance import provenance
from kotune.stages import parse_stage_args

log = logging.getLogger("kotune.evaluate")
SETTINGS = {"greedy": False, "sampled": True}


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune evaluate", __doc__,
        data="folder with eval.jsonl",
        adapter="adapter",
        merged="merged",
        tensorboard="training's TensorBoard events, for the curves",
        metrics="metrics",
        reports="folder for eval.md and eval.html",
    )


def mc_tasks(cfg: EvalSection) -> list:
    return [mctasks.builtin_task(), *(mctasks.load_task(path) for path in cfg.mc_tasks)]


def assess(name: str, model, tokenizer, records: list[dict], cfg: EvalSection, results: dict, generate: bool):
    """Loss always; generations and multiple choice for the models a user compares (base, merged)."""
    results["metrics"][name] = evaluation.heldout_loss(model, tokenizer, records, cfg, desc=f"{name} loss")
    if not generate:
        return
    stopped = []
    for setting, sampled in SETTINGS.items():
        outputs = evaluation.generate(model, tokenizer, list(cfg.prompts), cfg, sampled)
        for prompt, out in zip(cfg.prompts, outputs, strict=True):
            row = results["generations"].setdefault((prompt, setting), {"prompt": prompt, "settings": setting,
                                                                       "outputs": {}, "stopped": {}})
            row["outputs"][name], row["stopped"][name] = out.text, out.stopped
            stopped.append(out.stopped)
    results["metrics"][name]["eos_stop_rate"] = round(sum(stopped) / len(stopped), 4)
    score = evaluation.loglikelihood(model, tokenizer)
    for task in results["tasks"]:
        scored = mctasks.score_task(task, score, limit=cfg.mc_limit)
        results["mc"].append({"task": task.name, "model": name, **scored})
    log.info("%s: %s", name, results["metrics"][name])


def run_models(params: Params, args, records: list[dict], results: dict) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device("auto")
    tokenizer = AutoTokenizer.from_pretrained(args.adapter)
    require_safetensors(args.adapter, "adapter")
    require_safetensors(args.merged, "merged model")
    tuned = PeftModel.from_pretrained(load_base_model(params.model, params.quant, device), args.adapter).eval()
    with tuned.disable_adapter():
        assess("base", tuned, tokenizer, records, params.eval, results, generate=True)
    assess("adapter", tuned, tokenizer, records, params.eval, results, generate=False)
    del tuned
    gc.collect()
    torch.cuda.empty_cache() if device == "cuda" else None
    merged = AutoModelForCausalLM.from_pretrained(
        args.merged, dtype=getattr(torch, params.merge.dtype), device_map={"": 0 if device == "cuda" else "cpu"},
        use_safetensors=True)
    assess("merged", merged.eval(), tokenizer, records, params.eval, results, generate=True)


def lm_eval_results(tasks: tuple[str, ...], model_dir: str, notes: list[str]) -> dict:
    """Optional lm-evaluation-harness run on the merged model; skipped with a reason when it cannot run."""
    if not tasks:
        return {}
    try:
        import lm_eval
    except ImportError:
        notes.append(f"lm-evaluation-harness tasks {', '.join(tasks)} skipped: `pip install lm-eval` to run them")
        return {}
    try:
        out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir}", tasks=list(tasks))
    except Exception as exc:  # offline: the harness downloads its datasets from the Hub
        notes.append(f"lm-evaluation-harness skipped: {type(exc).__name__}: {exc} (its datasets come from the Hub; "
                     "set HF_HOME to a cache that holds them, with HF_DATASETS_OFFLINE=1)")
        return {}
    return {task: {k.split(",")[0]: v for k, v in values.items() if isinstance(v, int | float)}
            for task, values in out["results"].items()}


def write_outputs(args, results: dict, params: Params) -> None:
    metrics = {**results["metrics"], "mc": {}}
    for row in results["mc"]:
        entry = metrics["mc"].setdefault(row["task"], {"chance": round(row["chance"], 4), "items": row["items"]})
        entry[row["model"]] = round(row["accuracy"], 4)
    metrics["tuned_minus_base_eval_loss"] = round(
        results["metrics"]["merged"]["eval_loss"] - results["metrics"]["base"]["eval_loss"], 4)
    if results["lm_eval"]:
        metrics["lm_eval"] = results["lm_eval"]
    write_json(args.metrics, metrics)
    document = {"title": "kotune evaluation", "metrics": results["metrics"], "mc": results["mc"],
                "generations": list(results["generations"].values()), "notes": results["notes"],
                "curves": report.read_curves(args.tensorboard),
                "provenance": {"base_model": params.model.name_or_path, "adapter": args.adapter,
                               "merged": args.merged, **provenance(("data/processed", "models/adapter"))}}
    for name, render in (("eval.md", report.render_markdown), ("eval.html", report.render_html)):
        with atomic_file(Path(args.reports) / name) as handle:
            handle.write(render(document))


def main(argv=None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    log_config(log, "eval", params.eval)
    records = training.read_records(Path(args.data) / "eval.jsonl")
    results = {"metrics": {}, "generations": {}, "mc": [], "tasks": mc_tasks(params.eval), "notes": []}
    run_models(params, args, records, results)
    results["lm_eval"] = lm_eval_results(params.eval.lm_eval_tasks, args.merged, results["notes"])
    for note in results["notes"]:
        log.warning("%s", note)
    write_outputs(args, results, params)
    base, merged = results["metrics"]["base"], results["metrics"]["merged"]
    log.info("eval loss: base %.4f -> merged %.4f; EOS-stop rate: base %.2f -> merged %.2f; reports in %s",
             base["eval_loss"], merged["eval_loss"], base["eos_stop_rate"], merged["eos_stop_rate"], args.reports)
