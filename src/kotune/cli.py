"""`kotune <stage>`: a thin dispatcher; each stage module parses its own arguments.

    kotune tiny-model|fetch|prepare|train|merge|evaluate|export|publish [--help]    the DVC stages
    kotune params [group=option ...]           compose params.yaml from conf/ presets
    kotune chat [MODEL_DIR] | generate MODEL_DIR --prompt ...   talk to the merged model or an adapter
    kotune doctor | fit [--gpu-mem 24GiB]      will this run here, and will it fit, before a GPU hour is spent
"""

from __future__ import annotations

import importlib
import logging
import sys

from kotune.errors import KotuneError
from kotune.logs import redact, setup_logging

COMMANDS = {
    "tiny-model": "kotune.stages.tiny_model",
    "fetch": "kotune.stages.fetch",
    "prepare": "kotune.stages.prepare",
    "train": "kotune.stages.train",
    "merge": "kotune.stages.merge",
    "evaluate": "kotune.stages.evaluate",
    "export": "kotune.stages.export",
    "publish": "kotune.stages.publish",
    "params": "kotune.presets",
    "chat": "kotune.chat:chat_main",
    "generate": "kotune.chat:generate_main",
    "doctor": "kotune.doctor",
    "fit": "kotune.fit",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: kotune {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    setup_logging()
    try:
        module, _, function = COMMANDS[argv[0]].partition(":")
        getattr(importlib.import_module(module), function or "main")(argv[1:])
    except KotuneError as exc:
        logging.getLogger(f"kotune.{argv[0]}").error("%s", exc)
        print(f"kotune {argv[0]}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
