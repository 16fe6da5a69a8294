"""Pure parts of multi-objective search: NSGA-II ask/tell/state, objective vectors, Pareto fronts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from evomm.errors import ConfigError
from evomm.search.objectives import (best_mean, generation_stats, non_dominated, pareto_front, spread_subset,
                                        vector_losses)
from evomm import plugins


def build_optimizer(name, dim, seed, **options):
    return plugins.build("optimizer", name, options, dim=dim, seed=seed)


def zdt1(x: np.ndarray) -> list[float]:
    """A classic two-objective test problem (both minimised) whose front is f2 = 1 - sqrt(f1)."""
    g = 1 + 9 * float(np.mean(x[1:]))
    return [float(x[0]), g * (1 - np.sqrt(x[0] / g))]


def _run(opt, generations):
    for _ in range(generations):
        xs = opt.ask()
        opt.tell(xs, [zdt1(x) for x in xs])
    return opt


def test_nsga2_is_seeded_and_approaches_the_front():
    a = _run(build_optimizer("nsga2", dim=4, seed=3, n_obj=2, popsize=12), 25)
    b = _run(build_optimizer("nsga2", dim=4, seed=3, n_obj=2, popsize=12), 25)
    c = _run(build_optimizer("nsga2", dim=4, seed=4, n_obj=2, popsize=12), 25)
    xa, fa = a.front()
    assert np.array_equal(xa, b.front()[0]) and not np.array_equal(xa, c.front()[0])
    assert ((0 <= xa) & (xa <= 1)).all()
    # after 25 generations the front's g (distance from the true front) fell well below a random point's
    g = 1 + 9 * xa[:, 1:].mean(axis=1)
    assert g.mean() < 2.0 < 1 + 9 * 0.5
    assert len(non_dominated((-fa).tolist())) == len(fa)
    assert a.state()["front_size"] == len(fa)


def test_nsga2_pickled_midway_resumes_exactly():
    opt = _run(build_optimizer("nsga2", dim=3, seed=0, n_obj=2, popsize=8), 4)
    resumed = pickle.loads(pickle.dumps(opt))
    np.random.seed(123)  # other users of numpy's global generator do not change the search
    _run(opt, 4)
    np.random.random(5)
    _run(resumed, 4)
    assert np.array_equal(opt.front()[0], resumed.front()[0])
    assert np.array_equal(opt.algorithm.pop.get("X"), resumed.algorithm.pop.get("X"))


def test_nsga2_interface_details():
    opt = build_optimizer("nsga2", dim=2, seed=0, n_obj=2, popsize=6, x0=[0.25, 0.75], max_evals=12)
    xs = opt.ask()
    assert len(xs) == 6 and np.allclose(xs[0], [0.25, 0.75])
    with pytest.raises(ValueError, match="population of the last ask"):
        opt.tell(xs[::-1], [[0.0, 0.0]] * 6)
    xs = opt.ask()
    opt.tell(xs, [zdt1(x) for x in xs])
    assert not opt.stop()
    _run(opt, 1)
    assert opt.stop()
    with pytest.raises(ConfigError, match="n_obj"):
        build_optimizer("nsga2", dim=2, seed=0, n_obj=0)


def _entry(g, i, values, x=None, fitness=0.0, cached=False):
    metrics = {f"o{j}/fitness": v for j, v in enumerate(values or [])}
    return {"generation": g, "index": i, "x": x or [g + i / 10], "params": {}, "metrics": metrics,
            "fitness": None if values is None else fitness, "cached": cached}


class TwoObjectives:
    objectives = ["o0", "o1"]

    def objective_values(self, metrics):
        return [metrics["o0/fitness"], metrics["o1/fitness"]]


def test_pareto_front_from_history():
    history = [
        _entry(0, 0, [0.9, 0.1]), _entry(0, 1, [0.5, 0.6]), _entry(0, 2, [0.4, 0.4]),  # dominated
        _entry(1, 0, [0.1, 0.9]), _entry(1, 1, [0.5, 0.6]),  # the same scores as (0, 1): not kept
        _entry(1, 2, [0.95, 0.95], cached=True),  # cached entries copy others: never members
    ]
    history[5]["fitness"] = 1.0
    front = pareto_front(history, TwoObjectives())
    assert [(m["generation"], m["index"]) for m in front] == [(0, 0), (0, 1), (1, 0)]
    assert front[1]["objectives"] == {"o0": 0.5, "o1": 0.6}
    assert best_mean(front)["index"] == 1
    assert non_dominated([[1, 1], [1, 1], [0, 2], [0, 1]]) == [0, 1, 2]


def test_spread_subset_keeps_the_extremes_then_the_farthest():
    front = [{"objectives": {"a": a, "b": 1 - a}, "i": n} for n, a in enumerate([0.0, 0.1, 0.2, 0.5, 0.9, 1.0])]
    picked = [m["i"] for m in spread_subset(front, 3)]
    assert picked == [0, 3, 5]
    assert spread_subset(front, None) == front and len(spread_subset(front, 10)) == 6


def test_vector_losses_negate_and_rank_failures_last():
    entries = [_entry(0, 0, [0.5, 0.2], fitness=0.35), _entry(0, 1, None), _entry(0, 2, [0.1, 0.8], fitness=0.45)]
    entries[1]["metrics"] = {}
    losses = vector_losses(TwoObjectives(), entries)
    assert losses[0] == [-0.5, -0.2] and losses[2] == [-0.1, -0.8]
    assert losses[1] == pytest.approx([0.9, 0.8])


def test_generation_stats_give_each_objectives_best():
    entries = [_entry(0, 0, [0.5, 0.2], fitness=0.35), _entry(0, 1, None), _entry(0, 2, [0.1, 0.8], fitness=0.45)]
    assert generation_stats(TwoObjectives(), entries) == {"gen/best/o0": 0.5, "gen/best/o1": 0.8}
    assert generation_stats(object(), entries) == {}
