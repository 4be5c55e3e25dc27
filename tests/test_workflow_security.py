"""The workflows' security rules: forks never reach the GPU runners, secrets sit behind protected
environments, and every token is least-privilege."""

import json

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.unit
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
FORK_GUARD = "github.event.pull_request.head.repo.full_name == github.repository"


def load(path):
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as true
    return workflow


def jobs(path):
    return load(path)["jobs"].items()


def self_hosted(job) -> bool:
    runs_on = job["runs-on"]
    return "self-hosted" in (runs_on if isinstance(runs_on, list) else [runs_on])


def test_there_are_workflows_with_self_hosted_jobs_and_secrets():
    assert any(self_hosted(job) for path in WORKFLOWS for _, job in jobs(path))
    assert any("secrets." in json.dumps(job) for path in WORKFLOWS for _, job in jobs(path))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_forks_never_run_on_self_hosted_runners(path):
    triggers = load(path)["on"]
    assert "pull_request_target" not in triggers  # it would run with this repository's secrets
    for name, job in jobs(path):
        if self_hosted(job) and "pull_request" in triggers:
            assert FORK_GUARD in job.get("if", ""), f"{path.name}: job {name} runs pull requests from forks"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_only_in_protected_environments(path):
    for name, job in jobs(path):
        text = json.dumps(job).replace("secrets.GITHUB_TOKEN", "")
        if "secrets." in text:
            assert job.get("environment"), f"{path.name}: job {name} reads secrets outside an environment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_tokens(path):
    workflow = load(path)
    assert "permissions" in workflow, f"{path.name}: the default token permissions are too broad"
    assert set((workflow["permissions"] or {}).values()) <= {"read", "none"}, "writes belong to one job"
    for name, job in jobs(path):
        granted = job.get("permissions", {})
        assert granted != "write-all" and set(granted) <= {"contents", "pull-requests"}, f"{name}: {granted}"
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout"):
                assert step.get("with", {}).get("persist-credentials") is False, f"{name}: token left in .git"
