"""The evolution loop, one for every modality: ask -> decode -> materialise -> evaluate -> tell."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from evomm.evolution.checkpoint import SearchState
from evomm.evolution.optimizers import Optimizer
from evomm.adapters.base import apply_recipe
from evomm.merging.space import SearchSpace


class SearchFailed(RuntimeError):
    """Every candidate of a generation failed: something is wrong beyond one bad recipe."""


@dataclass
class Problem:
    """Everything one candidate evaluation needs: x -> recipe -> model -> score."""

    space: Any  # SearchSpace or RouteSpace: decode(x) -> Recipe
    adapter: Any
    task: Any
    split: str

    def evaluate(self, x: np.ndarray) -> dict:
        """One history entry. Any failure is caught and recorded: one bad candidate never ends a run."""
        start = time.perf_counter()
        entry: dict[str, Any] = {"params": self.space.describe(x), "x": [float(v) for v in x]}
        try:
            apply_recipe(self.adapter, self.space.decode(x))
            metrics = {k: float(v) for k, v in self.task.evaluate(self.adapter.handle(), self.split).items()}
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


def search(
    problem: Problem,
    optimizer: Optimizer,
    state: SearchState,
    generations: int,
    evaluate_population: Callable[[list[np.ndarray]], list[dict]] | None = None,
    on_candidate: Callable[[dict], None] = lambda entry: None,
    on_generation: Callable[[SearchState, list[dict]], None] = lambda state, entries: None,
) -> SearchState:
    """Run generations until ``generations`` are done (or the optimizer stops).

    ``evaluate_population`` maps a population to history entries; the default evaluates in this
    process, a distributed run passes one that spreads the population over ranks.
    """
    evaluate_population = evaluate_population or (lambda xs: [problem.evaluate(x) for x in xs])
    while state.generation < generations and not optimizer.stop():
        xs = optimizer.ask()  # popsize vectors in [0, 1]^d
        entries = evaluate_population(xs)
        for index, entry in enumerate(entries):
            entry["generation"], entry["index"] = state.generation, index
            on_candidate(entry)
        scored = [e["fitness"] for e in entries if e["fitness"] is not None]
        if not scored:
            raise SearchFailed(
                f"every candidate of generation {state.generation} failed; first error: {entries[0]['error']}"
            )
        # Maximisation is stated here, once: the optimizer minimises loss = -fitness. A failed
        # candidate ranks just below the worst success of its generation.
        worst_loss = -min(scored) + 1.0
        optimizer.tell(xs, [worst_loss if e["fitness"] is None else -e["fitness"] for e in entries])
        state.history.extend(entries)
        for entry in entries:
            if entry["fitness"] is not None and (state.best is None or entry["fitness"] > state.best["fitness"]):
                state.best = entry
        state.generation += 1
        on_generation(state, entries)
    return state
