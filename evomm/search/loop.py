"""The evolution loop, one for every modality: ask -> decode -> materialise -> evaluate -> tell."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from evomm.errors import EvommError
from evomm.search.checkpoint import SearchState
from evomm.search.objectives import vector_losses
from evomm.search.optimizers import Optimizer
from evomm.adapters.apply import apply_recipe
from evomm.search.racing import told_values
from evomm.search.scoring import ItemPool, Racing, annotate


class SearchFailed(EvommError, RuntimeError):
    """Every candidate of a generation failed: something is wrong beyond one bad recipe.

    An EvommError: the entry points print it as one line (the first candidate's error says what
    to change; every error is in history.jsonl)."""


@dataclass
class Problem:
    """Everything one candidate evaluation needs: x -> recipe -> model -> score."""

    space: Any  # SearchSpace or RouteSpace: decode(x) -> Recipe
    adapter: Any
    task: Any
    split: str
    resample: bool = False  # each generation scores on its own fitness sample (task.resample)
    pool: ItemPool | None = None  # the fitness items to score (fitness.select); None: all of them

    def full_items(self) -> int:
        """How many items a full evaluation scores (0 when the task cannot say)."""
        num_items = getattr(self.task, "num_items", None)
        return int(num_items(self.split)) if num_items is not None else 0

    def evaluate(self, x: np.ndarray, sample: int = 0, items: list[int] | None = None) -> dict:
        """One history entry. Any failure is caught and recorded: one bad candidate never ends a run.

        ``sample``: the fitness sample to score on (the generation, when resampling; else 0).
        ``items``: the items of it to score (None: ``pool``, or all). The entry records them
        (``item_ids``, ``item_scores``, ``items``) when the task gives per-item scores.
        """
        start = time.perf_counter()
        entry: dict[str, Any] = {"params": self.space.describe(x), "x": [float(v) for v in x]}
        if self.resample:
            self.task.resample(sample)
        try:
            apply_recipe(self.adapter, self.space.decode(x))
            items = self.pool.items if items is None and self.pool is not None else items
            handle = self.adapter.handle()
            # a task without per-item scoring is still called the old way when all items are wanted
            result = self.task.evaluate(handle, self.split) if items is None else self.task.evaluate(handle, self.split, items=items)
            metrics = {k: float(v) for k, v in result.items() if k != "item_scores"}
            if not math.isfinite(metrics["fitness"]):
                raise FloatingPointError(f"fitness is {metrics['fitness']}")
            entry.update(fitness=metrics["fitness"], metrics=metrics, error=None)
            if "item_scores" in result:
                scores = [float(v) for v in result["item_scores"]]
                ids = list(range(len(scores))) if items is None else [int(i) for i in items]
                entry.update(items=len(scores), item_ids=ids, item_scores=scores)
            elif items is not None:
                raise TypeError(f"task '{getattr(self.task, 'name', '?')}' returns no item_scores; racing "
                                "and item selection need one score per item (see tasks/base.py)")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - recorded in history and W&B, the search goes on
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            entry.update(fitness=None, metrics={}, error=f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.perf_counter() - start, 4)
        return entry


class FitnessCache:
    """Scores of the candidates already evaluated, keyed by their decoded recipe and sample.

    Two vectors that decode to the same recipe (clipped at the same bounds, a zero-width bound,
    a point proposed twice) build the same model and get the same score, so the second is not
    evaluated: its history entry copies the first one's scores with ``"cached": true`` and
    ``"cached_from": [generation, index]``. Failures are not remembered (they may be transient,
    e.g. out of memory). A resumed search rebuilds the cache from the checkpointed history.
    With ``resample`` a score holds for its own generation's fitness sample only.
    """

    def __init__(self, space: Any, history: list[dict] = (), resample: bool = False):
        self.space = space
        self.resample = resample
        self._scored: dict[str, dict] = {}
        for entry in history:
            self.remember(entry)

    def key(self, x: np.ndarray | list[float], sample: int = 0) -> str:
        recipe = self.space.decode(np.asarray(x, dtype=np.float64))
        blob = json.dumps([sample if self.resample else 0, recipe.to_dict()], sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()

    def lookup(self, key: str) -> dict | None:
        return self._scored.get(key)

    def remember(self, entry: dict, key: str | None = None) -> None:
        # a candidate stopped early has an estimate, not its score: a repeat of it is raced again
        if entry.get("fitness") is not None and not entry.get("cached") and not entry.get("stopped_early"):
            self._scored.setdefault(key or self.key(entry["x"], entry.get("generation", 0)), entry)

    def __len__(self) -> int:
        return len(self._scored)


def _scored_population(
    problem: Problem,
    xs: list[np.ndarray],
    generation: int,
    evaluate_population: Callable[[list[np.ndarray]], list[dict]],
    cache: FitnessCache | None,
) -> list[dict]:
    """History entries for a population: new recipes evaluated, repeated ones copied."""
    if cache is None:
        entries = evaluate_population(xs)
        for entry in entries:
            entry["cached"] = False
        return entries
    keys = [cache.key(x, generation) for x in xs]
    first: dict[str, int] = {}  # key -> index of its first occurrence in this population
    todo = [i for i, k in enumerate(keys) if cache.lookup(k) is None and first.setdefault(k, i) == i]
    entries: list[dict | None] = [None] * len(xs)
    for i, entry in zip(todo, evaluate_population([xs[i] for i in todo]) if todo else []):
        entry["cached"] = False
        entries[i] = entry
    for i, key in enumerate(keys):
        if entries[i] is None:
            known = cache.lookup(key)
            source, origin = (known, [known["generation"], known["index"]]) if known else (entries[first[key]], [generation, first[key]])
            entries[i] = {
                "params": problem.space.describe(xs[i]),
                "x": [float(v) for v in xs[i]],
                "fitness": source["fitness"],
                "metrics": dict(source["metrics"]),
                "error": source["error"],
                "seconds": 0.0,
                "cached": True,
                "cached_from": origin,
            }
    for i in todo:
        cache.remember(entries[i], keys[i])
    return entries  # type: ignore[return-value]


def search(
    problem: Problem,
    optimizer: Optimizer,
    state: SearchState,
    generations: int,
    evaluate_population: Callable[[list[np.ndarray], int], list[dict]] | None = None,
    on_candidate: Callable[[dict], None] = lambda entry: None,
    on_generation: Callable[[SearchState, list[dict]], None] = lambda state, entries: None,
    cache: bool = True,
    racing: Racing | None = None,
) -> SearchState:
    """Run generations until ``generations`` are done (or the optimizer stops).

    ``evaluate_population(xs, sample)`` maps a population to history entries; the default
    evaluates in this process, a distributed run passes one that spreads the population over
    ranks (see ``evomm.search.distributed``). With ``cache`` a candidate whose recipe was
    already scored is not evaluated again (:class:`FitnessCache`, rebuilt from ``state.history``).

    With ``problem.resample`` generation g scores on fitness sample g, and the best recipe so far
    is scored on it too before the generation's candidates are compared with it, so the best is
    always chosen by scores on one sample (``state.best["sample"]`` says which).

    With ``racing`` a population is scored as a race (``evomm.search.scoring``): only candidates
    that may rank among the optimizer's selected are scored on every item; the best is chosen
    among those, so it is always scored on the same items as the incumbent.
    """
    evaluate_population = evaluate_population or (
        lambda xs, sample, items=None: [problem.evaluate(x, sample, items) for x in xs])
    scores = FitnessCache(problem.space, state.history, resample=problem.resample) if cache else None
    while state.generation < generations and not optimizer.stop():
        xs = optimizer.ask()  # popsize vectors in [0, 1]^d
        sample = state.generation if problem.resample else 0
        population = _on_sample(problem, evaluate_population, sample)
        if problem.resample and state.best is not None and state.best.get("sample") != sample:
            state.best = _rescored(state.best, population([np.asarray(state.best["x"])])[0], sample)
        unique = population
        if racing is not None:
            pool = problem.pool.items if problem.pool is not None else list(range(problem.full_items()))
            unique = lambda ys: racing.population(ys, pool, population, state.generation)  # noqa: E731
        entries = _scored_population(problem, xs, state.generation, unique, scores)
        items_full = problem.full_items()
        for index, entry in enumerate(entries):
            annotate(entry, items_full)
            entry["generation"], entry["index"] = state.generation, index
            on_candidate(entry)
        scored = [e["fitness"] for e in entries if e["fitness"] is not None]
        if not scored:
            first = (entries[0]["error"] or "").strip().splitlines()[:1] or ["?"]
            raise SearchFailed(f"every candidate of generation {state.generation} failed; first error: {first[0]}")
        # Maximisation is stated here, once: the optimizer minimises loss = -fitness. A failed
        # candidate ranks just below the worst success of its generation.
        worst_loss = -min(scored) + 1.0
        if getattr(optimizer, "multi_objective", False):  # one loss per objective (see objectives.py)
            optimizer.tell(xs, vector_losses(problem.task, entries))
        else:
            told = told_values([e["fitness"] for e in entries], [e.get("items") or 0 for e in entries],
                               [e["stopped_early"] for e in entries], racing.settings.stopped if racing else "estimate")
            optimizer.tell(xs, [worst_loss if t is None else -t for t in told])
        state.history.extend(entries)
        for entry in entries:  # a candidate stopped early cannot be the best: others beat it
            if entry["fitness"] is not None and not entry["stopped_early"] and (
                    state.best is None or entry["fitness"] > state.best["fitness"]):
                state.best = {**entry, "sample": sample} if problem.resample else entry
        state.generation += 1
        on_generation(state, entries)
    return state


def _on_sample(problem: Problem, evaluate_population: Callable, sample: int) -> Callable:
    """``population(xs, items=None)``: entries for ``xs`` scored on ``items`` of fitness sample ``sample``.

    With an item pool (``fitness.select``) the items are always passed explicitly, so that every
    rank scores the same ones, and rank 0 weighs their scores (``ItemPool.transform``).
    """

    def population(xs: list[np.ndarray], items: list[int] | None = None) -> list[dict]:
        if problem.pool is None:
            return evaluate_population(xs, sample) if items is None else evaluate_population(xs, sample, items)
        entries = evaluate_population(xs, sample, problem.pool.items if items is None else items)
        return [problem.pool.transform(e) for e in entries]

    return population


def _rescored(best: dict, entry: dict, sample: int) -> dict:
    """The incumbent with its scores on ``sample`` (kept as it was if that evaluation failed).

    Its first scores stay in the history, at its own generation and index.
    """
    if entry["fitness"] is None:
        return best
    return {**best, "fitness": entry["fitness"], "metrics": entry["metrics"], "sample": sample}
