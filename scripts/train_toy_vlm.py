"""Rebuild the toy VLM world's shipped models (base, ja, llava) and print what each one scores.

    python scripts/train_toy_vlm.py                 # writes evomm/toy/models/vlm/{base,ja,llava}
    python scripts/train_toy_vlm.py --out /tmp/toy  # somewhere else

Training is deterministic on a CPU with one thread (the default here): the same seeds give the
same weights. It takes about two minutes on one laptop core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toytrain.vlm import MODELS_DIR, score_all, train_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = train_all(args.out, log_every=100)
    print(f"trained in {time.perf_counter() - start:.0f} s\n")

    scores = score_all(models)
    columns = list(next(iter(scores.values())))
    print("held-out exact match, each language model inside the VLM (its vision tower and projector)")
    print(f"{'model':<8}" + "".join(f"{c:>15}" for c in columns))
    for name, row in scores.items():
        print(f"{name:<8}" + "".join(f"{row[c]:>15.3f}" for c in columns))


if __name__ == "__main__":
    main()
