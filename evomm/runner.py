"""``run(cfg)``: one evolutionary merge, from a composed config to a finished run directory.

    setup   check the config, build the tasks, load the models, start or resume the optimizer
    search  ask -> decode -> materialise -> evaluate -> tell, one checkpoint per generation
    finish  best recipe, plots, held-out comparison, merged/ and its card, W&B

Order matters: everything cheap is checked before anything heavy loads, and everything a run
computes lands in the run directory as soon as it exists (history per candidate, checkpoint per
generation), so a crashed or killed run loses at most the generation in flight.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from evomm.config_checks import check_models_available, validate_config
from evomm.quiet import quiet_libraries
from evomm.run_finish import candidate_rows, finish, save_best
from evomm.run_setup import Start, build_tasks, resolve_run_dir, start_search
from evomm.search import checkpoint, distributed
from evomm.search.build import build_search
from evomm.search.item_pool import item_pool
from evomm.search.loop import Problem, SearchFailed, search
from evomm.search.objectives import generation_stats
from evomm.search.route_space import RouteSpace
from evomm.search.scoring import FitnessSettings, Racing, items_scored
from evomm.tracking.history import HistoryWriter
from evomm.tracking.loggers import build_logger
from evomm.tracking.plots import plot_fitness
from evomm.tracking.progress import Progress


def run(cfg: DictConfig | dict) -> dict:
    """Evolve a merge as the config says; returns a summary (run_dir, best, results, state)."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    validate_config(c)
    quiet_libraries()
    ranks = distributed.init_from_env()  # one process unless launched by torchrun / accelerate
    run_dir = resolve_run_dir(c)
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(c["seed"])
    if c.get("threads"):
        torch.set_num_threads(int(c["threads"]))

    task, extra_tasks = build_tasks(c)
    check_models_available(c)  # a misspelt hub id fails here in seconds, not after the hub client's retries
    t0 = time.perf_counter()
    adapter, space = build_search(c)
    load_seconds = time.perf_counter() - t0
    problem = Problem(space=space, adapter=adapter, task=task, split=task.fitness_split,
                      resample=bool(c.get("resample_fitness", False)))
    if not ranks.is_main:  # evaluate this rank's share of every population; rank 0 writes everything
        distributed.serve(problem, ranks)
        return {"run_dir": run_dir, "best": None, "results": [], "state": None}

    start = start_search(c, space, run_dir, task)
    generations = int(c["optimizer"]["generations"])
    logger = build_logger(c, run_dir)
    progress = Progress(generations, start_generation=start.state.generation)
    progress.print(f"evomm: {_header(adapter, space, start, generations, load_seconds)}")
    progress.print(f"run directory: {run_dir}")
    fitness = FitnessSettings.from_config(c.get("fitness"), problem.resample)
    try:
        problem.pool, selection = item_pool(run_dir, adapter, task, fitness, c["seed"], log=progress.print)
        progress.extra_items = selection["items_scored"] if selection else 0
        mu = getattr(start.optimizer, "mu", None) or max(1, start.optimizer.popsize // 2)
        racing = Racing(fitness, mu, c["seed"]) if fitness.racing else None
        state = _search(problem, start, generations, run_dir, ranks, logger, progress, racing)
    finally:
        ranks.release()  # the other ranks stop waiting for populations and exit
    rows = finish(c, run_dir, space, adapter, task, extra_tasks, state, logger, progress)
    return {"run_dir": run_dir, "best": state.best, "results": rows, "state": state}


def _header(adapter: Any, space: Any, start: Start, generations: int, load_seconds: float) -> str:
    if isinstance(space, RouteSpace):
        what = f"DFS route over {len(space.layer_counts)} models ({space.dim} parameters)"
    else:
        what = f"method {space.template.method}, {space.dim} parameters over {len(space.units)} unit(s)"
    return (
        f"{adapter.name} adapter, {len(adapter.source_names)} source(s), {what}, popsize {start.optimizer.popsize}, "
        f"{generations} generations (models loaded in {load_seconds:.1f}s){'; ' + start.resumed if start.resumed else ''}"
    )


def _search(problem: Problem, start: Start, generations: int, run_dir: Path, ranks: Any, logger: Any,
            progress: Progress, racing: Racing | None = None):
    """The search, with one checkpoint per generation; Ctrl-C keeps every finished generation."""
    optimizer, history = start.optimizer, HistoryWriter(run_dir / "history.jsonl", existing=start.state.history)

    def on_generation(state, entries: list[dict]) -> None:
        scores = torch.tensor([e["fitness"] for e in entries if e["fitness"] is not None], dtype=torch.float64)
        scored, full = items_scored(state.history)
        logger.log_generation(state.generation, {
            "items/scored": scored + progress.extra_items,  # fitness items, item selection included
            "items/full_evaluation": full,
            "gen/stopped_early": sum(bool(e.get("stopped_early")) for e in entries),
            "gen/best": float(scores.max()),
            "gen/mean": float(scores.mean()),
            "gen/std": float(scores.std(unbiased=False)),
            "gen/failed": len(entries) - len(scores),
            "best_so_far": state.best["fitness"],
            **{f"optimizer/{k}": v for k, v in optimizer.state().items()},
            **generation_stats(problem.task, entries),  # several objectives: each one's best
        })
        checkpoint.save(start.checkpoint_path, state, start.fingerprint)
        progress.generation(state, entries, optimizer.state())

    state = start.state
    try:
        return search(problem, optimizer, state, generations, on_candidate=history.append,
                      on_generation=on_generation, evaluate_population=distributed.population_evaluator(problem, ranks),
                      racing=racing)
    except SearchFailed as e:
        logger.log_candidates(candidate_rows(state.history))
        logger.finish()
        kept = (f"the checkpoint of the {state.generation} finished generation(s) is {start.checkpoint_path}"
                if state.generation else f"no generation finished; every error is in {run_dir / 'history.jsonl'}")
        raise SearchFailed(f"{e}; {kept}") from None
    except KeyboardInterrupt:
        # The checkpoint already holds every completed generation; the best recipe and the plot
        # so far are written too. The generation in flight is redone on resume.
        if state.best is not None:
            save_best(run_dir, problem.space.decode(state.best["x"]), state.best)
            plot_fitness(state.history, run_dir / "fitness.png", metric=getattr(problem.task, "name", None))
        progress.print(
            f"interrupted after {state.generation} generation(s): best_recipe.yaml and the checkpoint are in "
            f"{run_dir}; continue with resume=true hydra.run.dir={run_dir}"
        )
        logger.log_candidates(candidate_rows(state.history))
        logger.finish()
        raise
