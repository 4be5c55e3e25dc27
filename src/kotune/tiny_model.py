"""The embedded default base model: a tiny Llama-3-shaped model built from Korean text we ship.

Hub models cannot be downloaded everywhere kotune must run (CI, air-gapped clusters), so the
default pipeline builds its own base: a byte-level BPE tokenizer with Llama 3's pre-tokenizer and
256 special tokens in Llama 3's order, the Llama-3 chat template, and a few-MB LlamaForCausalLM
pretrained briefly on data/corpus so that generations look Korean and base-vs-tuned means something.
The corpus holds no sample conversations, so the base has never seen the eval set.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from kotune.config import TinyModelSection
from kotune.template import LLAMA3_CHAT_TEMPLATE

log = logging.getLogger(__name__)

# Llama 3's pre-tokenizer split (digits in groups of three, letters runs, punctuation, whitespace).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
PAD = "<|reserved_special_token_250|>"  # a reserved token, as seed 003 did: padding never masks EOS


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens in Llama 3.0's id order (128000-128255 there, after the BPE vocab here)."""
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(251)]
    tokens = [BOS, EOS, *reserved[0:4], "<|start_header_id|>", "<|end_header_id|>", reserved[4], EOT]
    return tokens + reserved[5:]


def read_corpus(folder: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of every .txt file, in file-name order."""
    paragraphs = []
    for path in sorted(Path(folder).glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise FileNotFoundError(f"{folder}: no .txt corpus files")
    return paragraphs


def build_tokenizer(paragraphs: list[str], cfg: TinyModelSection):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.bpe_vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(paragraphs, trainer)
    tokenizer.add_special_tokens(llama3_special_tokens())
    bos_id = tokenizer.token_to_id(BOS)
    # Like Llama 3's tokenizer.json: plain encoding prepends BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=cfg.max_position_embeddings, chat_template=LLAMA3_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer, cfg: TinyModelSection):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def token_stream(tokenizer, paragraphs: list[str]):
    """All paragraphs as one stream of BOS text EOS, as base models are pretrained on documents."""
    import torch

    ids: list[int] = []
    for encoded in tokenizer(paragraphs, add_special_tokens=True)["input_ids"]:
        ids += encoded + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def pretrain(model, stream, cfg: TinyModelSection) -> dict:
    """A few hundred AdamW steps on random windows of the stream; returns loss figures."""
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.1)
    warmup = max(1, cfg.pretrain_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, cfg.pretrain_steps - warmup))))))
    model.train()
    losses = []
    bar = tqdm(range(cfg.pretrain_steps), desc="pretrain tiny base", unit="step")
    for _ in bar:
        starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=generator)
        batch = torch.stack([stream[s: s + cfg.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"initial_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4)}
