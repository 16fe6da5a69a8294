"""Optimizers: seeded, picklable mid-search, and actually optimising."""

import pickle

import numpy as np
import pytest

from evomm.errors import UnknownNameError
from evomm.search.optimizers import build_optimizer, default_popsize


def sphere(x):
    return float(np.sum((x - 0.3) ** 2))


@pytest.mark.parametrize("name", ["cmaes", "random"])
def test_same_seed_same_candidates(name):
    a, b = build_optimizer(name, dim=5, seed=7), build_optimizer(name, dim=5, seed=7)
    c = build_optimizer(name, dim=5, seed=8)
    xa, xb, xc = a.ask(), b.ask(), c.ask()
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb))
    assert not all(np.array_equal(p, q) for p, q in zip(xa, xc))
    assert all(((0 <= x) & (x <= 1)).all() for x in xa)


@pytest.mark.parametrize("name", ["cmaes", "random"])
def test_pickled_optimizer_continues_identically(name):
    opt = build_optimizer(name, dim=4, seed=1, popsize=6)
    xs = opt.ask()
    opt.tell(xs, [sphere(x) for x in xs])
    clone = pickle.loads(pickle.dumps(opt))
    for _ in range(3):
        xs, ys = opt.ask(), clone.ask()
        assert all(np.array_equal(p, q) for p, q in zip(xs, ys))
        opt.tell(xs, [sphere(x) for x in xs])
        clone.tell(ys, [sphere(y) for y in ys])


def test_cmaes_minimises_a_quadratic():
    opt = build_optimizer("cmaes", dim=4, seed=0, sigma0=0.2)
    first = None
    for _ in range(30):
        xs = opt.ask()
        losses = [sphere(x) for x in xs]
        first = first if first is not None else min(losses)
        opt.tell(xs, losses)
    assert min(losses) < first / 10


def test_defaults_and_errors():
    assert default_popsize(6) == 4 + int(np.floor(3 * np.log(6)))
    assert build_optimizer("cmaes", dim=6, seed=0).popsize == default_popsize(6)
    with pytest.raises(UnknownNameError, match="cmaes, random"):
        build_optimizer("adam", dim=3, seed=0)
