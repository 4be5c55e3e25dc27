import pytest

from kotune.config import ModelSection
from kotune.errors import KotuneError
from kotune.modeling import load_tokenizer

pytestmark = pytest.mark.unit


def test_pad_token_equal_to_eos_is_refused(tiny_tokenizer_dir):
    with pytest.raises(KotuneError, match="pad token must exist and differ from EOS"):
        load_tokenizer(ModelSection(name_or_path=str(tiny_tokenizer_dir), pad_token="<|end_of_text|>"))


def test_unknown_pad_token_is_refused(tiny_tokenizer_dir):
    with pytest.raises(KotuneError, match="not in the vocabulary"):
        load_tokenizer(ModelSection(name_or_path=str(tiny_tokenizer_dir), pad_token="<pad>"))


def test_offline_hub_model_gets_a_clear_message():
    with pytest.raises(KotuneError) as err:
        load_tokenizer(ModelSection(name_or_path="nobody-kotune/no-such-model-xyz"))
    assert "HF_HOME" in str(err.value) and "local folder" in str(err.value)
