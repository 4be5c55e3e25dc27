"""Causal attention kernels on this GPU, forward and forward + backward: python bench/attention_kernels.py

Llama-3-8B's attention shape (32 query heads, 8 key/value heads, head dim 128, bf16) at the lengths the
train presets use: one 131,072-token document (qlora-long-80gb), two full 2,048-token rows (the issue's
full-length shape) and 4,096 tokens packed from 40 short examples (qlora-24gb on Korean chats). Each
kernel is timed against FlashAttention-2 (SDPA's flash backend) in the same run; a kernel that cannot
take the shape says why. Prints one JSON line per measurement and a table.
"""

import json
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, DIM = 32, 8, 128


def timed(run, repeats: int) -> float:
    run()  # warm-up: kernel selection, cuDNN plan building
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def sdpa(backend: SDPBackend, gqa: bool):
    def attend(q, k, v):
        if not gqa:
            k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=1) for t in (k, v))
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    return attend


def varlen(cu: torch.Tensor, longest: int):
    from kotune.packed_attention import _kernel

    kernel = _kernel()

    def attend(q, k, v):
        batch, _, seq, _ = q.shape
        flat = [t.transpose(1, 2).reshape(batch * seq, t.shape[1], DIM) for t in (q, k, v)]
        return kernel(*flat, cu, longest, None).view(batch, seq, HEADS, DIM).transpose(1, 2)

    return attend


def cudnn_varlen(cu: torch.Tensor, longest: int, gqa: bool):
    """cuDNN's ragged (packed) causal kernel, the one SDPA runs for jagged nested tensors."""

    def attend(q, k, v):
        batch, _, seq, _ = q.shape
        if not gqa:
            k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=1) for t in (k, v))
        flat = [t.transpose(1, 2).reshape(batch * seq, t.shape[1], DIM) for t in (q, k, v)]
        out = torch.ops.aten._cudnn_attention_forward(*flat, None, cu, cu, longest, longest, True, 0.0, True)[0]
        return out.view(batch, seq, HEADS, DIM).transpose(1, 2)

    return attend


def measure(label: str, attend, batch: int, seq: int, flops: float, reference=None) -> dict:
    q = torch.randn(batch, HEADS, seq, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, KV_HEADS, seq, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    grad = torch.randn(batch, HEADS, seq, DIM, device="cuda", dtype=torch.bfloat16)
    repeats = max(2, min(50, int(5e14 / flops)))  # a few seconds per kernel at any length
    try:
        out = attend(q, k, v)
        error = 0.0
        if reference:  # the output and the three gradients against the reference kernel's
            mine = [out, *torch.autograd.grad(out, (q, k, v), grad)]
            want = reference(q, k, v)
            theirs = [want, *torch.autograd.grad(want, (q, k, v), grad)]
            error = max((a.float() - b.float()).abs().max().item() for a, b in zip(mine, theirs, strict=True))
        forward = timed(lambda: attend(q, k, v), repeats)
        both = timed(lambda: attend(q, k, v).backward(grad), repeats)
    except Exception as problem:  # a backend refusing the shape is a result, not a crash
        return {"kernel": label, "seq": seq, "batch": batch, "error": str(problem).split("\n")[0][:160]}
    finally:
        torch.cuda.empty_cache()
    return {"kernel": label, "batch": batch, "seq": seq, "forward_ms": round(forward * 1e3, 2),
            "forward_backward_ms": round(both * 1e3, 2), "forward_tflops": round(flops / forward / 1e12),
            "max_abs_diff": round(error, 4)}


def causal_flops(lengths: list[int]) -> float:
    """Forward FLOPs of causal attention: QK^T and PV over the lower triangle."""
    return sum(2 * 2 * HEADS * DIM * n * n / 2 for n in lengths)


def main() -> None:
    rows = []
    flash = sdpa(SDPBackend.FLASH_ATTENTION, gqa=True)
    for batch, seq in [(1, int(s)) for s in os.environ.get("LONG", "131072").split(",")] + [(2, 2048)]:
        flops = causal_flops([seq] * batch)
        for label, attend in [("sdpa flash, native GQA", flash),
                              ("sdpa cudnn, native GQA", sdpa(SDPBackend.CUDNN_ATTENTION, True)),
                              ("sdpa cudnn, repeated k/v", sdpa(SDPBackend.CUDNN_ATTENTION, False)),
                              ("sdpa efficient, native GQA", sdpa(SDPBackend.EFFICIENT_ATTENTION, True)),
                              ("varlen_attn (FA2)", varlen(torch.tensor([seq * i for i in range(batch + 1)],
                                                                        dtype=torch.int32, device="cuda"), seq))]:
            rows.append(measure(label, attend, batch, seq, flops, None if attend is flash else flash))
            print(json.dumps(rows[-1]), flush=True)
    # 4,096 tokens of packed short examples (~100 tokens each), as qlora-24gb trains on Korean chats
    lengths = [103] * 39 + [4096 - 103 * 39]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    packed = varlen(cu, max(lengths))
    for label, attend in [("varlen_attn (FA2), 40 packed examples", packed),
                          ("cudnn ragged, native GQA, 40 packed examples", cudnn_varlen(cu, max(lengths), True)),
                          ("cudnn ragged, repeated k/v, 40 packed examples", cudnn_varlen(cu, max(lengths), False))]:
        rows.append(measure(label, attend, 1, 4096, causal_flops(lengths), None if attend is packed else packed))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| kernel | batch x seq | forward ms | forward + backward ms | forward TFLOP/s "
          "| max diff vs first (out, grads) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | {r['batch']} x {r['seq']} | cannot: {r['error']} | | | |")
        else:
            print(f"| {r['kernel']} | {r['batch']} x {r['seq']} | {r['forward_ms']} | {r['forward_backward_ms']} | "
                  f"{r['forward_tflops']} | {r['max_abs_diff']} |")


if __name__ == "__main__":
    main()
