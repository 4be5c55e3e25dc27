"""fetch: bring the raw data named by `data.source` into data/raw/, as the source had it.

    kotune fetch --params params.yaml --out data/raw

A local file or folder is copied byte for byte (prepare reports file:line against the copy, whose
lines are the original's). A Hub dataset id is loaded with `datasets` and written as JSON Lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

from tqdm import tqdm

from kotune.atomic import atomic_dir
from kotune.config import DataSection, load_section
from kotune.errors import KotuneError, hub_unreachable_message
from kotune.logs import log_config
from kotune.rawread import READABLE, list_raw_files
from kotune.stages import parse_stage_args

log = logging.getLogger("kotune.fetch")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def parse_args(argv=None) -> argparse.Namespace:
    return parse_stage_args(
        argv, "kotune fetch", __doc__,
        out="folder for the raw files (data/raw)",
    )


def is_hub_id(source: str) -> bool:
    """`owner/name` that is not a local path; a path-looking source that is missing is an error."""
    if Path(source).exists():
        return False
    if HUB_ID.fullmatch(source) and Path(source).suffix.lower() not in READABLE:
        return True
    raise KotuneError(f"data.source: {source} does not exist (and is not a Hub dataset id like owner/name)")


def copy_local(source: Path, out: Path) -> None:
    files = list_raw_files(source)
    for path in tqdm(files, desc="copy", unit="file", disable=len(files) < 10):
        target = out / (path.name if source.is_file() else path.relative_to(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    log.info("copied %d file(s) from %s", len(files), source)


def fetch_hub(data: DataSection, out: Path) -> None:
    import datasets

    try:
        dataset = datasets.load_dataset(
            data.source, name=data.subset, split=data.split, revision=data.revision,
            data_files=list(data.data_files) if data.data_files else None,
        )
    except (ConnectionError, OSError, ValueError) as exc:
        raise KotuneError(hub_unreachable_message("dataset", data.source, exc) + f" ({exc})") from None
    path = out / f"{data.split}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for row in tqdm(dataset, desc=f"write {path.name}", unit="rec"):
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    log.info("wrote %d records of %s (split %s, revision %s) to %s", len(dataset), data.source, data.split,
             data.revision or "latest — pin data.revision to make fetch reproducible", path)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = load_section(args.params, "data")
    log_config(log, "data", data)
    with atomic_dir(args.out) as tmp:
        if is_hub_id(data.source):
            fetch_hub(data, tmp)
        else:
            copy_local(Path(data.source), tmp)
