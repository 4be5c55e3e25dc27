"""dvc.yaml keeps hashes honest: each stage depends on every kotune module its command runs."""

import ast

import pytest
import yaml

from kotune.cli import COMMANDS

from .conftest import ROOT

pytestmark = pytest.mark.unit
# Plumbing that cannot change a stage's outputs: values come from params.yaml, which DVC tracks
# (test_presets checks params.yaml states every field), not from code defaults.
PLUMBING = {"kotune", "kotune.cli", "kotune.config", "kotune.typed_config", "kotune.errors", "kotune.logs",
            "kotune.atomic", "kotune.stages"}


def module_path(name: str):
    base = ROOT / "src" / name.replace(".", "/")
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def kotune_imports(name: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if name in seen or not module_path(name).exists():
        return seen
    seen.add(name)
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kotune"):
            kotune_imports(node.module, seen)
            for alias in node.names:
                kotune_imports(f"{node.module}.{alias.name}", seen)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kotune"):
                    kotune_imports(alias.name, seen)
    return seen


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_stage_depends_on_the_code_it_runs(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    command = spec["cmd"].split()[1]
    needed = kotune_imports(COMMANDS[command]) - PLUMBING
    missing = sorted(str(module_path(m).relative_to(ROOT)) for m in needed
                     if not covered(str(module_path(m).relative_to(ROOT)), spec["deps"]))
    assert not missing, f"dvc.yaml stage {stage} should depend on {missing}"
