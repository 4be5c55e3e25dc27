"""Read the files under data/raw/ into records that remember their file and line.

File kinds are sniffed from content, not only from the name (KoChatGPT ships plain text in a
`.jsonl` file): JSON array/object, JSON Lines, CSV/TSV, Parquet, or plain text blocks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError
from kotune.text import decode_bytes

log = logging.getLogger(__name__)
READABLE = (".json", ".jsonl", ".txt", ".text", ".csv", ".tsv", ".parquet")
# Python's csv default (131072 characters) raises mid-file on one long field; a long record is a too_long
# reject in prepare instead. 2**31 - 1 is the largest value every platform's C long accepts.
CSV_FIELD_LIMIT = 2**31 - 1
# Text with a stray NUL has a few; UTF-16 without a byte-order mark has one in every other byte (ASCII).
NUL_SHARE = 0.1
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_HANGUL = re.compile("[\uac00-\ud7a3]")


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
    """The file's records; an empty file (or one holding only whitespace) has none."""
    if path.stat().st_size == 0:
        return
    if path.suffix.lower() == ".parquet":
        yield from _read_parquet(path)
        return
    text = decode(path, path.read_bytes(), encoding)
    if not text.strip():
        return
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _read_csv(path, text, "\t" if path.suffix.lower() == ".tsv" else ",")
    elif path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        # Only .jsonl/.txt may hold plain text (KoChatGPT's .jsonl does); a .json that does not start like
        # JSON (NUL padding, a bare value) is malformed JSON, not a paragraph to train on.
        yield from _read_json_or_lines(path, text)
    else:
        yield from _read_text_blocks(path, text, separator)


def decode(path: Path, raw: bytes, encoding: str) -> str:
    """text.decode_bytes, plus what it cannot see trying one encoding at a time on the whole file."""
    if encoding == "auto" and raw[:2] in _UTF16_BOMS:  # Excel's "Unicode text" export
        try:
            return raw.decode("utf-16").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise KotuneError(f"{path}: has a UTF-16 byte-order mark but is not UTF-16: {exc.reason}") from None
    _refuse_binary(path, raw)
    try:
        text, used = decode_bytes(raw, path, encoding)
    except KotuneError:
        if encoding == "auto":
            _refuse_mixed_encodings(path, raw)
        raise
    if used in ("euc-kr", "cp949") and encoding == "auto":
        _refuse_mixed_encodings(path, raw)
    if used != "utf-8":
        log.info("%s: decoded as %s", path, used)
    return text


def _refuse_binary(path: Path, raw: bytes) -> None:
    nuls = raw.count(b"\0")
    if nuls > NUL_SHARE * len(raw):
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise KotuneError(f"{path}:{line}: {nuls} of {len(raw)} bytes are NUL: UTF-16 without a byte-order mark, "
                          "or not a text file (a download cut short?); save it as UTF-8")


def _refuse_mixed_encodings(path: Path, raw: bytes) -> None:
    """UTF-8 Korean in one place and not UTF-8 in another: decoding the whole file as CP949 would fail, or
    worse succeed and turn the UTF-8 lines into mojibake. CP949 Hangul practically never reads as valid
    UTF-8 Hangul, so Hangul in the valid UTF-8 part of a line is evidence of UTF-8 (splitting at b"\\n"
    never cuts a UTF-8 or CP949 character)."""
    lines = [_utf8_line(line) for line in raw.split(b"\n")]
    evidence = next((n for n, (text, _) in enumerate(lines, 1) if _HANGUL.search(text)), None)
    if evidence is None:
        return
    bad, error = next((n, error) for n, (_, error) in enumerate(lines, 1) if error)
    raise KotuneError(f"{path}:{bad}: not UTF-8 at byte {error.start + 1} of the line ({error.reason}), yet line "
                      f"{evidence} holds UTF-8 Korean: lines in different encodings, or a damaged or cut-off file; "
                      "convert every line to UTF-8")


def _utf8_line(line: bytes) -> tuple[str, UnicodeDecodeError | None]:
    """The line's text up to its first byte that is not UTF-8, and that error (None for a valid line)."""
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return line[: exc.start].decode("utf-8"), exc


def _json_problem(exc: json.JSONDecodeError) -> str:
    """The decoder's message and the character it stopped at, so a NUL or a cut-off end is visible."""
    found = repr(exc.doc[exc.pos]) if exc.pos < len(exc.doc) else "the end of the text"
    return f"{exc.msg} (column {exc.colno}, at {found})"


def _read_json_or_lines(path: Path, text: str) -> Iterator[RawRecord]:
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        if path.suffix.lower() == ".json" and isinstance(exc, RecursionError):
            raise KotuneError(f"{path}: JSON nested deeper than {sys.getrecursionlimit()} levels") from None
        if path.suffix.lower() == ".json" and exc.msg != "Extra data":
            raise KotuneError(f"{path}:{exc.lineno}: malformed JSON: {_json_problem(exc)}") from None
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
            # A BOM starting a later line is a file that was concatenated onto this one, not content.
            yield RawRecord(str(path), number, json.loads(line.removeprefix("\ufeff")))
        except json.JSONDecodeError as exc:
            yield RawRecord(str(path), number, line, error=("malformed_json", _json_problem(exc)))
        except RecursionError:
            error = ("too_deep", f"nested deeper than {sys.getrecursionlimit()} levels")
            yield RawRecord(str(path), number, line[:200], error=error)


def _read_csv(path: Path, text: str, delimiter: str) -> Iterator[RawRecord]:
    """Strict parsing: a malformed row is a reject, and a quote never closed is an error, where the lenient
    default would silently make the rest of the file one field."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise KotuneError(f"{path}:1: malformed CSV header: {exc}") from None
    start = 2  # line 1 is the header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _malformed_row(path, text, start, reader.line_num, header, delimiter, exc)
        else:
            yield _csv_record(path, start, row)
        start = reader.line_num + 1


def _csv_record(path: Path, start: int, row: dict) -> RawRecord:
    extra = row.pop(None, None)
    # A short row has None for its missing columns: leave those out so the reject says "no 'A' field".
    row = {key: value for key, value in row.items() if value is not None}
    if extra is not None:
        return RawRecord(str(path), start, row, error=("extra_fields", f"{len(extra)} more fields than the header"))
    return RawRecord(str(path), start, row)


def _malformed_row(path: Path, text: str, start: int, end: int, header: list[str] | None, delimiter: str,
                   exc: csv.Error) -> RawRecord:
    lines = io.StringIO(text).readlines()  # split as csv splits: at "\n" only
    if "unexpected end of data" in str(exc):
        fields = next(csv.reader(io.StringIO("".join(lines[start - 1:])), delimiter=delimiter))
        name = header[len(fields) - 1] if header and len(fields) <= len(header) else f"#{len(fields)}"
        raise KotuneError(f"{path}:{start}: field '{name}' opens a quote that is never closed, so the rest of the "
                          "file would be one value (a cut-off file, or a stray \" to double as \"\")")
    return RawRecord(str(path), start, "".join(lines[start - 1:end]), error=("malformed_csv", str(exc)))


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise KotuneError(f"{path}: not a readable Parquet file: {exc}") from None
    for index, row in enumerate(rows):
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
