"""Optimizers behind one ask/tell interface, over the unit cube [0, 1]^d.

``tell`` takes *losses* (lower is better): the loop states maximisation once, where it turns
fitness into loss. Each optimizer owns its random generator, so pickling the optimizer captures
everything needed to resume the search exactly.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from evomm.errors import ConfigError
from evomm.registry import Registry


class Optimizer(Protocol):
    popsize: int

    def ask(self) -> list[np.ndarray]: ...

    def tell(self, xs: list[np.ndarray], losses: list[float]) -> None: ...

    def stop(self) -> bool: ...

    def state(self) -> dict[str, float]:
        """Numbers worth logging per generation (e.g. sigma)."""


OPTIMIZERS: Registry = Registry("optimizer")


def default_popsize(dim: int) -> int:
    """pycma's (and the paper's) default: 4 + floor(3 ln d)."""
    return 4 + int(math.floor(3 * math.log(max(dim, 1))))


class _Randn:
    """pycma calls ``randn(n, dim)`` like ``np.random.randn``; this draws from our generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


@OPTIMIZERS.register("cmaes")
class CMAES:
    """pycma's CMA-ES with box bounds [0, 1] and its own seeded normal generator."""

    def __init__(
        self,
        dim: int,
        seed: int,
        popsize: int | None = None,
        sigma0: float = 1 / 6,
        x0: float | list[float] | np.ndarray = 0.5,
        max_evals: int | None = None,
    ):
        import cma

        if dim < 1:
            raise ConfigError("the search space is empty: evolve at least one parameter")
        self.popsize = int(popsize or default_popsize(dim))
        x0 = np.broadcast_to(np.asarray(x0, dtype=float), (dim,)).copy()
        self._rng = np.random.default_rng(seed)
        opts = {
            "popsize": self.popsize,
            "bounds": [0.0, 1.0],
            # A private generator instead of pycma's global np.random: the search is then
            # reproducible from the pickled optimizer alone, whatever else uses numpy.
            "randn": _Randn(self._rng),
            "seed": float("nan"),  # pycma: NaN means "do not touch np.random's global seed"
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "tolx": 0,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolstagnation": int(1e9),
            "tolflatfitness": int(1e9),
        }
        if max_evals:
            opts["maxfevals"] = int(max_evals)
        self.es = cma.CMAEvolutionStrategy(x0, float(sigma0), opts)
        self.mu = int(self.es.sp.weights.mu)  # how many of a population the mean update uses (racing keeps them)

    def ask(self) -> list[np.ndarray]:
        return [np.asarray(x, dtype=float) for x in self.es.ask()]

    def tell(self, xs: list[np.ndarray], losses: list[float]) -> None:
        self.es.tell(xs, [float(v) for v in losses])

    def stop(self) -> bool:
        return bool(self.es.stop())

    def state(self) -> dict[str, float]:
        return {"sigma": float(self.es.sigma)}


@OPTIMIZERS.register("random")
class RandomSearch:
    """Uniform samples in [0, 1]^d: the baseline every evolved result should beat."""

    def __init__(self, dim: int, seed: int, popsize: int | None = None, max_evals: int | None = None, **_ignored):
        if dim < 1:
            raise ConfigError("the search space is empty: evolve at least one parameter")
        self.dim = dim
        self.popsize = int(popsize or default_popsize(dim))
        self.max_evals = max_evals
        self.evals = 0
        self.mu = 1  # only the best matters (racing keeps one)
        self._rng = np.random.default_rng(seed)

    def ask(self) -> list[np.ndarray]:
        return [self._rng.random(self.dim) for _ in range(self.popsize)]

    def tell(self, xs: list[np.ndarray], losses: list[float]) -> None:
        self.evals += len(xs)

    def stop(self) -> bool:
        return self.max_evals is not None and self.evals >= self.max_evals

    def state(self) -> dict[str, float]:
        return {}


def build_optimizer(name: str, dim: int, seed: int, **options) -> Optimizer:
    return OPTIMIZERS.get(name)(dim=dim, seed=seed, **options)
