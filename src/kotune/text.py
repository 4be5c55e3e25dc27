"""Korean-aware text handling: encodings, NFC, control characters, masked names."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from kotune.errors import KotuneError

# Tried in this order: a BOM is unambiguous; UTF-8 decoding almost never succeeds by accident on
# CP949 bytes; EUC-KR is the strict subset of CP949 (Windows' extension), so the narrower name wins.
_ENCODINGS = ("utf-8-sig", "utf-8", "euc-kr", "cp949")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_MASKED_NAME = re.compile(r"\*{1,}")


def decode_bytes(raw: bytes, file: str | Path, encoding: str = "auto") -> tuple[str, str]:
    """Decode a whole file; returns (text, encoding used). Raises naming the file and line on failure.
    A leading byte-order mark is never content, whichever encoding was named."""
    if encoding != "auto":
        try:
            return raw.decode(encoding).removeprefix("\ufeff"), encoding
        except UnicodeDecodeError as exc:
            raise KotuneError(f"{file}:{_line_of(raw, exc.start)}: not valid {encoding}: {exc.reason}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw.decode("utf-8-sig"), "utf-8-sig"
    first_error = None
    for name in _ENCODINGS[1:]:
        try:
            return raw.decode(name), name
        except UnicodeDecodeError as exc:
            first_error = first_error or exc
    raise KotuneError(
        f"{file}:{_line_of(raw, first_error.start)}: not UTF-8, EUC-KR or CP949 text; "
        "set data.encoding if you know the encoding"
    )


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def clean(text: str, nfc: bool = True, strip_control: bool = True) -> str:
    """NFC-normalize (decomposed jamo from macOS files become syllables), drop control characters."""
    if nfc:
        text = unicodedata.normalize("NFC", text)
    if strip_control:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()


def mask_names(text: str, token: str | None) -> str:
    """AI Hub dialogs mask personal names as `*` or `**`; give the model one consistent token."""
    return text if token is None else _MASKED_NAME.sub(token, text)
