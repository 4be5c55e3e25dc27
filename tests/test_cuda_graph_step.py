"""train.cuda_graph_step: micro-batches of whole rows replayed from one captured step.

A CUDA graph needs a GPU. On the CPU the capture is emulated: the step runs once to make its outputs, and
each replay runs it again on the graph's input tensors and writes its loss and metrics into those outputs,
as a replay rewrites a graph's memory. That checks kotune's side (which batches replay, the inputs copied in,
the gradients accumulated in the graph's tensors across micro-batches and optimizer steps, the metrics), and
the emulated capture also checks that nothing in the step waits for the device, which a real capture refuses.
"""

from __future__ import annotations

import json

import pytest
import torch

from kotune import cuda_graph_step, modeling, packed_attention
from kotune.config import ConfigError, load_params, params_from_dict
from kotune.stages import train
from tests.conftest import FAST, params_file, stage_args
from tests.test_packed_attention import reference_causal_varlen
from tests.test_sft_trainer import TRACKED, logged_rows
from tests.test_static_lm_head import DataDependentShapes

pytestmark = pytest.mark.unit

ROW = 48  # tokens per row: every text record is longer, so every row is cut to a whole row


class DeviceReads(DataDependentShapes):
    """The ops a CUDA graph cannot hold: reading a value back (`.item()`, `bool()`) or a data-dependent shape."""

    OPS = (*DataDependentShapes.OPS, "_local_scalar_dense", "is_nonzero")


def emulated_capture(model, reads: list):
    """CPU stand-in for cuda_graph_step.capture. A capture runs nothing, so the step's run here must leave the
    gradients as they were (an accumulating capture) or become the graph's own (a first one); a replay rewrites
    the outputs and, for a first graph, the gradients it made, in place."""
    def capture(step, pool=None):
        params = [p for p in model.parameters() if p.requires_grad]
        first = all(p.grad is None for p in params)
        kept = None if first else [p.grad.clone() for p in params]
        watch = DeviceReads()
        with watch:
            outputs = step()
        reads.extend(watch.seen)
        made = [p.grad for p in params]
        if not first:
            for grad, value in zip(made, kept, strict=True):
                grad.copy_(value)

        def replay():
            if first:
                for p in params:
                    p.grad = None
            for static, fresh in zip(outputs, step(), strict=True):
                if static is not None:
                    static.copy_(fresh)
            if first:  # the kernels wrote into the graph's gradients; the weights' .grad is left as it was
                for p, grad in zip(params, made, strict=True):
                    grad.copy_(p.grad)
                    p.grad = None

        return replay, outputs, "pool"

    return capture


@pytest.fixture(scope="module")
def whole_rows_data(tmp_path_factory):
    """Korean text records, each longer than ROW tokens: every batch is whole rows with no padding."""
    root = tmp_path_factory.mktemp("whole-rows")
    sentences = ["김치찌개를 끓일 때는 잘 익은 김치를 먼저 볶는다.", "운영체제는 프로그램이 하드웨어를 나눠 쓰게 한다.",
                 "한국의 사계절은 봄, 여름, 가을, 겨울로 뚜렷하다.", "서울에서 부산까지 기차로 세 시간쯤 걸린다."]
    records = [{"text": " ".join(sentences[(i + j) % len(sentences)] for j in range(8))} for i in range(16)]
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                      encoding="utf-8")
    (root / "eval.jsonl").write_text("", encoding="utf-8")
    return root


@pytest.fixture
def varlen_on_cpu(monkeypatch):
    """kotune's attention without its CUDA-only kernel (whole rows go to SDPA, which the CPU has)."""
    monkeypatch.setattr(modeling, "check_attention", lambda model, device: packed_attention.register())
    monkeypatch.setattr(packed_attention, "_causal_varlen", reference_causal_varlen)


