"""The shipped samples are generated from data/samples/source/ and must not drift from it."""

import importlib.util
import json

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.unit


def load_generator():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "scripts" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_samples_match_the_generator(tmp_path):
    files = load_generator().write_all(tmp_path)
    for name, content in files.items():
        assert (ROOT / "data" / "samples" / name).read_bytes() == content, f"regenerate {name}"


def test_sources_are_well_formed():
    source = ROOT / "data" / "samples" / "source"
    instructions = [json.loads(x) for x in (source / "instructions.jsonl").read_text().splitlines()]
    chats = [json.loads(x) for x in (source / "chats.jsonl").read_text().splitlines()]
    dialogs = [json.loads(x) for x in (source / "dialogs.jsonl").read_text().splitlines()]
    assert (len(instructions), len(chats), len(dialogs)) == (320, 70, 45)
    assert len({i["instruction"] for i in instructions}) == 320
    assert all(c["messages"][-1]["role"] == "assistant" for c in chats)
    assert all({u["speaker"] for u in d["utterances"]} == set(d["speakers"]) for d in dialogs)


def test_corpus_is_separate_from_the_samples():
    """The tiny base must not see eval answers in pretraining, or base-vs-tuned means nothing."""
    corpus = "".join(p.read_text() for p in (ROOT / "data" / "corpus").glob("*.txt"))
    chats = [json.loads(x) for x in (ROOT / "data" / "samples" / "source" / "chats.jsonl").read_text().splitlines()]
    answers = [m["content"] for c in chats for m in c["messages"]
               if m["role"] == "assistant" and len(m["content"]) > 40]
    assert not [a for a in answers if a in corpus]
