"""Regenerate the toy-world table: every source, the hand-set merges and the evolved merges
(PS, DFS, PS+DFS), held-out scores as mean +- std over seeds.

    python scripts/toy_table.py                 # 3 seeds, writes results/toy_llm_table.md
    python scripts/toy_table.py --seeds 0 --generations 5   # a quick look

Each evolved row gets the same search budget (popsize x generations evaluations on the fitness
split); sources and hand-set merges get none. All rows are scored on the same held-out items.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run(overrides: list[str]) -> list[dict]:
    from evomm.runner import run

    out = run(compose(overrides))
    return json.loads((Path(out["run_dir"]) / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "results" / "toy_llm_table.md"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "toy_table"))
    args = parser.parse_args()

    budget = [f"optimizer.generations={args.generations}", f"optimizer.popsize={args.popsize}", "logger=none"]
    scores: dict[tuple[str, str], list[dict]] = {}  # (kind, name) -> metrics per seed
    order: list[tuple[str, str]] = []

    def record(rows: list[dict], rename: dict[str, str] | None = None, kinds=("source", "baseline", "evolved")):
        for r in rows:
            if r["kind"] not in kinds:
                continue
            key = (r["kind"], (rename or {}).get(r["name"], r["name"]))
            if key not in scores:
                scores[key] = []
                order.append(key)
            scores[key].append(r["metrics"])

    for seed in args.seeds:
        work = Path(args.work) / f"seed{seed}"
        ps = run(["experiment=demo", f"seed={seed}", f"run_dir={work / 'ps'}", *budget])
        record(ps, rename={"evolved": "evolved PS (dare_ties)"})
        dfs = run(["experiment=demo", "space=dfs", f"seed={seed}", f"run_dir={work / 'dfs'}",
                   "final_eval.sources=false", "final_eval.baselines=null", *budget])
        record(dfs, rename={"evolved": "evolved DFS"}, kinds=("evolved",))
        ps_dfs = run(["experiment=demo", "space=ps_dfs", f"space.ps_recipe={work / 'ps' / 'best_recipe.yaml'}",
                      "space.route_models=[builtin:toy-llm-ja]", f"seed={seed}", f"run_dir={work / 'ps_dfs'}",
                      "final_eval.sources=false", "final_eval.baselines=null", *budget])
        record(ps_dfs, rename={"evolved": "evolved PS+DFS"}, kinds=("evolved",))

    columns = [("fitness", "both skills (fitness)"), ("english_arith", "English arithmetic"),
               ("japanese_qa", "Japanese Q/A"), ("toy_arith/accuracy", "arithmetic in Japanese")]

    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{mean:.3f} ± {std:.3f}"

    lines = ["| model | kind | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for kind, name in order:
        metrics = scores[(kind, name)]
        lines.append(f"| {name} | {kind} | " + " | ".join(cell([m[k] for m in metrics]) for k, _ in columns) + " |")
    text = (f"Held-out scores, mean ± std over seeds {args.seeds}; each evolved row: "
            f"{args.popsize} x {args.generations} evaluations on the fitness split.\n\n" + "\n".join(lines) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