def build(work, tiny_model_dir, data, device="cpu", **train_params):
    work.mkdir()
    params = load_params(params_file(work / "params.yaml", tiny_model_dir, data={"max_tokens": ROW},
                                     model={"attn_implementation": "varlen"}, lora={"lora_dropout": 0.0}, train={
        **FAST, "max_steps": 4, "logging_steps": 1, "per_device_train_batch_size": 2, "max_length": ROW,
        "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "device": device, **train_params}))
    args = train.parse_args(stage_args(work, work / "params.yaml", data))
    trainer, _, _ = train.build_trainer(params, args, device, "test", train.load_data(data))
    return trainer


# 8 micro-batches either way. The first 2 run as before (compile, warm-up); then each kind is captured (the first
# micro-batch of an optimizer step; with accumulation, the later one) and every later one replays.
@pytest.mark.parametrize("embeddings_on_cpu, accumulation, head_grad_in_forward, counts", [
    (False, 2, False, {"whole rows, without the graph": 2, "replayed, first": 3, "replayed, accumulating": 3}),
    (True, 2, False, {"whole rows, without the graph": 2, "replayed, first": 3, "replayed, accumulating": 3}),
    (False, 1, False, {"whole rows, without the graph": 2, "replayed, first": 6}),
    (True, 2, True, {"whole rows, without the graph": 2, "replayed, first": 3, "replayed, accumulating": 3}),
], ids=["embeddings-on-device", "embeddings-on-cpu", "no-accumulation", "head-grad-in-forward"])
def test_replayed_micro_batches_train_and_log_like_steps_without_the_graph(
        tmp_path, tiny_model_dir, whole_rows_data, varlen_on_cpu, monkeypatch, embeddings_on_cpu, accumulation,
        head_grad_in_forward, counts):
    steps = {"input_embeddings_on_cpu": embeddings_on_cpu, "gradient_accumulation_steps": accumulation,
             "max_steps": 8 // accumulation}
    plain = build(tmp_path / "plain", tiny_model_dir, whole_rows_data, **steps)  # TRL's own head
    plain.train()
    want = logged_rows(plain)

    reads = []
    graphed = build(tmp_path / "graphed", tiny_model_dir, whole_rows_data, cuda_graph_step=True,
                    lm_head_grad_in_forward=head_grad_in_forward, **steps)
    monkeypatch.setattr(cuda_graph_step, "capture", emulated_capture(graphed.model, reads))
    graphed.train()
    got = logged_rows(graphed)

    assert dict(graphed.graph_step_counts) == counts
    assert reads == [], "the captured step must not read anything back from the device"
    assert graphed.state.num_input_tokens_seen == plain.state.num_input_tokens_seen == 8 * 2 * ROW
    assert len(got) == len(want) == 8 // accumulation
    for mine, theirs in zip(got, want, strict=True):
        for key in TRACKED:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4), key


def test_padded_or_packed_batches_run_without_the_graph(tmp_path, tiny_model_dir, processed, varlen_on_cpu,
                                                         monkeypatch):
    """The embedded default's chats are padded to the longest in each batch: no shape of whole rows comes often
    enough to be captured (a batch of two chats of one length is whole rows, but runs as before)."""
    trainer = build(tmp_path / "padded", tiny_model_dir, processed, cuda_graph_step=True, max_length=256)
    monkeypatch.setattr(cuda_graph_step, "capture", emulated_capture(trainer.model, []))
    trainer.train()
    counts = trainer.graph_step_counts
    assert not any("replayed" in kind for kind in counts)
    assert counts["not whole rows"] >= 4 and sum(counts.values()) == 8


def test_which_batches_are_whole_rows():
    ids = torch.ones(2, 4, dtype=torch.long)
    assert cuda_graph_step.is_whole_rows({"input_ids": ids, "attention_mask": torch.ones(2, 4)})
    assert cuda_graph_step.is_whole_rows({"input_ids": ids})
    assert not cuda_graph_step.is_whole_rows({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]] * 2)})
    assert not cuda_graph_step.is_whole_rows({"input_ids": ids, "position_ids": torch.arange(4).expand(2, 4)})
    assert not cuda_graph_step.is_whole_rows({"input_ids": ids.reshape(-1)})


def test_a_failed_capture_leaves_the_run_training_without_graphs(tmp_path, tiny_model_dir, whole_rows_data,
                                                                 varlen_on_cpu, monkeypatch, caplog):
    def refuse(step, pool=None):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph_step, "capture", refuse)
    trainer = build(tmp_path / "refused", tiny_model_dir, whole_rows_data, cuda_graph_step=True)
    trainer.train()
    assert "could not be captured" in caplog.text and "not permitted" in caplog.text
    assert not any("replayed" in kind for kind in trainer.graph_step_counts) and trainer.state.global_step == 4


@pytest.mark.parametrize("changes, message", [
    ({"train": {"cuda_graph_step": True, "packing": True}}, "packed rows"),
    ({"train": {"cuda_graph_step": True}, "model": {"attn_implementation": "sdpa"}, "lora": {"lora_dropout": 0.0}},
     "attn_implementation: varlen"),
    ({"train": {"cuda_graph_step": True}, "model": {"attn_implementation": "varlen"}}, "lora_dropout"),
    ({"train": {"cuda_graph_step": True, "backend": "unsloth"}, "model": {"attn_implementation": "varlen"}},
     "offloaded"),
])
def test_refuses_what_a_graph_cannot_replay(changes, message):
    with pytest.raises(ConfigError, match=message):
        params_from_dict(changes)


@pytest.mark.gpu
@pytest.mark.parametrize("head_grad_in_forward", [False, True], ids=["trl-head", "head-grad-in-forward"])
def test_a_real_graph_replays_and_trains_like_steps_without_it(tmp_path, tiny_model_dir, whole_rows_data,
                                                              head_grad_in_forward):
    """On a GPU: the step is captured for real, every later micro-batch of whole rows replays it, and the
    logged figures stay those of the same run without the graph and with TRL's head (bf16 kernels: within 1e-3)."""
    def trained(work, **train_params):
        trainer = build(work, tiny_model_dir, whole_rows_data, device="cuda", **train_params)
        trainer.train()
        return trainer

    want = logged_rows(trained(tmp_path / "plain", input_embeddings_on_cpu=True))
    graphed = trained(tmp_path / "graphed", input_embeddings_on_cpu=True, cuda_graph_step=True,
                      lm_head_grad_in_forward=head_grad_in_forward)
    assert dict(graphed.graph_step_counts) == {"whole rows, without the graph": 2, "replayed, first": 3,
                                               "replayed, accumulating": 3}
    got = logged_rows(graphed)
    assert len(got) == len(want) == 4
    for mine, theirs in zip(got, want, strict=True):
        for key in ("loss", "grad_norm", "entropy", "num_tokens"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-3), key
