"""`kotune chat` and `kotune generate`: talk to a merged model or to base + adapter.

    kotune chat [models/merged] [--temperature 0.7 --max-new-tokens 256 --greedy --system "..."]
    kotune generate models/merged --prompt "운영체제가 뭐하는 거야?" [--file prompts.txt]

The prompt is the model's own chat template (the one training used); tokens stream as they come.
In chat: /reset forgets the conversation, /exit (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kotune.errors import KotuneError
from kotune.modeling import require_safetensors
from kotune.template import render_prompt, stop_token_ids


def parse_args(argv, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"kotune {prog}", description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="models/merged", help="merged model or adapter folder")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--greedy", action="store_true", help="no sampling")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--system", default=None, help="a system prompt for every conversation")
    if prog == "generate":
        parser.add_argument("--prompt", action="append", default=[], help="repeatable")
        parser.add_argument("--file", type=Path, help="one prompt per line")
    return parser.parse_args(argv)


def load(path: str):
    """A merged model folder, or an adapter folder (its base_model_name_or_path is loaded under it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise KotuneError(f"{path}: no such model folder (run `dvc repro merge` first, or name one)")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device_map = {"": 0 if torch.cuda.is_available() else "cpu"}
    if (folder / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        require_safetensors(folder, "adapter")
        model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map)
    else:
        require_safetensors(folder, "model")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def generation_kwargs(args, tokenizer) -> dict:
    sampled = not args.greedy
    return {"max_new_tokens": args.max_new_tokens, "do_sample": sampled, "repetition_penalty": args.repetition_penalty,
            "eos_token_id": stop_token_ids(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            **({"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k} if sampled else {})}


def reply(model, tokenizer, messages: list[dict], args, out) -> str:
    """Generate the assistant's next turn, streaming its text to `out`; returns the whole text."""
    import torch
    from transformers import TextStreamer

    class ToStream(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    prompt = render_prompt(tokenizer, messages)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    with torch.no_grad():
        ids = model.generate(**batch, **generation_kwargs(args, tokenizer),
                             streamer=ToStream(tokenizer, skip_prompt=True, skip_special_tokens=True))
    return tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def chat_loop(model, tokenizer, args, stdin=sys.stdin, out=sys.stdout) -> list[dict]:
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    out.write("kotune chat — /reset forgets the conversation, /exit leaves\n")
    while True:
        out.write("> ")
        out.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            out.write("\n")
            return messages
        text = line.strip()
        if text == "/reset":
            messages = list(system)
            out.write("(new conversation)\n")
        elif text:
            messages.append({"role": "user", "content": text})
            messages.append({"role": "assistant", "content": reply(model, tokenizer, messages, args, out)})


def prompts_of(args) -> list[str]:
    prompts = list(args.prompt)
    if args.file:
        prompts += [line.strip() for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise KotuneError("kotune generate needs --prompt or --file")
    return prompts


def chat_main(argv=None) -> None:
    args = parse_args(argv, "chat")
    model, tokenizer = load(args.model)
    chat_loop(model, tokenizer, args)


def generate_main(argv=None, out=sys.stdout) -> None:
    args = parse_args(argv, "generate")
    model, tokenizer = load(args.model)
    system = [{"role": "system", "content": args.system}] if args.system else []
    for prompt in prompts_of(args):
        out.write(f"### {prompt}\n")
        reply(model, tokenizer, [*system, {"role": "user", "content": prompt}], args, out)
        out.write("\n")

