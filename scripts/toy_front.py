"""The toy world as a two-objective search: NSGA-II's front against the sources, the hand-set
merges and the scalar CMA-ES demo, on the held-out items.

    python scripts/toy_front.py                       # seeds 0 1 2; results/toy_nsga2_front.{md,png}
    python scripts/toy_front.py --seeds 0 --generations 5   # a quick look

Every search gets the demo's budget (popsize x generations evaluations on the fitness split).
Checks, per seed: is every source and hand-set merge dominated (on held-out English arithmetic
and Japanese Q/A) by a scored front member; and the held-out mean of the front's *best-mean*
member (chosen by its fitness-split scores, not by held-out ones) against CMA-ES's evolved merge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTIVES = ("english_arith", "japanese_qa")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run(overrides: list[str]) -> Path:
    from evomm.runner import run as evomm_run

    return Path(evomm_run(compose(overrides))["run_dir"])


def point(metrics: dict) -> tuple[float, float]:
    """Held-out (English arithmetic, Japanese Q/A) of a results row of either task."""
    if "english_arith/fitness" in metrics:
        return metrics["english_arith/fitness"], metrics["japanese_qa/fitness"]
    return metrics["english_arith"], metrics["japanese_qa"]  # toy_skills' per-skill metrics


def dominates(a, b) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def seed_summary(nsga_dir: Path, cma_dir: Path) -> dict:
    from evomm.search.objectives import best_mean
    from evomm.tracking.pareto_report import read_front

    rows = json.loads((nsga_dir / "results.json").read_text())
    members = [r for r in rows if r["kind"] == "front"]
    others = [r for r in rows if r["kind"] in ("source", "baseline")]
    chosen = best_mean(read_front(nsga_dir))
    chosen_row = next(r for r in members if r["name"] == f"front g{chosen['generation']}-i{chosen['index']}")
    cma = next(r for r in json.loads((cma_dir / "results.json").read_text()) if r["kind"] == "evolved")
    undominated = [o["name"] for o in others
                   if not any(dominates(point(m["metrics"]), point(o["metrics"])) for m in members)]
    return {"rows": rows, "cma_row": cma, "undominated": undominated,
            "best_mean": statistics.mean(point(chosen_row["metrics"])),
            "cma_mean": statistics.mean(point(cma["metrics"]))}


def plot(summaries: list[dict], out: Path) -> None:
    from evomm.tracking.pareto_plot import plot_heldout_front

    rows = []
    for n, s in enumerate(summaries):
        rows += [{**r, "label": "NSGA-II front"} if r["kind"] == "front" else r
                 for r in s["rows"] if r["kind"] == "front" or (n == 0 and r["kind"] in ("source", "baseline"))]
        a, b = point(s["cma_row"]["metrics"])
        rows.append({"kind": "evolved", "name": "CMA-ES", "label": "CMA-ES demo (evolved)", "metrics": {"english_arith/fitness": a, "japanese_qa/fitness": b}})
    plot_heldout_front(rows, list(OBJECTIVES), out,
                       title=f"held-out: NSGA-II fronts (red, {len(summaries)} seeds), CMA-ES demo (stars)")


def table(summaries: list[dict], seeds: list[int]) -> str:
    lines = ["| seed | front members scored | sources / baselines not dominated by a member | "
             "best-mean member, held-out mean | CMA-ES demo, held-out mean |", "|---|---|---|---|---|"]
    for seed, s in zip(seeds, summaries):
        n = sum(r["kind"] == "front" for r in s["rows"])
        lines.append(f"| {seed} | {n} | {', '.join(s['undominated']) or 'none'} | {s['best_mean']:.3f} | {s['cma_mean']:.3f} |")
    mean_std = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}"  # noqa: E731
    lines.append(f"| all | | | {mean_std([s['best_mean'] for s in summaries])} | "
                 f"{mean_std([s['cma_mean'] for s in summaries])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "results" / "toy_nsga2_front"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "toy_front"))
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in --work (redraw only)")
    args = parser.parse_args()

    common = [f"optimizer.generations={args.generations}", f"optimizer.popsize={args.popsize}", "logger=none",
              "final_eval.extra_tasks=null", "save_merged=false"]
    summaries = []
    for seed in args.seeds:
        nsga_dir, cma_dir = Path(f"{args.work}/nsga2/seed{seed}"), Path(f"{args.work}/cmaes/seed{seed}")
        if not (args.reuse and (nsga_dir / "results.json").exists()):
            run(["experiment=demo_nsga2", *common, f"seed={seed}", f"run_dir={nsga_dir}"])
        if not (args.reuse and (cma_dir / "results.json").exists()):
            run(["experiment=demo", *common, f"seed={seed}", "final_eval.sources=false",
                 "final_eval.baselines=null", f"run_dir={cma_dir}"])
        summaries.append(seed_summary(nsga_dir, cma_dir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(summaries, out.with_suffix(".png"))
    text = (f"NSGA-II (demo_nsga2) vs CMA-ES (demo), {args.popsize} x {args.generations} evaluations each, "
            "held-out items\n\n" + table(summaries, args.seeds))
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
