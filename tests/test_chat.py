"""kotune chat / generate on the merged tiny model and on base + adapter; transformers' pipeline loads it."""

import io

import pytest

from kotune import chat
from kotune.stages import merge

from .conftest import DATA, params_file

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tiny_model_dir, trained, processed):
    work = tmp_path_factory.mktemp("chat")
    params = params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={"max_length": 256})
    merge.main(["--params", str(params), "--adapter", str(trained / "adapter"), "--data", str(processed),
                "--out", str(work / "merged"), "--metrics", str(work / "merge.json")])
    return work / "merged"


def test_chat_loop_through_stdin(merged):
    args = chat.parse_args([str(merged), "--max-new-tokens", "8", "--seed", "0", "--system", "친절하게 답하세요."],
                           "chat")
    model, tokenizer = chat.load(args.model)
    out = io.StringIO()
    typed = io.StringIO("안녕?\n뭐 해?\n/reset\n운영체제가 뭐야?\n/exit\n")
    history = chat.chat_loop(model, tokenizer, args, typed, out)
    assert [m["role"] for m in history] == ["system", "user", "assistant"]  # /reset dropped the first two turns
    assert history[1]["content"] == "운영체제가 뭐야?"
    assert out.getvalue().count("> ") == 5 and "(new conversation)" in out.getvalue()


def test_generate_from_a_file_with_the_adapter(tmp_path, trained):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("김치찌개 끓이는 법?\n\n한국의 수도는?\n", encoding="utf-8")
    out = io.StringIO()
    chat.generate_main([str(trained / "adapter"), "--file", str(prompts), "--greedy", "--max-new-tokens", "5"], out)
    assert out.getvalue().count("### ") == 2 and "### 한국의 수도는?" in out.getvalue()


def test_transformers_pipeline_loads_the_merged_model(merged):
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(merged))
    result = generator([{"role": "user", "content": "안녕하세요"}], max_new_tokens=5, do_sample=False)
    assert result[0]["generated_text"][-1]["role"] == "assistant"
