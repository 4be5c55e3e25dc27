import pytest

from kotune.formats import Reject, alpaca

from .helpers import convert, data_cfg

pytestmark = pytest.mark.unit


def test_instruction_and_input_become_one_user_turn():
    record, _ = convert(alpaca, {"instruction": "요약해 주세요.", "input": "긴 글입니다.", "output": "짧은 글."})
    assert record == {"messages": [{"role": "user", "content": "요약해 주세요.\n\n긴 글입니다."},
                                   {"role": "assistant", "content": "짧은 글."}]}


def test_empty_input_and_system_prompt():
    record, _ = convert(alpaca, {"instruction": "안녕?", "input": "", "output": "안녕하세요."},
                        system_prompt="당신은 친절한 비서입니다.")
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]


def test_columns_map_a_csv_with_q_and_a():
    cfg = {"columns": {"instruction": "Q", "output": "A"}}
    assert alpaca.is_record({"Q": "질문", "A": "답"}, data_cfg(**cfg))
    record, _ = convert(alpaca, {"Q": "질문", "A": "답"}, **cfg)
    assert record["messages"][1]["content"] == "답"


@pytest.mark.parametrize("value, reason", [
    ({"instruction": "질문"}, "missing_field"),
    ({"instruction": "질문", "output": 3}, "bad_field"),
    ({"instruction": "질문", "output": "   "}, "no_assistant_turn"),
    ({"instruction": "", "output": "답"}, "no_user_turn"),
    (["not", "an", "object"], "not_an_object"),
])
def test_bad_records_are_rejected_with_a_reason(value, reason):
    with pytest.raises(Reject) as err:
        convert(alpaca, value)
    assert err.value.reason == reason
