"""Train the composition world's three tiny Llama models (base, ja, math), deterministically.

    python scripts/train_compose_llm.py                       # writes evomm/toy/models/compose/
    python scripts/train_compose_llm.py --variant v1 --out /tmp/c   # another design, elsewhere

The base is pre-trained from scratch on the bilingual corpus of ``evomm.toy.compose_world``
(English and Japanese text and Q/A, parallel lines, a little arithmetic in both languages); the
Japanese expert and the math expert are short, gentle fine-tunes of it. Every model is scored on
every evaluation set, and each expert's task vector is measured against the base
(|tau| / |theta|, over all tensors). One CPU thread: the same seeds give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evomm.generation import generate_texts  # noqa: E402
from evomm.toy.compose_world import DEFAULT, Design  # noqa: E402
from evomm.toy.tokenizer import build_tokenizer  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))  # the toy trainers' shared pieces
from toytrain.llm import Stage, batch  # noqa: E402

SHIPPED_DIR = REPO / "evomm" / "toy" / "models" / "compose"


@dataclass(frozen=True)
class Variant:
    design: Design
    stages: tuple[Stage, ...]
    hidden: int = 64
    layers: int = 4
    note: str = ""


BASE_MIX = {"english_text": 1, "english_qa": 1, "japanese_text": 0.5, "japanese_qa": 0.5,
            "parallel": 2, "english_arith_base": 1, "japanese_arith_bridge": 0.5}
JA_MIX = {"japanese_text": 1, "japanese_qa": 2}
MATH_MIX = {"english_arith_math": 1}


def _stages(base_steps=1200, ft_steps=200, ft_lr=5e-4, base_mix=None, ja_mix=None, math_mix=None):
    return (
        Stage("base", None, base_mix or BASE_MIX, steps=base_steps, lr=3e-3, seed=0),
        Stage("ja", "base", ja_mix or JA_MIX, steps=ft_steps, lr=ft_lr, seed=1),
        Stage("math", "base", math_mix or MATH_MIX, steps=ft_steps, lr=ft_lr, seed=2),
    )


V8 = Design(name="v8", inline=True, base_ops=("+",), target_ops=("-", "*"), target_min_operand=2)

VARIANTS: dict[str, Variant] = {
    "v1": Variant(Design(name="v1"), _stages(),
                  note="shared operator symbols; base knows + and - in both languages"),
    "v2": Variant(Design(name="v2", aligned=True), _stages(),
                  note="v1 with the questions in one shape: 'q: 3 + 4 = ? a:' / '問: 3 + 4 = ? 答:'"),
    "v3": Variant(Design(name="v3", bridge_pairs=31),
                  _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1}),
                  note="v1 with twice the bridge: 31 of 55 operand pairs in Japanese, twice the weight"),
    "v4": Variant(Design(name="v4", aligned=True, bridge_pairs=25),
                  _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1}),
                  note="v2 with a larger bridge (25 pairs) and code-switched lines on the bridge pairs"),
    "v5": Variant(Design(name="v5", aligned=True, bridge_pairs=25),
                  _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                          ja_mix={**JA_MIX, "japanese_arith_bridge": 1}),
                  note="v4, and the Japanese expert also sees the bridge's Japanese arithmetic (+, -)"),
    "v6": Variant(Design(name="v6", inline=True), _stages(),
                  note="the answer right after '=' in both languages: 'q: 3 + 4 = 7' / '問: 3 + 4 = 7 です'"),
    "v7": Variant(DEFAULT,
                  _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                          ja_mix={**JA_MIX, "japanese_arith_bridge": 1}),
                  note="v6 with v5's bridge: code-switched lines, Japanese expert sees bridge arithmetic"),
    "v8": Variant(V8, _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                              ja_mix={**JA_MIX, "japanese_arith_bridge": 1}),
                  note="v7, but the base knows + only; the target is - and * (the math expert's), operands >= 2"),
    "v9": Variant(V8, _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                              ja_mix={**JA_MIX, "japanese_arith_bridge": 1}), hidden=96,
                  note="v8 with hidden 96"),
    "v10": Variant(Design(name="v10", inline=True),
                   _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1}),
                   note="v7, but the Japanese expert sees no arithmetic (Japanese text and Q/A only)"),
    "v11": Variant(Design(name="v11", inline=True, operands=13, math_operands=13),
                   _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                           ja_mix={**JA_MIX, "japanese_arith_bridge": 1}),
                   note="v7 with operands 0-12: twice the target items (less room to over-fit)"),
    "v12": Variant(DEFAULT, _stages(base_mix={**BASE_MIX, "japanese_arith_bridge": 1, "mixed_arith_bridge": 1},
                                    ja_mix={**JA_MIX, "japanese_arith_bridge": 1}, ft_steps=100),
                   note="v7 with half-length fine-tunes (smaller task vectors, less interference)"),
}
DEFAULT_VARIANT = "v7"  # the shipped models


def llama_config(tokenizer, hidden: int, layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_stage(model, tokenizer, design: Design, stage: Stage) -> float:
    """Train in place (AdamW, warm-up then cosine to 10 %); returns the last 50 steps' mean loss."""
    torch.manual_seed(stage.seed)
    lines = design.sample(stage.mix, stage.steps * stage.batch_size, seed=stage.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, stage.steps // 20)
    model.train()
    recent: list[float] = []
    for step in range(stage.steps):
        progress = max(0, step - warmup) / max(1, stage.steps - warmup)
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = stage.lr * scale
        loss = model(**batch(tokenizer, lines[step * stage.batch_size:(step + 1) * stage.batch_size])).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
    model.eval()
    return sum(recent) / len(recent)


def exact_match(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    outs = generate_texts(model, tokenizer, [p for p, _ in pairs], max_new_tokens=8, batch_size=256)
    return sum(" ".join(o.split()) == " ".join(e.split()) for o, (_, e) in zip(outs, pairs)) / len(pairs)


def score_all(model, tokenizer, design: Design) -> dict[str, float]:
    return {name: exact_match(model, tokenizer, pairs) for name, pairs in design.eval_sets().items()}


def relative_norm(expert, base) -> float:
    """|tau| / |theta_base| over all parameters, tau = expert - base."""
    e, b = expert.state_dict(), base.state_dict()
    tau = sum(float((e[k] - b[k]).float().pow(2).sum()) for k in b)
    theta = sum(float(b[k].float().pow(2).sum()) for k in b)
    return math.sqrt(tau / theta)


def train_variant(variant: Variant, out_dir: Path | None = None, log=print) -> dict:
    """Train every stage in order; save each model under ``out_dir/<name>`` when given."""
    tokenizer = build_tokenizer()
    models: dict[str, LlamaForCausalLM] = {}
    for stage in variant.stages:
        start = time.perf_counter()
        torch.manual_seed(stage.seed)
        model = LlamaForCausalLM(llama_config(tokenizer, variant.hidden, variant.layers))
        if stage.parent is not None:
            model.load_state_dict(models[stage.parent].state_dict())
        loss = train_stage(model, tokenizer, variant.design, stage)
        models[stage.name] = model
        if out_dir is not None:
            model.save_pretrained(Path(out_dir) / stage.name)
            tokenizer.save_pretrained(Path(out_dir) / stage.name)
        log(f"{stage.name}: {stage.steps} steps, loss {loss:.3f}, {time.perf_counter() - start:.0f} s")
    return models


def report(models: dict, design: Design) -> dict:
    tokenizer = build_tokenizer()
    rows = {name: score_all(m, tokenizer, design) for name, m in models.items()}
    for name in models:
        if name != "base":
            rows[name]["tau_over_theta"] = relative_norm(models[name], models["base"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {SHIPPED_DIR})")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variant = VARIANTS[args.variant]
    models = train_variant(variant, args.out or SHIPPED_DIR)
    for name, row in report(models, variant.design).items():
        print(json.dumps({"model": name, **{k: round(v, 4) for k, v in row.items()}}))


if __name__ == "__main__":
    main()
