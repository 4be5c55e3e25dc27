"""Profile Unsloth's own training step on the issue's full-length shape: python bench/profile_unsloth.py MODEL_DIR

The same setup as ../shared/bench/peer_baselines.py (Unsloth 4-bit load, LoRA r16/alpha16 on the 7
projections, its offloaded gradient checkpointing, AdamW 8-bit, random tokens, bs 2 x 2048): a few
warm-up steps, then PROFILE_STEPS steps under torch.profiler, printed as bench/profile_train.py prints
kotune's, so the two tables can be read side by side (where does the peer spend its GPU time?).
"""

import os
import sys
import time

import torch
from profiling import SyncTrace, report

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    import bitsandbytes as bnb
    from unsloth import FastLanguageModel  # first: it patches transformers and PEFT as it is imported

    model, _ = FastLanguageModel.from_pretrained(sys.argv[1], max_seq_length=8192, load_in_4bit=True,
                                                 dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, target_modules=TARGETS,
                                             bias="none", use_gradient_checkpointing="unsloth", random_state=3407)
    optimizer = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch, seq, steps = 2, 2048, int(os.environ.get("PROFILE_STEPS", "3"))
    ids = torch.randint(0, 128000, (batch, seq), device="cuda")
    model.train()

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    if os.environ.get("SYNC_TRACE") == "1":  # count the steps' host syncs by caller instead of profiling
        trace = SyncTrace()
        trace.start()
        for _ in range(steps):
            step()
        trace.stop(steps)
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    report(profiler, steps, wall)
    print(f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
