import pytest

from kotune.formats import Reject, descend, dialog

from .helpers import convert, data_cfg

pytestmark = pytest.mark.unit


def aihub(*utterances):
    return {"header": {"dialogueInfo": {"dialogueID": "X"}},
            "body": [{"utterance": text, "participantID": speaker, "turnID": f"T{i}"}
                     for i, (speaker, text) in enumerate(utterances)]}


THREE_WAY = aihub(("P01", "**아 뭐해?"), ("P01", "밥 먹었어?"), ("P02", "응 먹었어"), ("P03", "나도 *이랑 먹었어"),
                  ("P02", "뭐 먹었는데?"))


def test_default_rule_second_speaker_is_assistant_and_masks_names():
    record, stats = convert(dialog, THREE_WAY)
    assert record["messages"] == [
        {"role": "user", "content": "<name>아 뭐해?\n밥 먹었어?"},
        {"role": "assistant", "content": "응 먹었어"},
        {"role": "user", "content": "나도 <name>이랑 먹었어"},
        {"role": "assistant", "content": "뭐 먹었는데?"},
    ]
    assert stats["turns_merged"] == 1 and stats["names_masked"] == 2


def test_labels_keep_speakers_apart():
    record, _ = convert(dialog, THREE_WAY, dialog={"assistant": "P03", "others": "labels", "name_token": None})
    roles = [(m["role"], m["content"]) for m in record["messages"]]
    assert roles[0] == ("user1", "**아 뭐해?\n밥 먹었어?")
    assert [r for r, _ in roles] == ["user1", "user2", "assistant"]  # the trailing user2 turn is trimmed


def test_named_assistant_must_speak():
    with pytest.raises(Reject) as err:
        convert(dialog, THREE_WAY, dialog={"assistant": "P09"})
    assert err.value.reason == "assistant_not_in_dialog"


def test_one_speaker_dialog_is_rejected():
    with pytest.raises(Reject) as err:
        convert(dialog, aihub(("P01", "혼잣말"), ("P01", "또 혼잣말")))
    assert err.value.reason == "too_few_speakers"


def test_user_system_pairs_per_turn():
    value = {"turns": [{"user_message": "발라드 추천해줘", "system_message": "이 노래 어때요?"},
                       {"user_message": "좋아", "system_message": "재생할게요."}]}
    assert dialog.is_record(value, data_cfg())
    record, _ = convert(dialog, value)
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]


def test_dialogs_nested_in_containers_are_found():
    document = {"numberOfItems": 2, "data": [THREE_WAY, THREE_WAY]}
    found = list(descend(document, lambda v: dialog.is_record(v, data_cfg())))
    assert [path for path, _ in found] == ["data[0]", "data[1]"]


def test_role_utterance_turns():
    value = {"dial_id": "x", "turns": [{"role": "user", "utterance": "S펜 어떻게 꺼내?"},
                                       {"role": "system", "utterance": "눌렀다 떼세요."}]}
    record, _ = convert(dialog, value)
    assert record["messages"][1] == {"role": "assistant", "content": "눌렀다 떼세요."}
