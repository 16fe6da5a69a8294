"""Objective vectors, losses for the optimizer, and Pareto fronts over a search's history.

A task with several objectives (``task=multi``) reports each one's fitness; a single task has
one objective, its ``fitness``. Everything is *maximised*; losses for the optimizers are the
negated values, stated here once for vectors (and in the loop for scalars).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def objective_names(task: Any) -> list[str]:
    return list(getattr(task, "objectives", None) or ["fitness"])


def objective_vector(task: Any, metrics: dict[str, float]) -> list[float]:
    """The candidate's objective values (higher is better), from its metrics."""
    if getattr(task, "objectives", None):
        return [float(v) for v in task.objective_values(metrics)]
    return [float(metrics["fitness"])]


def vector_losses(task: Any, entries: list[dict]) -> list[list[float]]:
    """One loss vector per history entry; a failed candidate ranks just below the worst success
    of its generation in every objective (as the scalar loop does for one objective)."""
    values = [objective_vector(task, e["metrics"]) if e["fitness"] is not None else None for e in entries]
    scored = np.array([v for v in values if v is not None], dtype=float)
    worst = -scored.min(axis=0) + 1.0
    return [list(worst) if v is None else [-x for x in v] for v in values]


def generation_stats(task: Any, entries: list[dict]) -> dict[str, float]:
    """Per-objective best of a generation (``gen/best/<objective>``), for tasks with several."""
    if not getattr(task, "objectives", None):
        return {}
    scored = [objective_vector(task, e["metrics"]) for e in entries if e["fitness"] is not None]
    return {f"gen/best/{name}": max(v[j] for v in scored) for j, name in enumerate(objective_names(task))}


def non_dominated(points: list[list[float]]) -> list[int]:
    """Indices of the points no other point dominates (maximisation; equal points all stay)."""
    p = np.asarray(points, dtype=float)
    keep = []
    for i in range(len(p)):
        dominated = np.any(np.all(p >= p[i], axis=1) & np.any(p > p[i], axis=1))
        if not dominated:
            keep.append(i)
    return keep


def pareto_front(history: list[dict], task: Any) -> list[dict]:
    """The non-dominated candidates of a search: for each distinct objective vector on the front
    the first candidate that reached it (accuracies on a few items tie often; the later recipes
    with the same scores add nothing to choose from), from first scores only (no cached copies).

    Returns ``{"generation", "index", "x", "params", "objectives": {name: value}, "fitness"}``
    sorted by the first objective, highest first.
    """
    names = objective_names(task)
    seen, members = set(), []
    for entry in history:
        if entry.get("fitness") is None or entry.get("cached"):
            continue
        key = tuple(objective_vector(task, entry["metrics"]))
        if key in seen:
            continue
        seen.add(key)
        members.append(entry)
    vectors = [objective_vector(task, e["metrics"]) for e in members]
    front = [
        {
            "generation": members[i]["generation"],
            "index": members[i]["index"],
            "x": list(members[i]["x"]),
            "params": members[i]["params"],
            "objectives": dict(zip(names, vectors[i])),
            "fitness": members[i]["fitness"],
        }
        for i in (non_dominated(vectors) if vectors else [])
    ]
    front.sort(key=lambda m: (-m["objectives"][names[0]], m["generation"], m["index"]))
    return front


def spread_subset(front: list[dict], k: int | None) -> list[dict]:
    """At most ``k`` members that cover the front: the best of each objective first, then the
    member farthest (in objectives scaled to [0, 1]) from those already chosen, repeatedly."""
    if k is None or k >= len(front):
        return list(front)
    names = list(front[0]["objectives"])
    values = np.array([[m["objectives"][n] for n in names] for m in front], dtype=float)
    span = values.max(axis=0) - values.min(axis=0)
    scaled = (values - values.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen: list[int] = []
    for j in range(len(names)):
        best = int(np.argmax(values[:, j]))
        if best not in chosen and len(chosen) < k:
            chosen.append(best)
    while len(chosen) < k:
        dist = np.min(np.linalg.norm(scaled[:, None, :] - scaled[None, chosen, :], axis=2), axis=1)
        dist[chosen] = -1.0
        chosen.append(int(np.argmax(dist)))
    return [front[i] for i in sorted(chosen)]


def best_mean(front: list[dict]) -> dict:
    """The member with the highest unweighted mean of its objectives."""
    return max(front, key=lambda m: (float(np.mean(list(m["objectives"].values()))), -m["generation"], -m["index"]))
