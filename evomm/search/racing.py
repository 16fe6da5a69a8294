"""Racing inside a generation: stop scoring a candidate once it cannot be among the selected.

CMA-ES uses the ranks of the best ``keep`` (its mu) candidates of a population; precise scores
for the others are waste. A race scores every candidate on a first block of the fitness items,
then, round by round, on more items (the block doubles), only for the candidates that may still
rank among the best ``keep``. A candidate is out when at least ``keep`` others are confidently
better than it, judged by *paired* comparisons: the mean difference of two candidates' scores on
the same items, whose spread is far smaller than that of either score (two merges of the same
models get the same easy and hard items right and wrong).

Confidence bounds on a paired mean difference, two rules:

* ``bootstrap`` (default): percentile bootstrap over items, all pairs resampled together.
  It needs no range for the scores and adapts to their spread; it is an asymptotic, not a
  finite-sample, guarantee, so ``min_items`` guards the first decisions.
* ``bernstein``: the empirical Bernstein bound (Maurer & Pontil 2009), a finite-sample
  guarantee for scores in a known range (here the range of all scores seen in the race). It is
  sound but loose: with 0/1 item scores its range term ``7 R ln(2/delta) / 3(n-1)`` alone exceeds
  any possible difference until n is in the hundreds, so on tens of items it stops nothing.

Each round's comparisons run at level ``delta / rounds`` (Bonferroni over the rounds). The
candidates that are never stopped are scored on every item, the same items as the incumbent, so
the best is always chosen by full scores. Which items a round adds is a seeded permutation of the
pool drawn per generation: every candidate of a generation sees the same items in the same order
(the comparisons are paired), and the first blocks differ between generations.

Everything here is pure (numpy); the loop supplies ``score(candidates, items)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

BOUNDS = ("bootstrap", "bernstein")


@dataclass(frozen=True)
class RacingRule:
    min_items: int = 8  # the first block: every candidate is scored on this many items
    max_items: int | None = None  # survivors are scored on this many (None: the whole pool)
    delta: float = 0.05  # error level per comparison, split over the rounds
    bound: str = "bootstrap"
    resamples: int = 1000  # bootstrap resamples
    seed: int = 0

    def check(self) -> None:
        if self.bound not in BOUNDS:
            raise ValueError(f"racing bound must be one of {BOUNDS}, not {self.bound!r}")
        if self.min_items < 2 or (self.max_items is not None and self.max_items < self.min_items):
            raise ValueError("racing needs 2 <= min_items <= max_items")
        if not 0 < self.delta < 1:
            raise ValueError("racing delta must lie in (0, 1)")


@dataclass
class Race:
    """What a race found: per candidate, the items it was scored on (in order) and its scores."""

    items: list[list[int]]
    scores: list[list[float] | None]  # None: the candidate failed (its error is the loop's business)
    stopped_at: list[int | None]  # the round in which a candidate was stopped (None: never)
    rounds: list[int] = field(default_factory=list)  # cumulative items per round

    @property
    def stopped(self) -> list[bool]:
        return [r is not None for r in self.stopped_at]

    def estimate(self, i: int) -> float | None:
        s = self.scores[i]
        return None if s is None else float(np.mean(s))


def schedule(pool: int, rule: RacingRule) -> list[int]:
    """Cumulative item counts of the rounds: min_items, doubled each round, up to max_items."""
    top = pool if rule.max_items is None else min(rule.max_items, pool)
    counts, n = [], min(rule.min_items, top)
    while n < top:
        counts.append(n)
        n *= 2
    return counts + [top]


def item_order(pool: Sequence[int], seed: int, generation: int) -> list[int]:
    """The pool's items in a seeded order of this generation (the same in every process)."""
    digest = hashlib.sha256(f"evomm-racing/{seed}/{generation}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [int(pool[i]) for i in rng.permutation(len(pool))]


def confidently_better(scores: np.ndarray, level: float, rule: RacingRule, rng: np.random.Generator,
                       value_range: float) -> np.ndarray:
    """better[j, i]: candidate j's mean score exceeds candidate i's, with confidence 1 - level.

    ``scores``: (candidates, items), every candidate on the same items.
    """
    c, n = scores.shape
    if rule.bound == "bootstrap":
        idx = rng.integers(0, n, size=(rule.resamples, n))  # one resample of items for all pairs
        means = scores[:, idx].mean(axis=-1)  # (c, resamples)
        diffs = means[:, None, :] - means[None, :, :]  # (c, c, resamples): j minus i
        lower = np.quantile(diffs, level, axis=-1, method="lower")
    else:  # empirical Bernstein on the paired differences, range 2 * value_range
        diffs = scores[:, None, :] - scores[None, :, :]
        var = diffs.var(axis=-1, ddof=1)
        log_term = math.log(2.0 / level)
        lower = (diffs.mean(axis=-1) - np.sqrt(2.0 * var * log_term / n)
                 - 7.0 * 2.0 * value_range * log_term / (3.0 * (n - 1)))
    better = lower > 0
    np.fill_diagonal(better, False)
    return better


def race(
    n_candidates: int,
    order: Sequence[int],
    score: Callable[[list[int], list[int]], list[list[float] | None]],
    keep: int,
    rule: RacingRule,
    generation: int = 0,
) -> Race:
    """Score ``n_candidates`` on the items of ``order`` until each is stopped or fully scored.

    ``score(candidates, items)`` returns, per candidate, its scores on ``items`` (None when the
    candidate failed). ``keep``: how many candidates must be ranked on all items (CMA-ES's mu).
    """
    rule.check()
    rounds = schedule(len(order), rule)
    result = Race(items=[[] for _ in range(n_candidates)], scores=[[] for _ in range(n_candidates)],
                  stopped_at=[None] * n_candidates, rounds=rounds)
    alive = list(range(n_candidates))
    level = rule.delta / max(len(rounds) - 1, 1)
    digest = hashlib.sha256(f"evomm-racing-bootstrap/{rule.seed}/{generation}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    done = 0
    for r, upto in enumerate(rounds):
        block = [int(i) for i in order[done:upto]]
        for i, s in zip(alive, score(alive, block)):
            if s is None:
                result.scores[i] = None
            else:
                result.items[i].extend(block)
                result.scores[i].extend(float(v) for v in s)  # type: ignore[union-attr]
        done = upto
        alive = [i for i in alive if result.scores[i] is not None]
        if r == len(rounds) - 1 or len(alive) <= keep:
            continue
        matrix = np.asarray([result.scores[i] for i in alive], dtype=np.float64)
        value_range = max(float(np.ptp(matrix)), 1e-12)
        beaten_by = confidently_better(matrix, level, rule, rng, value_range).sum(axis=0)
        out = {alive[k] for k in np.flatnonzero(beaten_by >= keep)}
        for i in out:
            result.stopped_at[i] = r
        alive = [i for i in alive if i not in out]
    return result


def told_values(fitness: Sequence[float | None], items: Sequence[int], stopped: Sequence[bool],
                mode: str = "estimate") -> list[float | None]:
    """The fitness handed to the optimizer for each candidate (None stays None: a failure).

    ``estimate``: a stopped candidate's mean over the items it was scored on. ``below``: every
    stopped candidate ranks below every survivor; among them, those scored on more items (stopped
    later) rank higher, then the better estimate (the order the race established; the values are
    only ranks, which is all CMA-ES uses).
    """
    if mode == "estimate":
        return list(fitness)
    if mode != "below":
        raise ValueError(f"stopped candidates are told 'estimate' or 'below', not {mode!r}")
    survivors = [f for f, s in zip(fitness, stopped) if f is not None and not s]
    floor = min(survivors) if survivors else 0.0
    out = [i for i, f in enumerate(fitness) if f is not None and stopped[i]]
    out.sort(key=lambda i: (-items[i], -fitness[i]))  # type: ignore[operator]
    values = list(fitness)
    for rank, i in enumerate(out, start=1):
        values[i] = floor - rank * 1e-6  # below every survivor, in the race's order
    return values
