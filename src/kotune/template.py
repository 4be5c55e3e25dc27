"""One chat template for training, evaluation, chat and the model card.

The Llama-3 template below renders exactly what Meta's Llama-3-Instruct template renders; it adds
`{% generation %}` markers around assistant turns so transformers/TRL can build the assistant-only
loss mask from the same template that builds inference prompts.
"""

from __future__ import annotations

from kotune.config import ModelSection
from kotune.errors import KotuneError

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
END_OF_TURN = "<|eot_id|>"


def choose_chat_template(tokenizer, model: ModelSection) -> str:
    """model.chat_template: auto keeps the tokenizer's own template and falls back to Llama-3's."""
    own = getattr(tokenizer, "chat_template", None)
    if model.chat_template == "tokenizer" and not own:
        raise KotuneError(f"model.chat_template is 'tokenizer' but {model.name_or_path} has no chat template")
    if model.chat_template == "llama3" or not own:
        if END_OF_TURN not in tokenizer.get_vocab():
            raise KotuneError(f"{model.name_or_path} has no {END_OF_TURN} token: the llama3 template needs it")
        return LLAMA3_CHAT_TEMPLATE
    return own


def render(tokenizer, record: dict) -> str:
    """The training text of a canonical record (conversation or raw text)."""
    if "messages" in record:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    return f"{tokenizer.bos_token or ''}{record['text']}{tokenizer.eos_token}"


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The inference prompt: the conversation so far plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and "generation %}" in template


def ensure_generation_markers(tokenizer) -> None:
    """Assistant-only loss needs `{% generation %}` markers. A template that renders exactly like Llama-3's
    (Meta's own, for instance) is swapped for ours, which carries them; others are left to TRL, which
    patches the templates it knows and says so for the rest."""
    if has_generation_markers(tokenizer.chat_template) or END_OF_TURN not in tokenizer.get_vocab():
        return
    probe = [{"role": "system", "content": "시스템"}, {"role": "user", "content": "질문"},
             {"role": "assistant", "content": "답변"}]
    theirs = tokenizer.apply_chat_template(probe, tokenize=False)
    if theirs == tokenizer.apply_chat_template(probe, tokenize=False, chat_template=LLAMA3_CHAT_TEMPLATE):
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE


def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops at EOS and, where the chat template ends turns with <|eot_id|>, at that too."""
    ids = [tokenizer.eos_token_id]
    if END_OF_TURN in (tokenizer.chat_template or "") and END_OF_TURN in tokenizer.get_vocab():
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        ids += [] if eot in ids else [eot]
    return ids
