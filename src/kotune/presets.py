"""Hydra presets under conf/: compose params.yaml exactly as `dvc exp run -S group=option` does.

    kotune params model=llama-3.1-8b data=open-korean-instructions train=qlora-80gb   # then: dvc repro

DVC's own `compose_and_dump` writes the file, so the bytes match what `dvc exp run` would write.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from kotune.atomic import atomic_file
from kotune.config import Params, load_params

log = logging.getLogger("kotune.params")
GROUPS = ("model", "data", "train")


def compose_to(path: str | Path, overrides: list[str], conf_dir: str | Path = "conf") -> None:
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(path, str(Path(conf_dir).resolve()), None, "config", "", list(overrides))


def compose(overrides: list[str], conf_dir: str | Path = "conf") -> Params:
    """The validated Params of a composition (raises ConfigError naming the bad key)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_to(out, overrides, conf_dir)
        return load_params(out)


def options(group: str, conf_dir: str | Path = "conf") -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kotune params", description="compose params.yaml from conf/ presets")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, e.g. model=llama-3.1-8b train.learning_rate=1e-4")
    parser.add_argument("--conf", default="conf")
    parser.add_argument("--out", default="params.yaml")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "params.yaml"
        compose_to(candidate, args.overrides, args.conf)
        load_params(candidate)  # validate before replacing the user's params.yaml
        with atomic_file(args.out, "wb") as out:  # a kill or a full disk never leaves half a params.yaml
            out.write(candidate.read_bytes())
    log.info("wrote %s from %s with %s", args.out, args.conf, " ".join(args.overrides) or "the defaults")
    for group in GROUPS:
        log.info("  %s presets: %s", group, ", ".join(options(group, args.conf)))
