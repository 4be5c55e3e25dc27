"""Build a Llama-3-8B-shaped model with random weights and a real tokenizer, for GPU benchmarks.

    python bench/llama8b.py --tokenizer path/to/llama3-tokenizer --out /tmp/l8b

No 8B weights can be downloaded where kotune is benchmarked, and speed and memory do not depend on
the values of the weights: only their shapes. The tokenizer folder (tokenizer.json +
tokenizer_config.json) gives the real vocabulary, special tokens and chat template.
"""

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quick smoke run")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": args.layers}))
    model.save_pretrained(args.out, max_shard_size="5GB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (args.tokenizer / name).exists():
            shutil.copyfile(args.tokenizer / name, args.out / name)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters into {args.out} "
          f"in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
