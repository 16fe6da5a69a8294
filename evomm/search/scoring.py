"""How the search spends fitness evaluations: settings, raced populations, item accounting.

``fitness.racing`` scores a population as a race (``evomm.search.racing``): every candidate on a
first block of items, then only those that may still rank among the optimizer's selected ``mu``.
``fitness.select`` scores the sources once on the whole fitness sample and keeps the items that
separate them (``evomm.search.selection``; see ``evomm.search.item_pool``). Both work on the
per-item scores every task returns (``item_scores``), so a user's own task gets them with no
extra code.

A raced candidate's history entry joins its rounds: ``item_ids`` / ``item_scores`` (the items it
was scored on, in order), ``items`` (their number), ``stopped_early``, and ``fitness``, the mean
of its item scores (for a stopped candidate an estimate over fewer items). Its other metrics are
the rounds' means weighted by their item counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from evomm.errors import ConfigError
from evomm.search.racing import BOUNDS, RacingRule, item_order, race
from evomm.search.selection import RULES

STOPPED_MODES = ("estimate", "below")


@dataclass(frozen=True)
class FitnessSettings:
    """The ``fitness`` section of the run config."""

    racing: bool = False
    select: int | None = None  # keep this many items of the fitness sample (None: all)
    select_rule: str = "stratified"
    min_items: int = 8  # racing: the first block
    max_items: int | None = None  # racing: survivors' items (None: all of the pool)
    delta: float = 0.05
    bound: str = "bootstrap"
    stopped: str = "estimate"  # what the optimizer is told for a stopped candidate

    @classmethod
    def from_config(cls, section: dict | None, resample: bool = False) -> "FitnessSettings":
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"fitness does not take {unknown}; its keys: {', '.join(cls.__dataclass_fields__)}")
        s = cls(**section)
        if not isinstance(s.racing, bool):
            raise ConfigError(f"fitness.racing must be true or false, got {s.racing!r}")
        for key, minimum in (("select", 2), ("min_items", 2), ("max_items", 2)):
            value = getattr(s, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise ConfigError(f"fitness.{key} must be an integer >= {minimum} or null, got {value!r}")
        if s.min_items is None:
            raise ConfigError("fitness.min_items must be an integer >= 2")
        if s.max_items is not None and s.max_items < s.min_items:
            raise ConfigError(f"fitness.max_items ({s.max_items}) must be >= fitness.min_items ({s.min_items})")
        if isinstance(s.delta, bool) or not isinstance(s.delta, (int, float)) or not 0 < s.delta < 1:
            raise ConfigError(f"fitness.delta must lie in (0, 1), got {s.delta!r}")
        for key, known in (("bound", BOUNDS), ("stopped", STOPPED_MODES), ("select_rule", RULES)):
            if getattr(s, key) not in known:
                raise ConfigError(f"fitness.{key} must be one of {', '.join(known)}, got {getattr(s, key)!r}")
        if s.select is not None and resample:
            raise ConfigError("fitness.select picks items of one fixed fitness sample; it cannot be combined "
                              "with resample_fitness=true (set fitness.select=null or resample_fitness=false)")
        return s

    def rule(self, seed: int) -> RacingRule:
        return RacingRule(min_items=self.min_items, max_items=self.max_items, delta=float(self.delta),
                          bound=self.bound, seed=seed)

    def fingerprint(self) -> dict | None:
        """What a resumed run must share (None when both are off, so older checkpoints resume)."""
        if not self.racing and self.select is None:
            return None
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def join_rounds(parts: list[dict], stopped: bool) -> dict:
    """One history entry from a candidate's entries of successive rounds (the first holds params, x)."""
    first = parts[0]
    failed = next((p for p in parts if p["fitness"] is None), None)
    entry = {k: first[k] for k in ("params", "x")}
    entry["seconds"] = round(sum(p["seconds"] for p in parts), 4)
    if failed is not None:
        entry.update(fitness=None, metrics={}, error=failed["error"], items=sum(p.get("items", 0) for p in parts),
                     stopped_early=False)
        return entry
    ids = [i for p in parts for i in p["item_ids"]]
    scores = [s for p in parts for s in p["item_scores"]]
    metrics: dict[str, float] = {}
    for key in {k for p in parts for k in p["metrics"]}:
        having = [p for p in parts if key in p["metrics"]]
        if key == "n":
            metrics[key] = float(sum(p["metrics"][key] for p in having))
        else:
            weights = [len(p["item_ids"]) for p in having]
            metrics[key] = float(np.average([p["metrics"][key] for p in having], weights=weights))
    fitness = float(np.mean(scores))
    metrics["fitness"] = fitness
    entry.update(fitness=fitness, metrics=dict(sorted(metrics.items())), error=None, items=len(ids),
                 stopped_early=stopped, item_ids=ids, item_scores=scores)
    return entry


