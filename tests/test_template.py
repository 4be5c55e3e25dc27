"""The one chat template: Meta's Llama-3 rendering, the same text for training and for prompts."""

import pytest

from kotune.config import ModelSection
from kotune.modeling import load_tokenizer
from kotune.template import LLAMA3_CHAT_TEMPLATE, render, render_prompt

pytestmark = pytest.mark.unit

# Meta-Llama-3-8B-Instruct's template, verbatim: ours must render the same text.
META_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "운영체제가 뭐하는 거야?"},
     {"role": "assistant",
      "content": "운영체제는 컴퓨터의 자원을 관리하고 프로그램이 실행될 수 있게 돕는 소프트웨어예요."}],
    [{"role": "system", "content": "당신은 친절한 한국어 요리 도우미입니다."},
     {"role": "user", "content": "김치찌개에 참치를 넣어도 돼?"},
     {"role": "assistant", "content": "네, 참치김치찌개도 맛있어요.\n기름을 살짝 빼고 넣으세요."},
     {"role": "user", "content": "두부는 언제 넣어?"},
     {"role": "assistant", "content": "마지막 5분 전에 넣으면 부서지지 않아요."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_renders_exactly_like_metas_template(tiny_tokenizer, messages, add_generation_prompt):
    ours = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    metas = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                               chat_template=META_LLAMA3_TEMPLATE)
    assert ours == metas


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_training_text_extends_the_inference_prompt(tiny_tokenizer, messages):
    prompt = render_prompt(tiny_tokenizer, messages[:-1])
    assert render(tiny_tokenizer, {"messages": messages}) == prompt + messages[-1]["content"] + "<|eot_id|>"


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_korean_survives_encode_decode(tiny_tokenizer, messages):
    text = render(tiny_tokenizer, {"messages": messages})
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_raw_text_records_are_framed_by_bos_and_eos(tiny_tokenizer):
    assert render(tiny_tokenizer, {"text": "문단"}) == "<|begin_of_text|>문단<|end_of_text|>"


def test_assistant_spans_are_marked_for_the_loss_mask(tiny_tokenizer):
    out = tiny_tokenizer.apply_chat_template(CONVERSATIONS[1], return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = tiny_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == ("네, 참치김치찌개도 맛있어요.\n기름을 살짝 빼고 넣으세요.<|eot_id|>"
                      "마지막 5분 전에 넣으면 부서지지 않아요.<|eot_id|>")


@pytest.mark.shared_data
def test_real_llama3_tokenizer_keeps_its_own_template(shared_data):
    tokenizer = load_tokenizer(ModelSection(name_or_path=str(shared_data / "llama3-tokenizer"),
                                            pad_token="<|reserved_special_token_250|>"))
    assert tokenizer.chat_template == META_LLAMA3_TEMPLATE
    assert tokenizer("LLM 중에서 가장 유명한 LLM은 뭐야?", add_special_tokens=False)["input_ids"][:4] == [
        4178, 44, 72043, 57575]
    ours = tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False, chat_template=LLAMA3_CHAT_TEMPLATE)
    assert ours == render(tokenizer, {"messages": CONVERSATIONS[1]})
