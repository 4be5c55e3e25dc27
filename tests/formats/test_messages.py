import pytest

from kotune.formats import Reject, messages

from .helpers import convert, data_cfg

pytestmark = pytest.mark.unit


def test_openai_messages_pass_through_cleaned():
    record, _ = convert(messages, {"messages": [{"role": "user", "content": " 안녕\u200b "},
                                                {"role": "assistant", "content": "네, 안녕하세요."}]})
    assert record["messages"][0] == {"role": "user", "content": "안녕"}


def test_sharegpt_conversations():
    value = {"conversations": [{"from": "system", "value": "규칙"}, {"from": "human", "value": "질문"},
                               {"from": "gpt", "value": "답"}]}
    assert messages.is_record(value, data_cfg())
    record, _ = convert(messages, value)
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]


def test_trailing_prompt_without_answer_is_trimmed_and_counted():
    record, stats = convert(messages, {"messages": [
        {"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]})
    assert len(record["messages"]) == 2 and stats["turns_dropped_trailing_prompt"] == 1


@pytest.mark.parametrize("value, reason", [
    ({"messages": [{"role": "narrator", "content": "x"}]}, "unknown_role"),
    ({"messages": [{"role": "user"}]}, "missing_field"),
    ({"messages": ["hi"]}, "bad_turn"),
    ({"messages": [{"role": "user", "content": "질문만"}]}, "no_assistant_turn"),
    ({"other": []}, "missing_field"),
])
def test_bad_records(value, reason):
    with pytest.raises(Reject) as err:
        convert(messages, value)
    assert err.value.reason == reason
