"""Rebuild the toy world's shipped models (base, ja, math) and print what each one scores.

    python scripts/train_toy_llm.py                 # writes evomm/toy/models/llm/{base,ja,math}
    python scripts/train_toy_llm.py --out /tmp/toy  # somewhere else

Training is deterministic on a CPU with one thread (the default here): the same seeds give the
same weights. It takes a few minutes on a laptop core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the toy trainers live beside this script

from evomm.toy.tokenizer import build_tokenizer  # noqa: E402
from toytrain.llm import MODELS_DIR, score_all, train_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = train_all(args.out, log_every=200)
    print(f"trained in {time.perf_counter() - start:.0f} s\n")

    tokenizer = build_tokenizer()
    scores = {name: score_all(model, tokenizer) for name, model in models.items()}
    columns = list(next(iter(scores.values())))
    print("exact-match accuracy (target = toy_arith held-out split)")
    print(f"{'model':<8}" + "".join(f"{c:>15}" for c in columns))
    for name, row in scores.items():
        print(f"{name:<8}" + "".join(f"{row[c]:>15.3f}" for c in columns))


if __name__ == "__main__":
    main()
