"""Load the base model's tokenizer (and, in later stages, the model) from a local folder or the Hub."""

from __future__ import annotations

import logging
from pathlib import Path

from kotune.config import ModelSection
from kotune.errors import KotuneError, hub_unreachable_message
from kotune.template import choose_chat_template

log = logging.getLogger(__name__)


def load_tokenizer(model: ModelSection):
    """The tokenizer with kotune's rules applied: a chat template, and a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    local = Path(model.name_or_path).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as exc:
        if local:
            raise KotuneError(f"cannot load the tokenizer from {model.name_or_path}: {exc}") from None
        raise KotuneError(hub_unreachable_message("tokenizer", model.name_or_path, exc)) from None
    tokenizer.chat_template = choose_chat_template(tokenizer, model)
    if model.pad_token is not None:
        if model.pad_token not in tokenizer.get_vocab():
            raise KotuneError(f"model.pad_token {model.pad_token!r} is not in the vocabulary of {model.name_or_path}")
        tokenizer.pad_token = model.pad_token
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # Padding with EOS masks EOS out of the labels and the model never learns to stop.
        raise KotuneError(
            f"{model.name_or_path}: the pad token must exist and differ from EOS ({tokenizer.eos_token!r}); "
            "set model.pad_token to a reserved token such as <|reserved_special_token_250|>"
        )
    return tokenizer
