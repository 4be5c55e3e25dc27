"""Logging for every stage: timestamps, the stage's name, and secrets redacted before any handler."""

from __future__ import annotations

import logging
import os
import re

_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_KEY",
               "GDRIVE_CREDENTIALS_DATA")


def redact(text: str) -> str:
    """Hide Hub tokens and the values of secret environment variables."""
    for name in SECRET_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, f"<{name}>")
    return _TOKEN.sub("<hf token>", text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on every CPU run that an optional Hub-downloaded kernel is missing, then uses
    # its built-in CPU path; the warning would teach users to ignore warnings.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def log_config(logger: logging.Logger, name: str, section) -> None:
    """Log a resolved config section, one `key = value` per line (secrets never live in params)."""
    from kotune.typed_config import to_dict

    for key, value in to_dict(section).items():
        logger.info("%s.%s = %r", name, key, value)
