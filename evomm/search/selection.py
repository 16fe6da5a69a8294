"""Item selection: score the sources once on the whole fitness pool, keep the items that separate models.

The sources (and the base) are scored on every fitness item once, before the search. An item
every model gets right (or wrong) says nothing about which of two merges is better; an item the
models disagree on does. Rules:

* ``discriminating`` (default): the ``k`` items whose scores vary most across the models (their
  standard deviation), ties broken by a seeded shuffle. When fewer than ``k`` items separate the
  models at all, the rest is a seeded draw of the others.
* ``stratified``: items are grouped by their pattern of scores across the models (the models
  agree on every item of a group). Groups the models disagree on get the ``k`` items, in
  proportion to size x spread (Neyman allocation, at least one each), drawn at random inside the
  group; each chosen item then stands for ``N_h / n_h`` items of its group, and groups the models
  agree on stand for themselves at the models' common score. The weighted subset mean is then an
  estimate of the whole pool's score (exact for every model that was scored), and the candidates
  are ranked only on items that separate models.
* ``random``: a seeded uniform draw of ``k`` items (the control a rule must beat).

With ``stratified`` each chosen item carries a ``scale`` and the subset an ``offset``: the
search scores item i as ``scale_i * score_i + offset``, whose plain mean is the estimate.

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

RULES = ("stratified", "discriminating", "random")
SELECTION_FILE = "item_selection.json"  # in the run directory: the chosen items and why


@dataclass
class Selection:
    items: list[int]  # indices into the fitness pool, ascending
    rule: str
    pool: int
    reason: str
    slope: float = 1.0  # full_estimate = intercept + slope * subset mean
    intercept: float = 0.0
    scale: list[float] | None = None  # stratified: per chosen item, score -> scale * score + offset
    offset: float = 0.0

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
    if rule == "stratified":
        return _stratified(scores, k, rng)
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


def _stratified(scores: np.ndarray, k: int, rng: np.random.Generator) -> Selection:
    """Neyman-allocated stratified sample over the models' score patterns (see the module doc)."""
    n = scores.shape[1]
    patterns: dict[tuple, list[int]] = {}
    for i in range(n):
        patterns.setdefault(tuple(np.round(scores[:, i], 9)), []).append(i)
    groups = sorted(patterns.values())  # deterministic order
    spread = np.array([scores[:, g[0]].std() for g in groups])
    informative = [h for h in range(len(groups)) if spread[h] > 0]
    if not informative:  # the models agree everywhere: nothing separates them, draw at random
        informative = list(range(len(groups)))
        spread = np.ones(len(groups))
    sizes = np.array([len(groups[h]) for h in informative], dtype=float)
    alloc = _allocate(sizes * spread[informative], sizes.astype(int), k)
    chosen: list[int] = []
    scale: dict[int, float] = {}
    for h, take in zip(informative, alloc):
        picked = [groups[h][j] for j in rng.permutation(len(groups[h]))[:take]]
        chosen += picked
        scale.update((i, len(groups[h]) / take) for i in picked)
    k = len(chosen)
    agreed = [h for h in range(len(groups)) if h not in informative]
    # items nobody disagrees on count at their common score (the same for every model)
    offset = sum(len(groups[h]) * float(scores[0, groups[h][0]]) for h in agreed) / n
    items = sorted(chosen)
    scales = [scale[i] * k / n for i in items]
    estimate = scores[:, items] @ np.array(scales) / k + offset
    exact = bool(np.allclose(estimate, scores.mean(axis=1)))
    reason = (f"{k} of {n} items drawn from the {len(informative)} groups of items the {scores.shape[0]} models "
              f"score differently (Neyman allocation: group size x spread); the {n - sum(len(groups[h]) for h in informative)} "
              f"items all models score alike count at their common score; the weighted subset mean "
              f"{'reproduces' if exact else 'approximates'} every model's score on the whole pool")
    return Selection(items=items, rule="stratified", pool=n, reason=reason, scale=scales, offset=offset)


def _allocate(weights: np.ndarray, caps: np.ndarray, k: int) -> list[int]:
    """Integer counts ~ k * weights / sum, each in [1, cap], summing to min(k, sum(caps))."""
    total = int(min(k, caps.sum()))
    alloc = np.minimum(np.ones(len(weights), dtype=int), caps)
    while alloc.sum() < total:
        room = alloc < caps
        want = np.where(room, weights / np.maximum(alloc, 1), -np.inf)  # largest weight per item taken so far
        alloc[int(np.argmax(want))] += 1
    while alloc.sum() > total:  # more groups than k: keep the weightiest
        alloc[int(np.argmin(np.where(alloc > 0, weights, np.inf)))] = 0
    return [int(a) for a in alloc]
