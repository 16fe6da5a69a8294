"""Population-parallel evaluation (torch.distributed, gloo on CPU) and the fitness cache."""

from __future__ import annotations

import multiprocessing
import os
import socket

import numpy as np

from evomm.runner import run
from evomm.search import distributed
from evomm.search.checkpoint import SearchState
from evomm.search.loop import FitnessCache, Problem, search
from evomm.recipe.recipe import Recipe
from evomm.search.space import SearchSpace, build_units
from evomm.tracking.history import read_history

from conftest import compose, torchrun_train, without_seconds


# ---- helpers ----------------------------------------------------------------------------------
class ScriptedOptimizer:
    """Proposes the populations it is given, one per generation (pycma's ask/tell surface)."""

    def __init__(self, populations):
        self.populations = [list(map(np.asarray, p)) for p in populations]
        self.told: list[list[float]] = []
        self.popsize = len(populations[0])

    def ask(self):
        return self.populations[len(self.told)]

    def tell(self, xs, losses):
        self.told.append(list(losses))

    def stop(self):
        return len(self.told) >= len(self.populations)

    def state(self):
        return {}


def space():
    template = Recipe(adapter="llm", method="ties", models=["a", "b"], base="c")
    units = build_units("model", ["embed", "layers.0", "norm"], ["layers.0"])
    return SearchSpace(template=template, units=units, evolve=["weight", "density"],
                       bounds={"weight": (0.0, 1.0), "density": (0.1, 1.0)})


def fitness_of(x) -> float:
    return -float(np.sum((np.clip(x, 0, 1) - 0.3) ** 2))


class QuadraticProblem:
    """A problem whose score is a function of the clipped vector (for the transport tests)."""

    def __init__(self):
        self.space = space()

    def evaluate(self, x, sample=0):
        return {"params": self.space.describe(x), "x": [float(v) for v in x], "fitness": fitness_of(x),
                "metrics": {"fitness": fitness_of(x)}, "error": None, "seconds": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- one process ------------------------------------------------------------------------------
def test_one_process_touches_no_torch_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert not dist.is_initialized()
    assert distributed.population_evaluator(QuadraticProblem(), ctx) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init_from_env().enabled
    ctx.release()  # a no-op


def test_shares_cover_the_population_once():
    for n in range(0, 9):
        for world in (1, 2, 3, 5):
            shares = [distributed.share(n, r, world) for r in range(world)]
            assert sorted(i for s in shares for i in s) == list(range(n))
    assert distributed.share(5, 1, 2) == [1, 3]


# ---- the fitness cache ------------------------------------------------------------------------
def test_repeated_recipes_are_not_evaluated_again():
    evaluated = []

    def evaluate_population(xs, sample):
        evaluated.extend(np.clip(x, 0, 1).tolist() for x in xs)
        return [QuadraticProblem().evaluate(x) for x in xs]

    a, b = [0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7]
    clipped_a = [0.2, 0.4, 0.6, 1.7]  # decodes to the same recipe as ... [.., 1.0]
    populations = [
        [a, b, [0.2, 0.4, 0.6, 1.0], clipped_a],  # the last two are one recipe
        [b, [0.9, 0.9, 0.9, 0.9], a],  # b and a were scored in generation 0
    ]
    problem = Problem(space=space(), adapter=None, task=None, split="fitness")
    optimizer = ScriptedOptimizer(populations)
    state = search(problem, optimizer, SearchState(optimizer=optimizer), 2, evaluate_population=evaluate_population)

    assert len(evaluated) == 4  # a, b, [.., 1.0] and [0.9]*4
    flags = [(h["generation"], h["index"], h["cached"]) for h in state.history]
    assert flags == [(0, 0, False), (0, 1, False), (0, 2, False), (0, 3, True),
                     (1, 0, True), (1, 1, False), (1, 2, True)]
    by_pos = {(h["generation"], h["index"]): h for h in state.history}
    assert by_pos[(0, 3)]["cached_from"] == [0, 2] and by_pos[(1, 0)]["cached_from"] == [0, 1]
    assert by_pos[(1, 2)]["fitness"] == by_pos[(0, 0)]["fitness"]
    assert by_pos[(0, 3)]["x"] == clipped_a  # the candidate's own vector is recorded
    assert optimizer.told[1][0] == -by_pos[(0, 1)]["fitness"]  # the optimizer sees the same score


def test_cache_is_rebuilt_from_history_on_resume():
    problem = Problem(space=space(), adapter=None, task=None, split="fitness")
    first = ScriptedOptimizer([[[0.2, 0.4, 0.6, 0.8], [0.1, 0.1, 0.1, 0.1]]])
    state = search(problem, first, SearchState(optimizer=first), 1,
                   evaluate_population=lambda xs, sample: [QuadraticProblem().evaluate(x) for x in xs])
    assert len(FitnessCache(problem.space, state.history)) == 2

    calls = []
    resumed = ScriptedOptimizer([[[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 0.5, 0.5]]])  # generation 1
    state.optimizer = resumed
    state = search(problem, resumed, state, 2,
                   evaluate_population=lambda xs, sample: calls.append(len(xs)) or [QuadraticProblem().evaluate(x) for x in xs])
    assert calls == [1]
    assert [h["cached"] for h in state.history[2:]] == [True, False]


def test_failures_are_evaluated_again():
    outcomes = iter([None, -1.0, -2.0])

    def evaluate_population(xs, sample):
        out = []
        for x in xs:
            fitness = next(outcomes)
            out.append({"params": {}, "x": list(x), "fitness": fitness, "metrics": {} if fitness is None else {"fitness": fitness},
                        "error": None if fitness is not None else "RuntimeError: transient", "seconds": 0.0})
        return out

    problem = Problem(space=space(), adapter=None, task=None, split="fitness")
    x = [0.3, 0.3, 0.3, 0.3]
    optimizer = ScriptedOptimizer([[x, [0.9, 0.9, 0.9, 0.9]], [x, x]])
    state = search(problem, optimizer, SearchState(optimizer=optimizer), 2, evaluate_population=evaluate_population)
    second = state.history[2:]
    assert [h["cached"] for h in second] == [False, True]
    assert second[0]["fitness"] == -2.0 and second[1]["cached_from"] == [1, 0]


# ---- two processes ----------------------------------------------------------------------------
def _rank_main(rank: int, port: int, populations, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), EVOMM_DIST_TIMEOUT="60")
    ctx = distributed.init_from_env()
    problem = QuadraticProblem()
    if rank == 0:
        evaluate = distributed.population_evaluator(problem, ctx)
        try:
            queue.put(("entries", [evaluate([np.asarray(x) for x in p]) for p in populations]))
            raise RuntimeError("rank 0 fails after the search")
        except RuntimeError:
            pass
        finally:
            ctx.release()
    else:
        queue.put(("worker", distributed.serve(problem, ctx)))


