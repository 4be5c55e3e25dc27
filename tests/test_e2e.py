"""`dvc repro` of the embedded default in a temporary git repo, as a user runs it from a clone."""

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.e2e
STAGES = ("tiny_model", "fetch", "prepare", "train", "merge", "evaluate", "export", "publish")


# Set for the whole first run, as on a GPU runner: none of them may land in any file the pipeline writes.
# Made at run time, so that no file (this one included, copied into the clone) holds them beforehand.
SECRETS = {"HF_TOKEN": f"hf_{secrets.token_hex(16)}", "AWS_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}",
           "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}


def sh(cwd: Path, *args: str, with_secrets: bool = False) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if with_secrets:
        env.update(SECRETS)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project's files as a fresh clone has them (tracked and not ignored), in a new git repo."""
    repo = tmp_path_factory.mktemp("kotune-clone")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone")
    return repo


@pytest.fixture(scope="module")
def first_run(clone) -> str:
    return sh(clone, "dvc", "repro", "--verbose", with_secrets=True)


def lock_outs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_repro_runs_every_stage_and_writes_the_outputs(clone, first_run):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_run
    for path in ("models/tiny-ko/model.safetensors", "data/processed/train.jsonl", "data/processed/eval.jsonl",
                 "data/processed/rejects.jsonl", "models/adapter/adapter_model.safetensors",
                 "plots/train/steps.csv", "plots/train/eval.csv", "models/merged/model.safetensors",
                 "reports/eval.html", "reports/eval.md", "models/publish/README.md",
                 "models/publish/adapter/adapter_model.safetensors"):
        assert (clone / path).stat().st_size > 0
    metrics = json.loads((clone / "metrics" / "data.json").read_text())
    assert metrics["records"]["kept"] == 390 and metrics["records"]["rejected"] == 5
    trained = json.loads((clone / "metrics" / "train.json").read_text())
    assert trained["final_loss"] <= 0.95 * trained["first_loss"] and trained["eval_loss"] < trained["first_loss"]
    assert list((clone / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    evals = json.loads((clone / "metrics" / "eval.json").read_text())
    assert evals["merged"]["eval_loss"] < evals["base"]["eval_loss"]  # the tuned model beats its base
    merged = json.loads((clone / "metrics" / "merge.json").read_text())
    assert merged["max_abs_logit_diff"] <= merged["tolerance"]


def test_no_secret_in_any_file_the_run_wrote(clone, first_run):
    """Outputs, logs, TensorBoard events, dvc.lock, the model card, reports, DVC's cache and git's objects."""
    assert "Running stage 'publish'" in first_run and "kotune" in first_run  # the run happened, verbosely
    files = [path for path in clone.rglob("*") if path.is_file()]
    assert len(files) > 50 and any(".dvc/cache" in str(path) for path in files)
    for path in files:
        content = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in content, f"{name} written to {path.relative_to(clone)}"
    for name, value in SECRETS.items():
        assert value not in first_run, f"{name} in the console output"


def test_second_repro_runs_nothing(clone, first_run):
    second = sh(clone, "dvc", "repro")
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")


def test_prepare_is_byte_identical_when_forced(clone, first_run):
    before = lock_outs(clone)
    sh(clone, "dvc", "repro", "--force", "--single-item", "prepare")
    assert lock_outs(clone) == before


def test_dvc_reads_metrics_params_and_plots(clone, first_run):
    shown = sh(clone, "dvc", "metrics", "show")
    assert "metrics/data.json" in shown and "records.kept" in shown
    assert "data.source" in sh(clone, "dvc", "params", "diff", "--all")
    plots = sh(clone, "dvc", "plots", "show", "--json")
    assert "plots/data/token_lengths.csv" in plots and "Loss" in plots and "plots/train/eval.csv" in plots


def test_checkpoints_are_versioned_by_dvc(clone, first_run):
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    outs = {out["path"] for out in lock["stages"]["train"]["outs"]}
    assert {"models/adapter", "models/checkpoints", "logs/tensorboard"} <= outs
    assert "checkpoints" in (clone / "models" / ".gitignore").read_text()
    saved = sorted(p.name for p in (clone / "models" / "checkpoints").glob("checkpoint-*"))
    shutil.rmtree(clone / "models" / "checkpoints")
    sh(clone, "dvc", "checkout", "models/checkpoints")  # from DVC's cache, as after a checkout of a commit
    assert sorted(p.name for p in (clone / "models" / "checkpoints").glob("checkpoint-*")) == saved and saved


def test_remote_push_and_pull_round_trip(clone, first_run, tmp_path):
    """A local-directory remote: what `dvc push` stores, a fresh clone gets back with `dvc pull`."""
    remote = tmp_path / "remote"
    sh(clone, "dvc", "remote", "add", "--default", "local", str(remote))
    sh(clone, "dvc", "push")
    sh(clone, "git", "add", "-A")
    sh(clone, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run and remote")
    second = tmp_path / "second"
    sh(tmp_path, "git", "clone", "-q", str(clone), str(second))
    assert not (second / "models" / "adapter").exists()
    sh(second, "dvc", "pull")
    for path in ("data/processed/train.jsonl", "models/adapter/adapter_model.safetensors",
                 "models/checkpoints", "models/merged/config.json"):
        source, pulled = clone / path, second / path
        if source.is_dir():
            assert sorted(p.name for p in pulled.rglob("*")) == sorted(p.name for p in source.rglob("*"))
        else:
            assert pulled.read_bytes() == source.read_bytes()
    assert "Data and pipelines are up to date" in sh(second, "dvc", "status")
