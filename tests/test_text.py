import unicodedata

import pytest

from kotune.errors import KotuneError
from kotune.text import clean, decode_bytes, mask_names

pytestmark = pytest.mark.unit
KOREAN = "안녕하세요. 오늘 날씨가 좋네요!\n뷁 똠방각하 쌰갈"


@pytest.mark.parametrize("encoding, expected", [
    ("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("euc-kr", "euc-kr"), ("cp949", "euc-kr"),
])
def test_detects_korean_encodings(encoding, expected):
    text = "안녕하세요. 오늘 날씨가 좋네요!"
    decoded, used = decode_bytes(text.encode(encoding), "f.txt")
    assert decoded == text and used == expected


def test_cp949_only_syllables_are_detected_as_cp949():
    text = "똠방각하 뷁"  # outside EUC-KR's 2,350 precomposed syllables; CP949 extends the byte range
    with pytest.raises(UnicodeDecodeError):
        text.encode("cp949").decode("euc-kr")
    assert decode_bytes(text.encode("cp949"), "f.txt") == (text, "cp949")


def test_undecodable_bytes_name_file_and_line():
    raw = "첫 줄\n둘째 줄\n".encode() + b"\xff\xfe\xfd broken\n"
    with pytest.raises(KotuneError, match=r"f\.txt:3: not UTF-8, EUC-KR or CP949"):
        decode_bytes(raw, "f.txt")


def test_explicit_encoding_mismatch_is_an_error():
    with pytest.raises(KotuneError, match="f.csv:1: not valid utf-8"):
        decode_bytes("한국어".encode("cp949"), "f.csv", "utf-8")


def test_clean_composes_jamo_and_strips_control_characters():
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert len(decomposed) > 3
    assert clean(f"\u200b {decomposed}\x07\r\n끝 ") == "한국어\n끝"
    assert clean(decomposed, nfc=False) == decomposed


def test_mask_names():
    assert mask_names("**아 *이랑 만났어", "<name>") == "<name>아 <name>이랑 만났어"
    assert mask_names("**아", None) == "**아"