def test_two_processes_evaluate_shares_and_stop_cleanly():
    populations = [[[0.1 * i, 0.5, 0.2, 0.9] for i in range(5)], [[0.3, 0.3, 0.3, 0.3 + 0.1 * i] for i in range(3)]]
    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()
    port = free_port()
    procs = [mp.Process(target=_rank_main, args=(r, port, populations, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    expected = [[QuadraticProblem().evaluate(np.asarray(x)) for x in p] for p in populations]
    assert results["entries"] == expected  # in population order, whoever evaluated them
    assert results["worker"] == 2 + 1  # rank 1's share: indices 1, 3 and 1


def test_torchrun_gives_the_same_history_as_one_process(tmp_path):
    common = ["experiment=smoke_llm", "final_eval.enabled=false", "save_merged=false"]
    one = run(compose([*common, f"run_dir={tmp_path / 'one'}"]))
    rank0 = tmp_path / "rank0"
    done = torchrun_train(tmp_path, common)
    two = read_history(rank0 / "history.jsonl")
    assert without_seconds(two) == without_seconds(read_history(one["run_dir"] / "history.jsonl"))
    assert (rank0 / "best_recipe.yaml").read_text() == (one["run_dir"] / "best_recipe.yaml").read_text()
    assert done.stdout.count("gen 2/2") == 1  # one process reports progress
    # Rank 1 ran with its own run directory: Hydra may create it, evomm writes nothing there.
    rank1 = tmp_path / "rank1"
    assert not rank1.exists() or not any(rank1.iterdir())


# ---- a new fitness sample every generation ----------------------------------------------------
def test_resampling_scores_each_generation_on_its_sample_and_rescores_the_best():
    """Scores here grow with the sample, as an easier draw would: the best is re-scored first."""
    asked = []

    def evaluate_population(xs, sample):
        asked.append((len(xs), sample))
        return [{**QuadraticProblem().evaluate(x), "fitness": fitness_of(x) + 10 * sample} for x in xs]

    a, b = [0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.7]
    problem = Problem(space=space(), adapter=None, task=None, split="fitness", resample=True)
    optimizer = ScriptedOptimizer([[a, b], [b, [0.9, 0.9, 0.9, 0.9]], [a, a]])
    state = search(problem, optimizer, SearchState(optimizer=optimizer), 3, evaluate_population=evaluate_population)
    # generation g: the incumbent alone on sample g (from g = 1), then the new candidates;
    # b and a are scored again on their new samples, a repeated a within a generation is not
    assert asked == [(2, 0), (1, 1), (2, 1), (1, 2), (1, 2)]
    assert [h["cached"] for h in state.history] == [False, False, False, False, False, True]
    assert state.best["sample"] == 2
    assert state.best["fitness"] == max(fitness_of(h["x"]) for h in state.history) + 20
    assert FitnessCache(problem.space, state.history, resample=True).key(a, 0) != \
        FitnessCache(problem.space, state.history, resample=True).key(a, 2)


def test_a_task_redraws_its_fitness_sample_and_keeps_the_heldout_split():
    from evomm.tasks import build_task

    task = build_task("toy_skills", fitness_samples=5, heldout_samples=5)
    fixed = task.items("english_arith", "fitness")
    task.resample(3)
    redrawn = task.items("english_arith", "fitness")
    assert redrawn != fixed and len(redrawn) == 5
    assert task.items("english_arith", "heldout") == build_task("toy_skills", heldout_samples=5).items("english_arith", "heldout")
    task.resample(0)
    assert task.items("english_arith", "fitness") == fixed
