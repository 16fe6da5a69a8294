"""Item selection: score the sources once on the whole fitness pool, keep the items that separate models.

The sources (and the base) are scored on every fitness item once, before the search. An item
every model gets right (or wrong) says nothing about which of two merges is better; an item the
models disagree on does. Rules:

* ``discriminating`` (default): the ``k`` items whose scores vary most across the models (their
  standard deviation), ties broken by a seeded shuffle. When fewer than ``k`` items separate the
  models at all, the rest is a seeded draw of the others.
* ``random``: a seeded uniform draw of ``k`` items (the control a rule must beat).

IRT as MERGE³ does it (a 2PL model fitted on the sources' responses) needs many models to fit
item difficulty and discrimination; with the two or three sources of a merge it is
underdetermined, which is why the rules here only use the spread across models.

The subset's mean ranks candidates; ``full_estimate`` maps it back to the whole pool's scale by
the least-squares line through the models' (subset mean, pool mean) points.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

RULES = ("discriminating", "random")


@dataclass
class Selection:
    items: list[int]  # indices into the fitness pool, ascending
    rule: str
    pool: int
    reason: str
    slope: float = 1.0  # full_estimate = intercept + slope * subset mean
    intercept: float = 0.0

    def full_estimate(self, subset_mean: float) -> float:
        return float(self.intercept + self.slope * subset_mean)


def _rng(seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"evomm-selection/{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def select_items(scores: np.ndarray, k: int, rule: str = "discriminating", seed: int = 0) -> Selection:
    """Pick ``k`` of the pool's items from ``scores`` (models x items: each model's item scores)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError("item selection needs a (models, items) score matrix")
    if rule not in RULES:
        raise ValueError(f"item selection rule must be one of {RULES}, not {rule!r}")
    n = scores.shape[1]
    k = min(int(k), n)
    rng = _rng(seed)
    tiebreak = rng.permutation(n)  # a seeded order among equal spreads
    spread = scores.std(axis=0)
    if rule == "random":
        chosen = sorted(int(i) for i in rng.permutation(n)[:k])
        reason = f"a seeded uniform draw of {k} of the {n} items"
    else:
        ranked = sorted(range(n), key=lambda i: (-spread[i], tiebreak[i]))
        chosen = sorted(ranked[:k])
        separating = int((spread > 0).sum())
        reason = (f"the {k} of {n} items whose scores vary most across the {scores.shape[0]} models "
                  f"({separating} items separate them at all"
                  + ("; the rest are a seeded draw of items they agree on)" if separating < k else ")"))
    slope, intercept = _line(scores[:, chosen].mean(axis=1), scores.mean(axis=1))
    return Selection(items=chosen, rule=rule, pool=n, reason=reason, slope=slope, intercept=intercept)


def _line(subset: np.ndarray, full: np.ndarray) -> tuple[float, float]:
    """Least squares full ~ intercept + slope * subset over the models (slope 1 when degenerate)."""
    if len(subset) < 2 or np.ptp(subset) < 1e-12:
        return 1.0, float(np.mean(full - subset))
    slope, intercept = np.polyfit(subset, full, 1)
    return float(slope), float(intercept)


def spread_summary(scores: np.ndarray, items: list[int]) -> dict:
    """Per-item facts for the selection file: each chosen item's spread and its models' scores."""
    scores = np.asarray(scores, dtype=np.float64)
    return {str(i): {"spread": round(float(scores[:, i].std()), 6),
                     "scores": [round(float(v), 6) for v in scores[:, i]]} for i in items}
