"""Read the files under data/raw/ into records that remember their file and line.

File kinds are sniffed from content, not only from the name (KoChatGPT ships plain text in a
`.jsonl` file): JSON array/object, JSON Lines, CSV/TSV, Parquet, or plain text blocks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.text import decode_bytes

log = logging.getLogger(__name__)
READABLE = (".json", ".jsonl", ".txt", ".text", ".csv", ".tsv", ".parquet")


@dataclass
class RawRecord:
    file: str
    line: int | None  # 1-based line where the record starts; None where the file has no lines
    value: Any
    path: str = ""  # where inside a JSON document, e.g. "data[3]"
    error: tuple[str, str] | None = None  # (reason, detail) when the record could not even be parsed

    @property
    def where(self) -> str:
        at = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{at} {self.path}" if self.path else at


def list_raw_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    unknown = [str(p) for p in files if p.suffix.lower() not in READABLE]
    if unknown:
        raise KotuneError(f"cannot read {unknown[0]}: kotune reads {', '.join(READABLE)} files")
    if not files:
        raise KotuneError(f"{root}: no data files found")
    return files


def read_file(path: Path, encoding: str = "auto", separator: str = "<<start conversation>>") -> Iterator[RawRecord]:
    if path.suffix.lower() == ".parquet":
        yield from _read_parquet(path)
        return
    text, used = decode_bytes(path.read_bytes(), path, encoding)
    if used not in ("utf-8",):
        log.info("%s: decoded as %s", path, used)
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _read_csv(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")
    elif text.lstrip()[:1] in ("[", "{"):
        yield from _read_json_or_lines(path, text)
    else:
        yield from _read_text_blocks(path, text, separator)


def _read_json_or_lines(path: Path, text: str) -> Iterator[RawRecord]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data" and path.suffix.lower() == ".json":
            raise KotuneError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        yield from _read_json_lines(path, text)
        return
    if isinstance(document, list):
        yield from _array_with_lines(path, text, document)
    else:
        yield RawRecord(str(path), 1, document)


def _array_with_lines(path: Path, text: str, document: list) -> Iterator[RawRecord]:
    """Re-scan the array with raw_decode to learn the line each element starts on."""
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    line, last = 1 + text.count("\n", 0, pos), pos
    for index, value in enumerate(document):
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", last, pos)
        yield RawRecord(str(path), line, value, path=f"[{index}]")
        _, end = decoder.raw_decode(text, pos)
        last, pos = pos, end


def _read_json_lines(path: Path, text: str) -> Iterator[RawRecord]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield RawRecord(str(path), number, json.loads(line))
        except json.JSONDecodeError as exc:
            yield RawRecord(str(path), number, line, error=("malformed_json", f"{exc.msg} (column {exc.colno})"))


def _read_csv(path: Path, text: str, delimiter: str) -> Iterator[RawRecord]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    start = 2  # line 1 is the header
    for row in reader:
        extra = row.pop(None, None)
        if extra is not None:
            error = ("extra_fields", f"{len(extra)} more fields than the header has")
            yield RawRecord(str(path), start, row, error=error)
        else:
            yield RawRecord(str(path), start, row)
        start = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    for index, row in enumerate(pq.read_table(path).to_pylist()):
        yield RawRecord(str(path), None, row, path=f"row {index}")


def _read_text_blocks(path: Path, text: str, separator: str) -> Iterator[RawRecord]:
    """A conversation separator line splits the file if present; otherwise blank lines do."""
    lines = text.splitlines()
    has_separator = any(line.strip() == separator for line in lines)
    block: list[str] = []
    start = 1
    for number, line in enumerate([*lines, ""], start=1):
        boundary = line.strip() == separator if has_separator else not line.strip()
        if boundary or number == len(lines) + 1:
            if any(part.strip() for part in block):
                yield RawRecord(str(path), start, {"text": "\n".join(block).strip("\n")})
            block, start = [], number + 1
        else:
            if not block and not line.strip():
                start = number + 1
                continue
            block.append(line)
