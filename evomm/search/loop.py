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

    def evaluate(self, x: np.ndarray, sample: int = 0) -> dict:
        """One history entry. Any failure is caught and recorded: one bad candidate never ends a run.

        ``sample``: the fitness sample to score on (the generation, when resampling; else 0).
        """
        start = time.perf_counter()
        entry: dict[str, Any] = {"params": self.space.describe(x), "x": [float(v) for v in x]}
        if self.resample:
            self.task.resample(sample)
        try:
            apply_recipe(self.adapter, self.space.decode(x))
            result = self.task.evaluate(self.adapter.handle(), self.split)
            metrics = {k: float(v) for k, v in result.items() if k != "item_scores"}
            if not math.isfinite(metrics["fitness"]):
                raise FloatingPointError(f"fitness is {metrics['fitness']}")
            entry.update(fitness=metrics["fitness"], metrics=metrics, error=None)
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
        if entry.get("fitness") is not None and not entry.get("cached"):
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
) -> SearchState:
    """Run generations until ``generations`` are done (or the optimizer stops).

    ``evaluate_population(xs, sample)`` maps a population to history entries; the default
    evaluates in this process, a distributed run passes one that spreads the population over
    ranks (see ``evomm.search.distributed``). With ``cache`` a candidate whose recipe was
    already scored is not evaluated again (:class:`FitnessCache`, rebuilt from ``state.history``).

    With ``problem.resample`` generation g scores on fitness sample g, and the best recipe so far
    is scored on it too before the generation's candidates are compared with it, so the best is
    always chosen by scores on one sample (``state.best["sample"]`` says which).
    """
    evaluate_population = evaluate_population or (lambda xs, sample: [problem.evaluate(x, sample) for x in xs])
    scores = FitnessCache(problem.space, state.history, resample=problem.resample) if cache else None
    while state.generation < generations and not optimizer.stop():
        xs = optimizer.ask()  # popsize vectors in [0, 1]^d
        sample = state.generation if problem.resample else 0
        population = lambda xs: evaluate_population(xs, sample)  # noqa: E731
        if problem.resample and state.best is not None and state.best.get("sample") != sample:
            state.best = _rescored(state.best, population([np.asarray(state.best["x"])])[0], sample)
        entries = _scored_population(problem, xs, state.generation, population, scores)
        for index, entry in enumerate(entries):
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
            optimizer.tell(xs, [worst_loss if e["fitness"] is None else -e["fitness"] for e in entries])
        state.history.extend(entries)
        for entry in entries:
            if entry["fitness"] is not None and (state.best is None or entry["fitness"] > state.best["fitness"]):
                state.best = {**entry, "sample": sample} if problem.resample else entry
        state.generation += 1
        on_generation(state, entries)
    return state


def _rescored(best: dict, entry: dict, sample: int) -> dict:
    """The incumbent with its scores on ``sample`` (kept as it was if that evaluation failed).

    Its first scores stay in the history, at its own generation and index.
    """
    if entry["fitness"] is None:
        return best
    return {**best, "fitness": entry["fitness"], "metrics": entry["metrics"], "sample": sample}
