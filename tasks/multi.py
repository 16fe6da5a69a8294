"""multi: several fitness tasks as one task with a vector of objectives.

The search loop sees one task. Each candidate is scored by every sub-task; the result holds each
objective's metrics as ``<objective>/<metric>`` (so history.jsonl, W&B and the results table
record them per task), the weighted mean of the objectives' fitness as ``fitness`` (what a
single-objective optimizer such as CMA-ES maximises), and ``objective_values`` gives the vector a
multi-objective optimizer (``optimizer=nsga2``) uses.

Config (``task=multi``)::

    tasks:
      arith: {name: toy_skill, skill: english_arith, weight: 1.0}
      ja:    {name: toy_skill, skill: japanese_qa}
      mgsm_ja: {}            # name defaults to the objective's key (or _target_: your class); weight to 1

``fitness`` and ``heldout`` map to each sub-task's own fitness and held-out splits. Items are
the sub-tasks' item lists one after the other; ``item_scores`` are rescaled so that their mean
over all items is the weighted fitness (each item of objective i counts w_i / sum(w) / n_i * N).
"""

from __future__ import annotations

from typing import Any

from evomm import plugins
from evomm.errors import ConfigError
from evomm.tasks import build_task
from evomm.tasks.base import Resampling

SPLITS = ("fitness", "heldout")


class MultiTask(Resampling):
    name = "multi"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(self, tasks: dict[str, dict] | None = None, seed: int = 0):
        if not tasks or not isinstance(tasks, dict):
            raise ConfigError("multi: task.tasks must map objective names to task options, "
                              "e.g. {arith: {name: toy_skill, skill: english_arith}, ja: {name: toy_skill, ...}}")
        self.seed = seed
        self.tasks: dict[str, Any] = {}
        self.weights: dict[str, float] = {}
        for objective, options in tasks.items():
            options = dict(options or {})
            kind = plugins.reference({"name": objective, **options}, "task")  # name or _target_
            weight = options.pop("weight", 1.0)
            options = plugins.options(options)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"multi: objective '{objective}' needs a weight >= 0, got {weight!r}")
            if "/" in objective:
                raise ConfigError(f"multi: objective name '{objective}' must not contain '/'")
            task = build_task(kind, **_with_seed(kind, options, seed))
            self.tasks[objective], self.weights[objective] = task, float(weight)
        if sum(self.weights.values()) <= 0:
            raise ConfigError("multi: at least one objective needs a weight > 0")
        modalities = {t.modality for t in self.tasks.values()}
        if len(modalities) != 1:
            raise ConfigError(f"multi: every objective must score the same modality, got {sorted(modalities)}")
        self.modality = modalities.pop()

    @property
    def objectives(self) -> list[str]:
        return list(self.tasks)

    def objective_values(self, metrics: dict[str, float]) -> list[float]:
        """The objective vector (higher is better) of a result of :meth:`evaluate`."""
        return [metrics[f"{o}/fitness"] for o in self.objectives]

    def _split(self, task: Any, split: str) -> str:
        if split not in SPLITS:
            raise ConfigError(f"multi has splits 'fitness' and 'heldout', not '{split}'")
        return task.fitness_split if split == "fitness" else task.heldout_split

    def validate(self) -> None:
        for objective, task in self.tasks.items():
            task.validate()
            if task.fitness_split == task.heldout_split:
                raise ConfigError(f"multi: objective '{objective}' ({task.name}) would evolve on its held-out split")

    def num_items(self, split: str) -> int:
        return sum(self._counts(split).values())

    def _counts(self, split: str) -> dict[str, int]:
        counts = {}
        for objective, task in self.tasks.items():
            if not hasattr(task, "num_items"):
                raise ConfigError(f"multi: objective '{objective}' ({task.name}) does not list its items")
            counts[objective] = task.num_items(self._split(task, split))
        return counts

    def _items_per_task(self, split: str, items: list[int]) -> dict[str, list[int]]:
        """Positions in the concatenated item list -> each objective's own positions."""
        per: dict[str, list[int]] = {o: [] for o in self.tasks}
        bounds, start = [], 0
        for objective, n in self._counts(split).items():
            bounds.append((objective, start, start + n))
            start += n
        for i in items:
            objective, lo, _ = next(b for b in bounds if b[1] <= i < b[2])
            per[objective].append(i - lo)
        return per

    def evaluate(self, handle: Any, split: str, items: list[int] | None = None) -> dict:
        per = None if items is None else self._items_per_task(split, items)
        metrics: dict[str, float] = {}
        item_scores: dict[str, list[float]] | None = {}
        for objective, task in self.tasks.items():
            if per is not None and not per[objective]:
                continue  # none of its items asked for: this objective is not scored
            sub_split = self._split(task, split)
            result = dict(task.evaluate(handle, sub_split) if per is None else task.evaluate(handle, sub_split, per[objective]))
            scores = result.pop("item_scores", None)
            if item_scores is not None and scores is not None:
                item_scores[objective] = [float(s) for s in scores]
            else:
                item_scores = None
            metrics.update({f"{objective}/{k}": float(v) for k, v in result.items()})
        scored = [o for o in self.tasks if f"{o}/fitness" in metrics]
        total = sum(self.weights[o] for o in scored)
        metrics["fitness"] = sum(self.weights[o] * metrics[f"{o}/fitness"] for o in scored) / total if total else float("nan")
        if item_scores is not None:
            metrics["item_scores"] = self._weighted_items(split, item_scores, total)  # type: ignore[assignment]
        return metrics

    def _weighted_items(self, split: str, scores: dict[str, list[float]], total: float) -> list[float]:
        counts = self._counts(split) if all(hasattr(t, "num_items") for t in self.tasks.values()) else \
            {o: len(s) for o, s in scores.items()}
        n_all = sum(counts[o] for o in scores)
        return [s * self.weights[o] / total * n_all / counts[o] for o, ss in scores.items() for s in ss]

    def resample(self, round_: int) -> None:
        for objective, task in self.tasks.items():
            if not isinstance(task, Resampling):
                raise ConfigError(f"multi: objective '{objective}' ({task.name}) cannot redraw its fitness sample")
            task.resample(round_)
        self.sample_round = round_


def _with_seed(kind: str, options: dict, seed: int) -> dict:
    """The run's seed for a sub-task that takes one and was not given its own."""
    named, _ = plugins.accepted_options(plugins.load_class("task", kind))
    if "seed" in named and "seed" not in options:
        return {**options, "seed": seed}
    return options
