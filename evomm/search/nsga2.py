"""NSGA-II (pymoo) behind evomm's ask/tell interface, for several objectives at once.

``tell`` takes one loss *vector* per candidate (lower is better in every objective; the loop
turns fitness into loss). pymoo 0.6 draws every random number from the algorithm's own
``numpy.random.Generator`` (seeded here), so pickling this object captures the whole search
state: a checkpointed search resumes exactly.
"""

from __future__ import annotations

import numpy as np

from evomm.errors import ConfigError
from evomm.search.optimizers import default_popsize


def _box_problem(dim: int, n_obj: int):
    """The search box for pymoo; evomm evaluates, so pymoo's plain Problem (picklable) suffices."""
    from pymoo.core.problem import Problem

    return Problem(n_var=dim, n_obj=n_obj, xl=0.0, xu=1.0)


class NSGA2:
    """pymoo's NSGA-II over [0, 1]^d with ``n_obj`` objectives (SBX crossover, polynomial mutation)."""

    multi_objective = True

    def __init__(
        self,
        dim: int,
        seed: int,
        n_obj: int = 2,
        popsize: int | None = None,
        max_evals: int | None = None,
        x0: float | list[float] | np.ndarray | None = None,
        eta_crossover: float = 15.0,
        eta_mutation: float = 20.0,
    ):
        from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM

        if dim < 1:
            raise ConfigError("the search space is empty: evolve at least one parameter")
        if isinstance(n_obj, bool) or not isinstance(n_obj, int) or n_obj < 1:
            raise ConfigError(f"nsga2: n_obj must be a positive integer, got {n_obj!r}")
        self.dim, self.n_obj = dim, n_obj
        self.popsize = int(popsize or default_popsize(dim))
        if self.popsize < 2:
            raise ConfigError(f"nsga2: popsize must be at least 2, got {self.popsize}")
        self.max_evals = max_evals
        self.evals = 0
        sampling = self._initial(x0, seed)
        kwargs = {"sampling": sampling} if sampling is not None else {}
        self.algorithm = PymooNSGA2(pop_size=self.popsize, crossover=SBX(eta=eta_crossover, prob=0.9),
                                    mutation=PM(eta=eta_mutation), eliminate_duplicates=True, **kwargs)
        self.problem = _box_problem(dim, n_obj)
        # The loop decides when to stop; pymoo's own termination is never reached.
        self.algorithm.setup(self.problem, termination=("n_gen", 2**31 - 1), seed=int(seed))
        self._pending = None

    def _initial(self, x0, seed: int) -> np.ndarray | None:
        """A given start point joins the first population (the rest is uniform random)."""
        if x0 is None:
            return None
        rng = np.random.default_rng([int(seed), 7])
        first = np.broadcast_to(np.asarray(x0, dtype=float), (self.dim,))
        return np.vstack([first, rng.random((self.popsize - 1, self.dim))])

    def ask(self) -> list[np.ndarray]:
        self._pending = self.algorithm.ask()
        return [np.asarray(x, dtype=float).copy() for x in self._pending.get("X")]

    def tell(self, xs: list[np.ndarray], losses: list) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        pop, self._pending = self._pending, None
        if pop is None or len(xs) != len(pop) or not np.allclose(np.asarray(xs), pop.get("X")):
            raise ValueError("nsga2: tell() needs the population of the last ask(), in order")
        F = np.asarray(losses, dtype=float).reshape(len(xs), self.n_obj)
        Evaluator().eval(StaticProblem(self.problem, F=F), pop)
        self.algorithm.tell(infills=pop)
        self.evals += len(xs)

    def stop(self) -> bool:
        return self.max_evals is not None and self.evals >= self.max_evals

    def state(self) -> dict[str, float]:
        opt = self.algorithm.opt
        return {"front_size": float(len(opt)) if opt is not None else 0.0}

    def front(self) -> tuple[np.ndarray, np.ndarray]:
        """The current non-dominated set: (X, losses)."""
        opt = self.algorithm.opt
        if opt is None:
            return np.empty((0, self.dim)), np.empty((0, self.n_obj))
        return opt.get("X"), opt.get("F")
