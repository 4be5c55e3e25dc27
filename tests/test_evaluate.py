"""evaluate: metrics on known tiny cases, and the stage on the trained tiny adapter."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from kotune import evaluation
from kotune.config import EvalSection
from kotune.stages import evaluate, merge

from .conftest import DATA, params_file

pytestmark = pytest.mark.unit


class Uniform(torch.nn.Module):
    """Equal logits over the vocabulary: every token costs exactly ln(V)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.weight = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_loss_of_a_uniform_model_is_log_vocab(tiny_tokenizer):
    records = [{"messages": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "답변입니다"}]},
               {"text": "그냥 문단입니다."}]
    result = evaluation.heldout_loss(Uniform(len(tiny_tokenizer)), tiny_tokenizer, records, EvalSection(batch_size=2))
    assert result["eval_loss"] == pytest.approx(math.log(len(tiny_tokenizer)), abs=1e-4)
    assert result["perplexity"] == pytest.approx(len(tiny_tokenizer), rel=1e-3)
    answer = tiny_tokenizer("답변입니다<|eot_id|>", add_special_tokens=False)["input_ids"]
    text = tiny_tokenizer("<|begin_of_text|>그냥 문단입니다.<|end_of_text|>", add_special_tokens=False)["input_ids"]
    assert result["tokens"] == len(answer) + len(text) - 1  # assistant turn + EOT; text minus its first token


def test_option_loglikelihood_of_a_uniform_model(tiny_tokenizer):
    score = evaluation.loglikelihood(Uniform(len(tiny_tokenizer)), tiny_tokenizer)
    option = tiny_tokenizer(" 서울입니다", add_special_tokens=False)["input_ids"]
    assert score("수도는", " 서울입니다") == pytest.approx(-len(option) * math.log(len(tiny_tokenizer)), rel=1e-3)


def test_eos_stop_is_detected(tiny_tokenizer):
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    word = tiny_tokenizer("안녕", add_special_tokens=False)["input_ids"]

    class Scripted(Uniform):
        def generate(self, input_ids, attention_mask=None, generation_config=None):
            tails = [word + [eot] + [tiny_tokenizer.pad_token_id] * 2, word * 3]
            width = max(map(len, tails))
            rows = [input_ids[i].tolist() + t + [tiny_tokenizer.pad_token_id] * (width - len(t))
                    for i, t in enumerate(tails)]
            return torch.tensor(rows)

    out = evaluation.generate(Scripted(len(tiny_tokenizer)), tiny_tokenizer, ["하나", "둘"], EvalSection(), False)
    assert [g.stopped for g in out] == [True, False] and out[0].text == "안녕"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, trained, processed):
    work = tmp_path_factory.mktemp("evaluate")
    params = params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={"max_length": 256},
                         eval={"max_new_tokens": 16, "prompts": ["운영체제가 뭐하는 거야?", "안녕?"], "mc_limit": 12})
    merge.main(["--params", str(params), "--adapter", str(trained / "adapter"), "--data", str(processed),
                "--out", str(work / "merged"), "--metrics", str(work / "merge.json")])
    evaluate.main(["--params", str(params), "--data", str(processed), "--adapter", str(trained / "adapter"),
                   "--merged", str(work / "merged"), "--tensorboard", str(trained / "tb"),
                   "--metrics", str(work / "eval.json"), "--reports", str(work / "reports")])
    return work


def test_stage_compares_base_adapter_and_merged(evaluated):
    metrics = json.loads((evaluated / "eval.json").read_text())
    assert metrics["merged"]["eval_loss"] < metrics["base"]["eval_loss"]
    assert metrics["adapter"]["eval_loss"] == pytest.approx(metrics["merged"]["eval_loss"], abs=0.05)
    assert 0 <= metrics["merged"]["eos_stop_rate"] <= 1
    assert metrics["mc"]["ko_mc_builtin"]["items"] == 12 and metrics["mc"]["ko_mc_builtin"]["chance"] == 0.25


def test_reports_hold_curves_tables_and_generations(evaluated):
    html = (evaluated / "reports" / "eval.html").read_text(encoding="utf-8")
    markdown = (evaluated / "reports" / "eval.md").read_text(encoding="utf-8")
    assert "<polyline" in html and "운영체제가 뭐하는 거야?" in html and "ko_mc_builtin" in html
    assert "운영체제가 뭐하는 거야?" in markdown and "merged" in markdown


def test_lm_eval_hook_skips_with_a_reason():
    notes = []
    assert evaluate.lm_eval_results(("kobest_copa",), "models/merged", notes) == {}
    assert notes and "kobest_copa" in notes[0] or "lm-evaluation-harness" in notes[0]


@pytest.mark.shared_data
def test_kobest_tasks_from_params(tmp_path, tiny_model_dir, trained, processed, evaluated, shared_data):
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train={"max_length": 256},
                         eval={"max_new_tokens": 4, "prompts": ["안녕?"], "mc_limit": 20,
                               "mc_tasks": [str(shared_data / "kobest" / "COPA" / "dev.tsv"),
                                            str(shared_data / "kobest" / "HellaSwag" / "dev.tsv")]})
    evaluate.main(["--params", str(params), "--data", str(processed), "--adapter", str(trained / "adapter"),
                   "--merged", str(evaluated / "merged"), "--tensorboard", str(trained / "tb"),
                   "--metrics", str(tmp_path / "eval.json"), "--reports", str(tmp_path / "reports")])
    mc = json.loads((tmp_path / "eval.json").read_text())["mc"]
    assert mc["COPA/dev"]["chance"] == 0.5 and mc["HellaSwag/dev"]["chance"] == 0.25
    assert mc["COPA/dev"]["items"] == 20 and 0 <= mc["COPA/dev"]["merged"] <= 1
