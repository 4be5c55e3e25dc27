import pytest

from kotune.config import DataSection, Params, load_params, params_from_dict
from kotune.errors import ConfigError
from kotune.typed_config import Origin, build, read_yaml_with_lines, to_dict

pytestmark = pytest.mark.unit


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.001\n  learnig_rate: 0.002\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert f"{path}:3: train.learnig_rate: unknown key" in message
    assert "did you mean 'learning_rate'?" in message


def test_unknown_nested_key(tmp_path):
    path = write(tmp_path, "data:\n  dialog:\n    asistant: P02\n")
    with pytest.raises(ConfigError, match=r":3: data.dialog.asistant: unknown key; did you mean 'assistant'"):
        load_params(path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="trian: unknown section; did you mean 'train'"):
        load_params(write(tmp_path, "trian: {}\n"))


@pytest.mark.parametrize("text, expected", [
    ("quant:\n  bnb_4bit_quant_type: nf8\n", "'nf8' is not one of 'nf4', 'fp4'"),
    ("lora:\n  lora_r: sixteen\n", "lora.lora_r: expected an integer"),
    ("lora:\n  lora_r: 0\n", "lora_r and lora_alpha must be >= 1"),
    ("train:\n  gradient_checkpointing: 1\n", "expected true or false"),
    ("data:\n  format: jsonl\n", "format 'jsonl' is not one of"),
    ("data:\n  columns: {question: Q}\n", "'question' is not a canonical field"),
    ("data:\n  max_tokens: 4096\n", "data.max_tokens (4096) exceeds train.max_length"),
    ("lora:\n  target_modules: q_proj\n", "expected a list"),
    ("train:\n  mixed_precision: no\n", "False is not one of 'auto', 'bf16', 'fp16', 'no' (YAML reads a bare no"),
])
def test_bad_values_are_errors(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, text))
    assert expected in str(err.value)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads 2e-4 as a string; users write it that way all the time.
    assert load_params(write(tmp_path, "train:\n  learning_rate: 2e-4\n")).train.learning_rate == 2e-4


def test_lists_become_tuples_and_round_trip():
    section = build(DataSection, {"usr_bot": {"user": ["<u>"], "assistant": ["<a>"]}}, "data", Origin())
    assert section.usr_bot.user == ("<u>",)
    assert to_dict(section)["usr_bot"]["user"] == ["<u>"]


def test_missing_sections_take_defaults():
    assert params_from_dict({}) == Params()


def test_line_numbers_of_nested_keys(tmp_path):
    _, lines = read_yaml_with_lines(write(tmp_path, "a:\n  b:\n    c: 1\nd: 2\n"))
    assert lines == {"a": 1, "a.b": 2, "a.b.c": 3, "d": 4}
