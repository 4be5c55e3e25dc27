import pytest

from kotune.config import TinyModelSection
from kotune.tiny_model import (
    PAD,
    build_model,
    build_tokenizer,
    llama3_special_tokens,
    pretrain,
    read_corpus,
    token_stream,
)

from .conftest import ROOT

pytestmark = pytest.mark.unit


def test_special_tokens_follow_llama3_order():
    tokens = llama3_special_tokens()
    assert len(tokens) == 256 and len(set(tokens)) == 256
    # Offsets from Llama 3's 128000: begin 0, end 1, start_header 6, end_header 7, eot 9, last reserved 250.
    assert tokens[0] == "<|begin_of_text|>" and tokens[1] == "<|end_of_text|>"
    assert tokens[6:10] == ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    assert tokens[255] == "<|reserved_special_token_250|>"


def test_tokenizer_layout(tiny_tokenizer):
    bpe = TinyModelSection().bpe_vocab_size
    assert len(tiny_tokenizer) == bpe + 256
    assert tiny_tokenizer.convert_tokens_to_ids("<|begin_of_text|>") == bpe
    assert tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>") == bpe + 9
    assert tiny_tokenizer.pad_token == PAD and tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer("안녕")["input_ids"][0] == tiny_tokenizer.bos_token_id  # BOS added, as Llama 3's does


def test_tokenizer_training_is_deterministic(tiny_tokenizer_dir, tmp_path):
    build_tokenizer(read_corpus(ROOT / "data" / "corpus"), TinyModelSection()).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tiny_tokenizer_dir / "tokenizer.json").read_bytes()


def test_korean_is_compressed(tiny_tokenizer):
    text = "운영체제는 컴퓨터의 자원을 관리하는 소프트웨어입니다."
    assert len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) < len(text.encode()) / 3


def test_pretraining_lowers_the_loss(tiny_tokenizer):
    import torch

    cfg = TinyModelSection(pretrain_steps=12, seq_len=32, batch_size=4)
    torch.manual_seed(cfg.seed)
    model = build_model(tiny_tokenizer, cfg)
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == len(tiny_tokenizer)
    stream = token_stream(tiny_tokenizer, read_corpus(ROOT / "data" / "corpus")[:40])
    losses = pretrain(model, stream, cfg)
    assert losses["final_loss"] < losses["initial_loss"] - 0.5
