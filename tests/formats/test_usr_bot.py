import pytest

from kotune.formats import Reject, usr_bot

from .helpers import convert, data_cfg

pytestmark = pytest.mark.unit


def test_usr_bot_turns():
    text = "<usr> 운영체제가 뭐야?\n<bot> 컴퓨터 자원을 관리하는 소프트웨어예요.\n<usr> 예시는?\n<bot> 리눅스요."
    assert usr_bot.is_record({"text": text}, data_cfg())
    record, _ = convert(usr_bot, {"text": text})
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]
    assert record["messages"][1]["content"] == "컴퓨터 자원을 관리하는 소프트웨어예요."


def test_kochatgpt_markers_and_merging_of_one_role():
    text = "<사람>: 안녕\n<사람>: 거기 있어?\n<챗봇>: 네, 여기 있어요."
    record, stats = convert(usr_bot, {"text": text})
    assert record["messages"][0] == {"role": "user", "content": "안녕\n거기 있어?"}
    assert stats["turns_merged"] == 1


def test_custom_markers_from_params():
    cfg = {"usr_bot": {"user": ["### 질문:"], "assistant": ["### 답변:"]}}
    record, _ = convert(usr_bot, {"text": "### 질문: 1+1?\n### 답변: 2"}, **cfg)
    assert record["messages"][1]["content"] == "2"


def test_plain_text_is_not_usr_bot():
    assert not usr_bot.is_record({"text": "그냥 문단입니다."}, data_cfg())


def test_text_before_the_first_marker_is_rejected():
    with pytest.raises(Reject) as err:
        convert(usr_bot, {"text": "머리말 <usr> 질문 <bot> 답"})
    assert err.value.reason == "text_before_first_turn"
