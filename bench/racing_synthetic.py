"""Racing rules on a synthetic search where scoring is cheap: what a stopped candidate should be told.

CMA-ES (evomm's optimizer) maximises a true quality q(x) = 1 - |x - 0.7|^2 it only sees through
items: item k is answered right with probability sigmoid(8 (q(x) - difficulty_k)), drawn once
per (candidate, item). Per setting and seed: the true quality of the best candidate (chosen, as in
a run, among those scored on every item) and the items scored. Settings: full evaluation, racing
telling the optimizer a stopped candidate's estimate, racing ranking stopped candidates below the
survivors.

    python bench/racing_synthetic.py [--seeds 20] [--items 64] [--generations 30]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics

import numpy as np

from _common import emit

from evomm.search.optimizers import CMAES
from evomm.search.racing import RacingRule, item_order, race, told_values


def quality(x: np.ndarray) -> float:
    return float(1.0 - np.sum((np.clip(x, 0, 1) - 0.7) ** 2))


def item_scores(x: np.ndarray, items: list[int], difficulty: np.ndarray) -> list[float]:
    """The candidate's answers (drawn once per candidate and item, whatever the order asked)."""
    digest = hashlib.sha256(np.round(x, 12).tobytes()).digest()
    u = np.random.default_rng(int.from_bytes(digest[:8], "little")).random(len(difficulty))
    right = u < 1 / (1 + np.exp(-8 * (quality(x) - difficulty)))
    return [float(right[k]) for k in items]


def search(seed: int, mode: str, n_items: int, generations: int, rule: RacingRule) -> tuple[float, int]:
    difficulty = np.random.default_rng(1000 + seed).uniform(0.2, 1.0, n_items)
    opt = CMAES(dim=4, seed=seed, popsize=8, x0=0.3)
    best, best_fit, used = None, -1.0, 0
    for g in range(generations):
        xs = opt.ask()
        if mode == "full":
            scores = [item_scores(x, list(range(n_items)), difficulty) for x in xs]
            fitness, items, stopped = [float(np.mean(s)) for s in scores], [n_items] * len(xs), [False] * len(xs)
        else:
            result = race(len(xs), item_order(range(n_items), seed, g),
                          lambda cs, its: [item_scores(xs[c], its, difficulty) for c in cs], keep=opt.mu, rule=rule,
                          generation=g)
            fitness = [result.estimate(i) for i in range(len(xs))]
            items, stopped = [len(i) for i in result.items], result.stopped
        used += sum(items)
        told = told_values(fitness, items, stopped, "estimate" if mode != "below" else "below")
        opt.tell(xs, [-t for t in told])
        for x, f, s in zip(xs, fitness, stopped):
            if not s and f > best_fit:
                best, best_fit = x, f
    return quality(best), used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--delta", type=float, default=0.05)
    args = p.parse_args()
    rule = RacingRule(min_items=8, delta=args.delta)
    results = {}
    for mode in ("full", "estimate", "below"):
        runs = [search(s, mode, args.items, args.generations, rule) for s in range(args.seeds)]
        results[mode] = runs
        q = [r[0] for r in runs]
        emit(bench="racing_synthetic", mode=mode, items_per_candidate=args.items, delta=args.delta,
             quality_mean=round(statistics.fmean(q), 4), quality_std=round(statistics.stdev(q), 4),
             items=sum(r[1] for r in runs), items_ratio=round(sum(r[1] for r in results["full"]) / sum(r[1] for r in runs), 2))


if __name__ == "__main__":
    main()
