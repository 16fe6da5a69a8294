"""Regenerate the composition table: every source, the hand-set merges and the evolved merges,
scored on the held-out Japanese arithmetic items, as mean +- std over seeds.

    python scripts/compose_table.py                         # seeds 0 1 2, writes results/compose_table.md
    python scripts/compose_table.py --seeds 0 --no-dfs      # a quick look

Each evolved row gets the same search budget (popsize x generations evaluations on the fitness
split); sources and hand-set merges get none. The last row is the majority answer: always
answering the fitness split's most common number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLUMNS = [("fitness", "Japanese arithmetic (target)"), ("accuracy_plus", "+"), ("accuracy_minus", "-"),
           ("accuracy_times", "*"), ("number_rate", "right number, any form"),
           ("japanese_rate", "answered in the Japanese form")]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run(overrides: list[str]) -> list[dict]:
    from evomm.runner import run as run_search

    out = run_search(compose(overrides))
    return json.loads((Path(out["run_dir"]) / "results.json").read_text())


def cell(values: list[float]) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def table(order, scores, majority: float) -> list[str]:
    lines = ["| model | kind | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for kind, name in order:
        metrics = scores[(kind, name)]
        lines.append(f"| {name} | {kind} | "
                     + " | ".join(cell([m[k] for m in metrics]) if k in metrics[0] else "-" for k, _ in COLUMNS) + " |")
    lines.append(f"| always the most common number | reference | {majority:.3f} |" + " - |" * (len(COLUMNS) - 1))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="demo_compose")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=None, help="default: the experiment's")
    parser.add_argument("--popsize", type=int, default=None, help="default: the experiment's")
    parser.add_argument("--no-dfs", action="store_true", help="PS only (no DFS, no PS+DFS rows)")
    parser.add_argument("--out", default=str(REPO / "results" / "compose_table.md"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "compose_table"))
    args = parser.parse_args()

    from evomm.toy.compose_world import DEFAULT, majority_rate

    budget = ["logger=none"]
    budget += [f"optimizer.generations={args.generations}"] if args.generations else []
    budget += [f"optimizer.popsize={args.popsize}"] if args.popsize else []
    scores: dict[tuple[str, str], list[dict]] = {}
    order: list[tuple[str, str]] = []

    def record(rows, rename=None, kinds=("source", "baseline", "evolved")):
        for r in rows:
            if r["kind"] in kinds:
                key = (r["kind"], (rename or {}).get(r["name"], r["name"]))
                if key not in scores:
                    scores[key], _ = [], order.append(key)
                scores[key].append(r["metrics"])

    only_evolved = ["final_eval.sources=false", "final_eval.baselines=null"]
    for seed in args.seeds:
        work = Path(args.work) / f"seed{seed}"
        common = [f"experiment={args.experiment}", f"seed={seed}", *budget]
        record(run([*common, f"run_dir={work / 'ps'}"]), rename={"evolved": "evolved PS (dare_ties)"})
        if args.no_dfs:
            continue
        record(run([*common, "space=dfs", f"run_dir={work / 'dfs'}", *only_evolved]),
               rename={"evolved": "evolved DFS"}, kinds=("evolved",))
        record(run([*common, "space=ps_dfs", f"space.ps_recipe={work / 'ps' / 'best_recipe.yaml'}",
                    "space.route_models=[builtin:toy-compose-ja]", f"run_dir={work / 'ps_dfs'}",
                    *only_evolved]), rename={"evolved": "evolved PS+DFS"}, kinds=("evolved",))

    text = (f"Held-out scores (`toy_ja_math`, {len(DEFAULT.target_items('heldout'))} items), mean ± std "
            f"over seeds {args.seeds}; experiment `{args.experiment}`.\n\n"
            + "\n".join(table(order, scores, majority_rate(DEFAULT))) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
