"""What a search costs in fitness items and wall time, and what it finds, per way of spending them.

For each seed and each mode the real run (``evomm.runner.run`` on the composed conf/, the demo
experiment by default) evolves a merge; the bench then scores every run's best recipe on the
task's held-out split with one shared adapter. Modes:

    full            every candidate on the whole fitness sample (fitness.racing=false, select=null)
    racing          fitness.racing=true
    select          fitness.select=K
    racing+select   both

One JSON line per run (held-out score, fitness items scored, items a full evaluation needs, search
seconds), then one summary line per mode against ``full``: ``items_ratio`` and ``seconds_ratio``
(full / mode, totals over the seeds), ``heldout_diff`` (mean over seeds, mode minus full) and
``full_seed_std`` (the seed-to-seed spread of full evaluation's held-out score). Runs of one seed
go side by side, so a change of machine load hits every mode alike.

    python bench/search_cost.py [--experiment demo] [--seeds 0 1 2] [--select 10] [--modes ...]
"""

from __future__ import annotations

import contextlib
import io
import re
import statistics
import tempfile
import time
from pathlib import Path

from _common import compose, emit, quiet

MODES = {
    "full": ["fitness.racing=false", "fitness.select=null"],
    "racing": ["fitness.racing=true", "fitness.select=null"],
    "select": ["fitness.racing=false", "fitness.select={k}"],
    "racing+select": ["fitness.racing=true", "fitness.select={k}"],
}


def one_run(experiment: str, seed: int, mode: str, k: int, extra: list[str], run_dir: Path) -> dict:
    from evomm.runner import run
    from evomm.search.scoring import items_scored

    overrides = [f"experiment={experiment}", f"seed={seed}", "logger=none", "final_eval.enabled=false",
                 "save_merged=false", "threads=1", f"run_dir={run_dir}",
                 *[o.format(k=k) for o in MODES[mode]], *extra]
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        result = run(compose(overrides))
    wall = time.perf_counter() - start
    loaded = float(re.search(r"models loaded in ([0-9.]+)s", out.getvalue()).group(1))
    scored, full = items_scored(result["state"].history)
    selection = run_dir / "item_selection.json"
    if selection.exists():
        import json

        scored += json.loads(selection.read_text())["items_scored"]
    stopped = sum(bool(h.get("stopped_early")) for h in result["state"].history)
    return {"run_dir": run_dir, "items": scored, "items_full": full, "seconds": wall - loaded,
            "stopped_early": stopped, "fitness": result["best"]["fitness"], "config": compose(overrides)}


class HeldOut:
    """One adapter and task for every run's held-out score (the same code the final table uses)."""

    def __init__(self, cfg):
        from omegaconf import OmegaConf

        from evomm.search.build import build_search
        from evomm.tasks import build_task_from

        c = OmegaConf.to_container(cfg, resolve=True)
        self.adapter, _ = build_search(c)
        self.task = build_task_from(c["task"])

    def score(self, run_dir: Path) -> float:
        from evomm.adapters.apply import apply_recipe
        from evomm.recipe.recipe import Recipe

        apply_recipe(self.adapter, Recipe.load(run_dir / "best_recipe.yaml"))
        return float(self.task.evaluate(self.adapter.handle(), self.task.heldout_split)["fitness"])


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--select", type=int, default=10, help="fitness.select for the select modes")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--tag", default="", help="a label for these lines (e.g. the overrides' meaning)")
    p.add_argument("overrides", nargs="*", help="extra config overrides for every run (e.g. fitness.delta=0.2)")
    args = p.parse_args()
    quiet()
    import torch

    torch.set_num_threads(1)
    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    held: HeldOut | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for mode in args.modes:
                r = one_run(args.experiment, seed, mode, args.select, args.overrides, Path(tmp) / f"{mode}-{seed}")
                held = held or HeldOut(r["config"])
                r["heldout"] = held.score(r["run_dir"])
                runs[mode].append(r)
                emit(bench="search_cost", experiment=args.experiment, tag=args.tag, mode=mode, seed=seed,
                     heldout=round(r["heldout"], 4), fitness=round(r["fitness"], 4), items=r["items"],
                     items_full=r["items_full"], stopped_early=r["stopped_early"],
                     seconds=round(r["seconds"], 2), overrides=args.overrides)
    if "full" not in runs:
        return
    full = runs["full"]
    full_heldout = [r["heldout"] for r in full]
    spread = statistics.stdev(full_heldout) if len(full_heldout) > 1 else 0.0
    for mode, rs in runs.items():
        if mode == "full":
            continue
        diff = statistics.fmean(r["heldout"] for r in rs) - statistics.fmean(full_heldout)
        emit(bench="search_cost", summary=True, experiment=args.experiment, tag=args.tag, mode=mode,
             seeds=args.seeds, select=args.select if "select" in mode else None, overrides=args.overrides,
             items_ratio=round(sum(r["items"] for r in full) / sum(r["items"] for r in rs), 2),
             seconds_ratio=round(sum(r["seconds"] for r in full) / sum(r["seconds"] for r in rs), 2),
             heldout_full=round(statistics.fmean(full_heldout), 4),
             heldout_mode=round(statistics.fmean(r["heldout"] for r in rs), 4),
             heldout_diff=round(diff, 4), full_seed_std=round(spread, 4),
             within_spread=abs(diff) <= spread)


if __name__ == "__main__":
    main()