def raced_population(
    xs: list[np.ndarray],
    pool: list[int],
    evaluate: Callable[[list[np.ndarray], list[int]], list[dict]],
    settings: FitnessSettings,
    keep: int,
    seed: int,
    generation: int,
) -> list[dict]:
    """History entries for ``xs``, scored as a race on the items of ``pool``.

    ``evaluate(xs, items)`` scores some candidates on some items (one round); ``keep``: how many
    candidates must be ranked on every item (the optimizer's mu).
    """
    parts: list[list[dict]] = [[] for _ in xs]

    def score(candidates: list[int], items: list[int]) -> list[list[float] | None]:
        out = []
        for c, entry in zip(candidates, evaluate([xs[c] for c in candidates], items)):
            parts[c].append(entry)
            out.append(None if entry["fitness"] is None else entry["item_scores"])
        return out

    order = item_order(pool, seed, generation)
    result = race(len(xs), order, score, keep=max(1, min(keep, len(xs))), rule=settings.rule(seed),
                  generation=generation)
    return [join_rounds(p, stopped) for p, stopped in zip(parts, result.stopped)]


def items_scored(history: list[dict]) -> tuple[int, int]:
    """(fitness items scored, items a full evaluation of the same candidates would have scored)."""
    scored = sum(int(h.get("items") or 0) for h in history)
    full = sum(int(h.get("items_full") or 0) for h in history)
    return scored, full


def describe_items(scored: int, full: int, extra: int = 0) -> str:
    """'1234 of 5678 items (4.6x fewer)', with ``extra`` items spent on item selection added."""
    total = scored + extra
    if not full:
        return f"{total} items"
    ratio = full / total if total else float("inf")
    return f"{total} of {full} items ({ratio:.1f}x fewer)"


def annotate(entry: dict[str, Any], items_full: int) -> dict[str, Any]:
    """Accounting fields of a history entry (a cached copy scored nothing)."""
    if entry.get("cached"):
        entry["items"] = 0
        entry["stopped_early"] = False
    entry.setdefault("stopped_early", False)
    entry["items_full"] = 0 if entry.get("cached") else items_full
    return entry


@dataclass(frozen=True)
class Racing:
    """Racing as the loop runs it: the settings, the optimizer's mu and the run's seed."""

    settings: FitnessSettings
    keep: int
    seed: int

    def population(self, xs: list[np.ndarray], pool: list[int], evaluate: Callable, generation: int) -> list[dict]:
        return raced_population(xs, pool, evaluate, self.settings, self.keep, self.seed, generation)


@dataclass(frozen=True)
class ItemPool:
    """The fitness items a search scores (``fitness.select``) and how their scores count.

    With a stratified selection item i's score s counts as ``scale_i * s + offset``, whose mean
    over the chosen items estimates the score on the whole fitness sample (the raw subset mean
    stays in the metrics as ``subset_fitness``).
    """

    items: list[int]
    scale: dict[int, float] | None = None
    offset: float = 0.0

    def transform(self, entry: dict) -> dict:
        if self.scale is None or entry.get("fitness") is None or "item_scores" not in entry:
            return entry
        scores = [self.scale[i] * s + self.offset for i, s in zip(entry["item_ids"], entry["item_scores"])]
        fitness = float(np.mean(scores))
        metrics = {**entry["metrics"], "subset_fitness": entry["fitness"], "fitness": fitness}
        return {**entry, "item_scores": scores, "fitness": fitness, "metrics": metrics}
