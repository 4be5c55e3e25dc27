"""One module per DVC stage; each `main(argv)` takes its paths from dvc.yaml's command line."""

from __future__ import annotations

import argparse


def parse_stage_args(argv, prog: str, doc: str, **paths: str) -> argparse.Namespace:
    """`--params` plus the stage's required paths (name: help), as dvc.yaml passes them."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, help=help_text)
    return parser.parse_args(argv)
