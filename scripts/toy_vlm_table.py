"""Regenerate the toy VLM world's table: every source, the hand-set merges and the evolved PS merge,
held-out scores as mean ± std over seeds.

    python scripts/toy_vlm_table.py                 # 3 seeds, writes results/toy_vlm_table.md
    python scripts/toy_vlm_table.py --seeds 0 --generations 5   # a quick look

Each seed is one ``experiment=demo_vlm`` run: the evolved row gets popsize x generations
evaluations on the fitness split; sources and hand-set merges (linear = the uniform average,
ties, dare_ties, every source at weight 1, density 0.5) get none. All rows are scored on the same
held-out items. The last columns are the paper's target, Japanese questions about the images
(``toy_ja_vqa``), which no fitness here rewards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROW_NAMES = {  # short model names in results.json -> table names
    "toy-vlm-llava": "toy-vlm-llava (English VQA)",
    "toy-vlm-ja": "toy-vlm-ja (Japanese Q/A)",
    "toy-vlm-base (base)": "toy-vlm-base (base)",
    "linear": "linear (uniform)",
    "evolved": "evolved PS (dare_ties)",
}
COLUMNS = [
    ("fitness", "both skills (fitness)"),
    ("english_vqa", "English VQA"),
    ("japanese_qa", "Japanese Q/A"),
    ("toy_ja_vqa/rouge_l", "Japanese VQA (target)"),
    ("toy_ja_vqa/japanese_rate", "target answered in Japanese"),
    ("toy_ja_vqa/right_in_english", "target right but in English"),
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run(overrides: list[str]) -> list[dict]:
    from evomm.runner import run

    out = run(compose(overrides))
    return json.loads((Path(out["run_dir"]) / "results.json").read_text())


def table_name(name: str) -> str:
    short = name.split("/")[-1]
    return ROW_NAMES.get(short, short)


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "results" / "toy_vlm_table.md"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "toy_vlm_table"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (tiny models run fastest on one, above all on a busy machine)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    budget = [f"optimizer.generations={args.generations}", f"optimizer.popsize={args.popsize}", "logger=none"]
    scores: dict[tuple[str, str], list[dict]] = {}  # (name, kind) -> metrics per seed
    for seed in args.seeds:
        rows = run(["experiment=demo_vlm", f"seed={seed}", f"run_dir={Path(args.work) / f'seed{seed}'}", *budget])
        for r in rows:
            scores.setdefault((table_name(r["name"]), r["kind"]), []).append(r["metrics"])

    kinds = {"source": 0, "baseline": 1, "evolved": 2}
    order = sorted(scores, key=lambda key: kinds.get(key[1], 3))  # stable: run order within a kind
    lines = ["| model | kind | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for name, kind in order:
        metrics = scores[(name, kind)]
        lines.append(f"| {name} | {kind} | " + " | ".join(cell([m[k] for m in metrics]) for k, _ in COLUMNS) + " |")
    text = (
        f"Toy VLM world, held-out split: mean ± std over seeds {args.seeds}; the evolved row: "
        f"{args.popsize} x {args.generations} evaluations on the fitness split. Every row is the "
        "LLaVA's vision tower and projector with the named language model. Scores are ROUGE-L "
        "over MeCab tokens (the Japanese rule: a non-Japanese answer to a Japanese reference "
        "scores 0); fitness = mean of English VQA and Japanese Q/A.\n\n" + "\n".join(lines) + "\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
