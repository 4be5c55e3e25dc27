"""Packed rows must train exactly like the same examples unpacked: no attention across examples, same loss.

On the CPU the FlashAttention kernel is replaced by a per-example SDPA reference, which checks kotune's
side (boundaries, reshapes, un-padding, registration); the GPU test runs PyTorch's real varlen kernel.
"""

from __future__ import annotations

import pytest
import torch

from kotune import packed_attention

pytestmark = pytest.mark.unit


def reference_causal_varlen(q, k, v, cu, longest, scale):
    """Per-example causal SDPA over (tokens, heads, dim) slices: what the varlen kernel computes."""
    out = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        out.append(torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=qs.shape[0] != ks.shape[0]).transpose(0, 1))
    return torch.cat(out)


@pytest.fixture
def cpu_kernel(monkeypatch):
    packed_attention.register()
    monkeypatch.setattr(packed_attention, "_causal_varlen", reference_causal_varlen)


def test_sequence_boundaries_restart_at_zero_and_at_each_row():
    cu, longest = packed_attention.sequence_boundaries(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    cu, longest = packed_attention.sequence_boundaries(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert cu.tolist() == [0, 3, 6] and longest == 3  # a row never continues the previous row


def test_boundaries_are_recomputed_for_a_new_batch():
    cache = packed_attention._Boundaries()
    first = torch.tensor([[0, 1, 0, 1]])
    assert cache(first, 1, 4)[0].tolist() == [0, 2, 4]
    assert cache(torch.tensor([[0, 1, 2, 3]]), 1, 4)[0].tolist() == [0, 4]


def load(model_dir, implementation: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=implementation, dtype=torch.float32)
    return model.eval()


def examples(tokenizer) -> list[list[int]]:
    texts = ["김치찌개 맛있게 끓이는 방법을 알려줘.", "운영체제가 뭐하는 거야?",
             "한국의 사계절에 대해 설명해 주세요. 봄, 여름."]
    return [tokenizer(text)["input_ids"] for text in texts]


def test_a_packed_row_gives_each_example_its_unpacked_logits(cpu_kernel, tiny_model_dir, tiny_tokenizer):
    ids = examples(tiny_tokenizer)
    sdpa, varlen = load(tiny_model_dir, "sdpa"), load(tiny_model_dir, packed_attention.NAME)
    packed = torch.tensor([sum(ids, [])])
    positions = torch.tensor([sum((list(range(len(x))) for x in ids), [])])
    with torch.no_grad():
        packed_logits = varlen(input_ids=packed, position_ids=positions).logits[0]
        offset = 0
        for example in ids:
            alone = sdpa(input_ids=torch.tensor([example])).logits[0]
            torch.testing.assert_close(packed_logits[offset:offset + len(example)], alone, atol=1e-5, rtol=1e-5)
            offset += len(example)
        # Without the restarts the later examples would see the earlier ones: the check can fail.
        leaked = varlen(input_ids=packed).logits[0]
        assert not torch.allclose(leaked[len(ids[0]):], packed_logits[len(ids[0]):], atol=1e-3)


def test_a_padded_batch_is_unpadded(cpu_kernel, tiny_model_dir, tiny_tokenizer):
    ids = examples(tiny_tokenizer)
    sdpa, varlen = load(tiny_model_dir, "sdpa"), load(tiny_model_dir, packed_attention.NAME)
    batch = tiny_tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        want, got = sdpa(**batch).logits, varlen(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", packed_attention.NAME])
def test_packed_loss_equals_unpacked_loss(cpu_kernel, tiny_model_dir, tiny_tokenizer, implementation):
    """TRL's padding-free collator (what train.packing uses) against its padded batches, same examples."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"input_ids": x} for x in examples(tiny_tokenizer)]
    model = load(tiny_model_dir, implementation)
    pad = tiny_tokenizer.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)(rows)
    packed = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): transformers detects packed rows only without a cache.
        unpacked_loss = load(tiny_model_dir, "sdpa")(**padded, use_cache=False).loss
        packed_loss = model(**packed, use_cache=False).loss
    torch.testing.assert_close(packed_loss, unpacked_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_real_varlen_kernel_matches_unpacked_on_cuda(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    packed_attention.register()
    rows = [{"input_ids": x} for x in examples(tiny_tokenizer)]
    pad = tiny_tokenizer.pad_token_id
    models = {name: AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name,
                                                         dtype=torch.bfloat16, device_map={"": 0}).eval()
              for name in ("sdpa", packed_attention.NAME)}
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)(rows)
    packed = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)(rows)
    with torch.no_grad():
        want = models["sdpa"](**{k: v.cuda() for k, v in padded.items()}).loss.float()
        got = models[packed_attention.NAME](**{k: v.cuda() if torch.is_tensor(v) else v
                                             for k, v in packed.items()}).loss.float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)  # bf16


@pytest.mark.parametrize("signature", ["2.10", "2.11", "later"])
def test_every_varlen_signature_gets_causal_grouped_query_attention(monkeypatch, signature):
    """torch 2.10 takes is_causal, 2.11 window_size without enable_gqa (the GPU image), later both."""
    import torch.nn.attention.varlen as varlen

    seen = {}

    def record(q, k, v, *positional, **kwargs):
        seen.update(kwargs, kv_heads=k.shape[1])
        return q

    fakes = {
        "2.10": lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False: record(
            q, k, v, scale=scale, is_causal=is_causal),
        "2.11": lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1): record(
            q, k, v, scale=scale, window_size=window_size),
        "later": lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False:
            record(q, k, v, scale=scale, window_size=window_size, enable_gqa=enable_gqa),
    }
    monkeypatch.setattr(varlen, "varlen_attn", fakes[signature])
    attend = packed_attention._kernel()
    q, kv = torch.zeros(6, 4, 8), torch.zeros(6, 2, 8)
    attend(q, kv, kv, torch.tensor([0, 6], dtype=torch.int32), 6, 0.5)
    assert seen.get("is_causal") is True or seen.get("window_size") == (-1, 0)
    assert seen["kv_heads"] == (2 if signature == "later" else 4) and seen["scale"] == 0.5


def test_whole_rows_go_to_sdpa_not_the_varlen_kernel(cpu_kernel, monkeypatch, tiny_model_dir, tiny_tokenizer):
    """No restarts in the position ids (a long document per row): SDPA's causal kernel, same logits."""
    def refuse(*args):
        raise AssertionError("varlen kernel used for whole rows")

    ids = torch.tensor([examples(tiny_tokenizer)[2]])
    with torch.no_grad():
        want = load(tiny_model_dir, "sdpa")(input_ids=ids).logits
        monkeypatch.setattr(packed_attention, "_causal_varlen", refuse)
        got = load(tiny_model_dir, packed_attention.NAME)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
