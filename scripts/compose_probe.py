"""Probe a composition-world variant: train it, score every model, then a grid of merges.

    python scripts/compose_probe.py --variant v1 --out /tmp/compose

Before any evolutionary search, this says whether composition is possible in a variant at all:
task-arithmetic merges base + w_ja * tau_ja + w_math * tau_math over a grid of weights, each
scored on the target's fitness and held-out items. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_compose_llm import VARIANTS, exact_match, report, train_variant  # noqa: E402

from evomm.toy.compose_world import majority_rate  # noqa: E402
from evomm.toy.tokenizer import build_tokenizer  # noqa: E402


def merged(models: dict, w_ja: float, w_math: float):
    base = models["base"].state_dict()
    ja, math = models["ja"].state_dict(), models["math"].state_dict()
    state = {k: base[k] + w_ja * (ja[k] - base[k]) + w_math * (math[k] - base[k]) for k in base}
    model = type(models["base"])(models["base"].config)
    model.load_state_dict(state)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="v1", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/compose"))
    parser.add_argument("--grid", type=float, nargs="+", default=[0, 0.5, 1, 1.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    variant = VARIANTS[args.variant]
    models = train_variant(variant, args.out / args.variant)
    design = variant.design
    print(json.dumps({"variant": args.variant, "majority_rate": round(majority_rate(design), 3),
                      "target_items": {s: len(design.target_items(s)) for s in ("fitness", "heldout")}}))
    for name, row in report(models, design).items():
        print(json.dumps({"model": name, **{k: round(v, 3) for k, v in row.items()}}))
    tok = build_tokenizer()
    sets = design.eval_sets()
    for w_ja, w_math in itertools.product(args.grid, args.grid):
        if w_ja == w_math == 0:
            continue
        m = merged(models, w_ja, w_math)
        row = {k: round(exact_match(m, tok, sets[k]), 3)
               for k in ("target_fitness", "target", "english_arith", "japanese_qa")}
        print(json.dumps({"merge": f"ta ja={w_ja} math={w_math}", **row}), flush=True)


if __name__ == "__main__":
    main()
