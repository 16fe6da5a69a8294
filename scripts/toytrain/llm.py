"""Train the toy world's three tiny Llama models, deterministically, on a CPU.

The story of EvoLLM-JP in miniature:

* ``base`` — trained from scratch on a light mix of everything except the target (English text,
  Q/A and arithmetic, Japanese text and Q/A, parallel English/Japanese lines): the analogue of
  Mistral-7B, which knows a little of both languages and is good at neither task.
* ``ja``   — ``base`` fine-tuned on Japanese text and Japanese Q/A (the analogue of Shisa Gamma).
* ``math`` — ``base`` fine-tuned on English arithmetic (the analogue of WizardMath / Abel).

Nothing here is imported by ``evomm`` at run time; the trained models ship in
``evomm/toy/models/llm/{base,ja,math}`` and ``scripts/train_toy_llm.py`` rebuilds them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from evomm.generation import generate_texts
from evomm.toy import world
from evomm.toy.tokenizer import build_tokenizer

MODELS_DIR = Path(__file__).resolve().parents[2] / "evomm" / "toy" / "models" / "llm"
MODEL_NAMES = ("base", "ja", "math")


def toy_llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """4 layers x hidden 64: about 0.2M parameters (0.75 MB in float32)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@dataclass(frozen=True)
class Stage:
    """One training run: start from ``parent`` (None = from scratch) on a weighted corpus mix."""

    name: str
    parent: str | None
    mix: dict[str, float] = field(hash=False)
    steps: int
    lr: float
    batch_size: int = 32
    seed: int = 0


STAGES: tuple[Stage, ...] = (
    Stage("base", None,
          {"english_text": 1, "english_qa": 1, "english_arith": 1, "japanese_text": 1,
           "japanese_qa": 1, "bilingual": 2},
          steps=1000, lr=3e-3, seed=0),
    Stage("ja", "base", {"japanese_text": 1, "japanese_qa": 2}, steps=300, lr=1e-3, seed=1),
    Stage("math", "base", {"english_arith": 1}, steps=300, lr=1e-3, seed=2),
)


def batch(tokenizer, lines: list[str]) -> dict[str, torch.Tensor]:
    """``<s> line </s>`` right-padded to [batch, longest]; pads are masked out of the loss."""
    ids = [tokenizer(line)["input_ids"] + [tokenizer.eos_token_id] for line in lines]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_stage(model: LlamaForCausalLM, tokenizer, stage: Stage, log_every: int = 0) -> float:
    """Train ``model`` in place for one stage; returns the mean loss of the last 50 steps."""
    torch.manual_seed(stage.seed)
    lines = world.sample_mix(stage.mix, stage.steps * stage.batch_size, seed=stage.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, stage.steps // 20)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10 %
        if step < warmup:
            return stage.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, stage.steps - warmup)
        return stage.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    model.train()
    recent: list[float] = []
    for step in range(stage.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        inputs = batch(tokenizer, lines[step * stage.batch_size : (step + 1) * stage.batch_size])
        loss = model(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if log_every and (step + 1) % log_every == 0:
            print(f"  {stage.name} step {step + 1}/{stage.steps} loss {sum(recent) / len(recent):.3f}")
    model.eval()
    return sum(recent) / len(recent)


def exact_match(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int = 12) -> float:
    """Share of prompts whose greedy continuation equals the expected text (whitespace-normalised)."""
    outs = generate_texts(model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens,
                          batch_size=128)
    return sum(" ".join(o.split()) == " ".join(e.split()) for o, (_, e) in zip(outs, pairs)) / len(pairs)


def score_all(model, tokenizer) -> dict[str, float]:
    """Exact-match accuracy on every evaluation set of the world (``target`` = held-out split)."""
    return {name: exact_match(model, tokenizer, pairs) for name, pairs in world.eval_sets().items()}


def train_all(out_dir: Path = MODELS_DIR, stages: tuple[Stage, ...] | None = None,
              log_every: int = 0) -> dict[str, LlamaForCausalLM]:
    """Train every stage in order (default: ``STAGES``); save each under ``out_dir/<name>``."""
    stages = STAGES if stages is None else stages
    tokenizer = build_tokenizer()
    models: dict[str, LlamaForCausalLM] = {}
    for stage in stages:
        start = time.perf_counter()
        if stage.parent is None:
            torch.manual_seed(stage.seed)
            random.seed(stage.seed)
            model = LlamaForCausalLM(toy_llama_config(tokenizer))
        else:
            model = LlamaForCausalLM(toy_llama_config(tokenizer))
            model.load_state_dict(models[stage.parent].state_dict())
        loss = train_stage(model, tokenizer, stage, log_every=log_every)
        models[stage.name] = model
        path = Path(out_dir) / stage.name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        print(f"{stage.name}: {stage.steps} steps, final loss {loss:.3f}, "
              f"{time.perf_counter() - start:.1f} s -> {path}")
    return models
