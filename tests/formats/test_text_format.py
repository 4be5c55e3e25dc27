import pytest

from kotune.formats import Reject, text

from .helpers import convert

pytestmark = pytest.mark.unit


def test_raw_text_record():
    record, _ = convert(text, {"text": "한국어 문단입니다.\x00"})
    assert record == {"text": "한국어 문단입니다."}


def test_column_mapping_and_empty_text():
    assert convert(text, {"body": "본문"}, columns={"text": "body"})[0] == {"text": "본문"}
    with pytest.raises(Reject, match="empty_text"):
        convert(text, {"text": " \u200b "})
