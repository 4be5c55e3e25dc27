"""One pinned environment for CI, users and the Docker image; the image and workflows lint clean."""

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.unit
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s=]+)$")


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            match = PIN.match(line)
            assert match, f"requirements.lock: not an exact pin: {line!r}"
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def test_lock_pins_every_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = lock()
    assert not [d for d in declared if d.lower() not in pins]
    assert pins["torch"] == "2.13.0"


def test_this_environment_is_exactly_the_lock():
    """What CI (and the image, which installs the same file) runs with is what the lock says."""
    wrong = {}
    for name, version in lock().items():
        installed = metadata.version(name)
        if installed.split("+")[0] != version:
            wrong[name] = (version, installed)
    assert not wrong


def test_dockerfile_installs_only_the_lock():
    """The image installs the same lock file CI does, and no second list of versions."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n&\\]+)", text)
    assert [i.strip() for i in installs] == ["-r /opt/kotune/requirements.lock",
                                             "-r /opt/kotune/requirements-unsloth.txt; fi", "--no-deps /opt/kotune"]
    assert 'if [ "$BACKEND" = unsloth ]' in text  # the Unsloth overlay only when asked for
    assert "COPY requirements.lock /opt/kotune/requirements.lock" in text
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"[A-Za-z0-9_.-]+==\d", instructions)
    assert "HF_TOKEN" not in text.replace("(HF_TOKEN from the environment)", "")  # no secret in a layer


def test_unsloth_overlay_pins_exact_versions():
    lines = [line for line in (ROOT / "requirements-unsloth.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", line) for line in lines)


def test_dockerignore_keeps_the_build_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[1] == "*" or "*" in lines  # everything excluded, then only what the image needs
    assert "!requirements.lock" in lines and "!src/" in lines


def test_compose_passes_the_token_and_the_gpu():
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    gpu = compose["services"]["kotune"]
    assert "HF_TOKEN" in gpu["environment"] and gpu["ipc"] == "host"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in compose["services"]["kotune-cpu"]


def run_tool(*args):
    beside_python = Path(sys.executable).parent / args[0]
    tool = str(beside_python) if beside_python.exists() else shutil.which(args[0])
    assert tool, f"{args[0]} is missing: it is pinned in requirements.lock"
    result = subprocess.run([tool, *args[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_lints_clean():
    run_tool("hadolint", "docker/Dockerfile")


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github" / "workflows").glob("*.yml")), ids=lambda p: p.name)
def test_workflows_lint_clean(workflow):
    run_tool("actionlint", str(workflow))
    run_tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow))


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make repro" in readme


def test_code_lints_clean():
    run_tool("ruff", "check", "src", "tests", "scripts", "bench")
