"""``run(cfg)``: one evolutionary merge, from a composed config to a finished run directory.

Order matters: everything cheap is checked before anything heavy loads, and everything a run
computes lands in the run directory as soon as it exists (history per candidate, checkpoint per
generation), so a crashed or killed run loses at most the generation in flight.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from evomm.adapters import adapter_for_recipe, build_adapter
from evomm.adapters.base import apply_recipe
from evomm.adapters.routed import RoutedAdapter
from evomm.cli import quiet_libraries
from evomm.config_checks import validate_config
from evomm.errors import ConfigError
from evomm.evaluation import baseline_recipe, final_evaluation, results_markdown, write_results
from evomm.evolution import checkpoint, distributed
from evomm.evolution.checkpoint import SearchState
from evomm.evolution.loop import Problem, search
from evomm.evolution.optimizers import build_optimizer
from evomm.merging.recipe import Entry, Recipe
from evomm.merging.route_space import RouteSpace, route_of
from evomm.merging.space import SearchSpace, build_units
from evomm.search.item_pool import item_pool
from evomm.search.scoring import FitnessSettings, Racing, describe_items, items_scored
from evomm.tracking.route_plot import plot_route
from evomm.tracking.history import HistoryWriter, json_safe
from evomm.tracking.model_card import write_model_card
from evomm.tracking.report import BEST_FILE
from evomm.tracking.plots import plot_fitness, plot_recipe_heatmap
from evomm.tracking.progress import Progress
from evomm.tracking.wandb_logger import NullLogger, WandbLogger
from tasks import build_task, validate_for_evaluation
from tasks.base import Resampling


ROUTING_METHODS = ("dfs", "ps_dfs")


def _options(section: dict, *drop: str) -> dict:
    return {k: v for k, v in section.items() if k not in drop}


def resolve_run_dir(c: dict) -> Path:
    if c.get("run_dir"):
        return Path(c["run_dir"])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise ConfigError("no run directory: set run_dir=<path> (train.py sets it from hydra.run.dir)") from None


def search_fingerprint(c: dict) -> str:
    """What must match for a checkpoint to be resumed: models, merge, optimizer, task, seed.

    The budget (generations, max_evals) is left out so a finished search can be extended.
    """
    keys = ("adapter", "merge", "optimizer", "task", "seed")
    relevant = {k: c.get(k) for k in keys}
    if c.get("resample_fitness"):  # only when on, so that older checkpoints still resume
        relevant["resample_fitness"] = True
    fitness = FitnessSettings.from_config(c.get("fitness"), bool(c.get("resample_fitness"))).fingerprint()
    if fitness is not None:  # likewise: racing and item selection change what a search computes
        relevant["fitness"] = fitness
    relevant["optimizer"] = {k: v for k, v in (c.get("optimizer") or {}).items() if k not in ("generations", "max_evals")}
    return checkpoint.fingerprint(relevant)


def build_space(merge: dict, adapter: Any, seed: int, adapter_options: dict) -> SearchSpace:
    units = build_units(
        merge["granularity"],
        adapter.groups(),
        adapter.layer_groups(),
        group_size=merge.get("group_size", 1),
        filters=merge.get("filters") or (),
    )
    template = Recipe(
        adapter=adapter.name,
        method=merge["method"],
        models=list(adapter.source_names),
        base=adapter.base_name,
        method_params=dict(merge.get("params") or {}),
        seed=seed,
        dtype=None,
        adapter_options=adapter_options,
        notes=dict(adapter.notes()),
    )
    bounds = {k: tuple(v) for k, v in (merge.get("bounds") or {}).items()}
    return SearchSpace(template=template, units=units, evolve=list(merge.get("evolve") or []), bounds=bounds)


def build_search(c: dict) -> tuple[Any, SearchSpace | RouteSpace]:
    """Load the models and build the search space the merge config asks for.

    Parameter-space methods search recipe parameters over the adapter's sources. ``dfs``
    routes through ``adapter.models`` (model A first); ``ps_dfs`` routes a finished PS run's
    merged model (``merge.ps_recipe``, model A) through ``adapter.models`` (model B, ...).
    """
    merge, a = c["merge"], c["adapter"]
    recipe_options = _options(a, "name", "models", "base", "device")
    if merge["method"] not in ROUTING_METHODS:
        adapter = build_adapter(a["name"], **_options(a, "name"))
        return adapter, build_space(merge, adapter, c["seed"], recipe_options)

    if merge["method"] == "dfs":
        inner = build_adapter(a["name"], **{**_options(a, "name", "models", "base"), "models": a["models"][:1]})
        template = Recipe(
            adapter=inner.name, method="linear", models=list(inner.source_names),
            entries=[Entry(params={"weight": [1.0]})],  # model A itself, exactly
            seed=c["seed"], adapter_options=recipe_options, notes=dict(inner.notes()),
        )
        ps_recipe, route_models = None, a["models"][1:]
    else:
        if merge.get("ps_recipe"):
            ps_recipe = Recipe.load(merge["ps_recipe"])
            ps_recipe.route = None
        else:  # no PS run given: model A is a hand-set merge of adapter.models (smoke runs, ablations)
            fallback = dict(merge["ps_fallback"])
            method = fallback.pop("method")
            sources = Recipe(adapter=a["name"], method=method, models=list(a["models"]), base=a.get("base"),
                             seed=c["seed"], adapter_options=recipe_options)
            ps_recipe = baseline_recipe(sources, method, fallback)
        inner = adapter_for_recipe(ps_recipe, device=a.get("device"))
        ps_recipe.models, ps_recipe.base = list(inner.source_names), inner.base_name  # record paths
        template = ps_recipe.copy()
        route_models = merge.get("route_models") or a["models"][:1]
    adapter = RoutedAdapter(inner, route_models, ps_recipe=ps_recipe)
    space = RouteSpace(
        template=template,
        route_models=adapter.route_models,
        layer_counts=adapter.layer_counts,
        repeats=merge["repeats"],
        w_range=tuple(merge["w_range"]),
        x0_margin=merge.get("x0_margin", 0.25),
    )
    return adapter, space


def _swept_overrides(task_overrides: list[str]) -> str:
    """This job's values of the keys the sweep varies (``seed=1,merge=ties``): its W&B job type.

    The swept keys are those given with sweep syntax (``a,b``, ``range(...)``, ...) on the
    command line; the other overrides are the same for every job and would only add noise.
    """
    swept = {
        arg.split("=", 1)[0].lstrip("+~")
        for arg in sys.argv[1:]
        if "=" in arg and not arg.startswith("hydra.") and _is_sweep(arg.split("=", 1)[1])
    }
    return ",".join(o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept)[:64]


def _is_sweep(value: str) -> bool:
    """Hydra sweep syntax: a top-level comma (``a,b``; ``[a,b]`` is a list) or range/choice/glob(...)."""
    if re.match(r"(range|choice|glob|interval)\(", value):
        return True
    depth = 0
    for ch in value:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def build_logger(c: dict, run_dir: Path):
    logger = c.get("logger") or {"name": "none"}
    if logger.get("name") in (None, "none"):
        return NullLogger()
    if logger["name"] != "wandb":
        raise ConfigError(f"unknown logger '{logger['name']}'; known loggers: none, wandb")
    group, job_type = logger.get("group"), logger.get("job_type")
    try:  # a Hydra multirun sweep becomes one W&B group, one job type per override set
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = group or f"sweep-{Path(hc.sweep.dir).name}"
            job_type = job_type or _swept_overrides(hc.overrides.task) or "default"
    except ValueError:
        pass
    return WandbLogger(
        run_dir,
        config=c,
        project=logger.get("project", "evomm"),
        group=group or c.get("experiment_name"),
        job_type=job_type,
        name=logger.get("run_name") or f"{c.get('experiment_name') or 'run'}-{run_dir.name}",
        tags=list(logger.get("tags") or []),
        entity=logger.get("entity"),
    )


def run(cfg: DictConfig | dict) -> dict:
    """Evolve a merge as the config says; returns a summary (run_dir, best, results)."""
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

    task = build_task(c["task"]["name"], **_options(c["task"], "name"))
    resample = bool(c.get("resample_fitness", False))
    if resample and not isinstance(task, Resampling):
        raise ConfigError(
            f"resample_fitness=true but task '{task.name}' has a fixed fitness set it cannot redraw; "
            "set resample_fitness=false"
        )
    task.validate()
    if task.fitness_split == task.heldout_split and not c.get("allow_heldout_fitness", False):
        raise ConfigError(
            f"task '{task.name}' would evolve on its held-out split '{task.heldout_split}'; "
            "choose a task with a separate fitness split, or set allow_heldout_fitness=true "
            "(the results then say so)"
        )

    extra_tasks = {
        name: build_task(name, **(options or {}))
        for name, options in ((c.get("final_eval") or {}).get("extra_tasks") or {}).items()
    }
    for extra_task in extra_tasks.values():
        validate_for_evaluation(extra_task)

    t0 = time.perf_counter()
    adapter, space = build_search(c)
    load_seconds = time.perf_counter() - t0
    if not ranks.is_main:  # evaluate this rank's share of every population; rank 0 writes everything
        distributed.serve(Problem(space=space, adapter=adapter, task=task, split=task.fitness_split,
                                  resample=resample), ranks)
        return {"run_dir": run_dir, "best": None, "results": [], "state": None}
    opt = c["optimizer"]
    opt_options = _options(opt, "name", "generations")
    if isinstance(space, RouteSpace):  # the search starts from model A alone, not from x = 0.5
        opt_options["x0"] = space.x0()
    optimizer = build_optimizer(opt["name"], dim=space.dim, seed=c["seed"], **opt_options)
    generations = int(opt["generations"])

    fp = search_fingerprint(c)
    ckpt_path = run_dir / checkpoint.CHECKPOINT_NAME
    if c.get("resume") and ckpt_path.exists():
        state = checkpoint.load(ckpt_path, fp)
        optimizer = state.optimizer
        resumed = f"resumed at generation {state.generation}"
    else:
        if ckpt_path.exists():
            raise ConfigError(
                f"{run_dir} already holds a checkpoint; pass resume=true to continue it, "
                "or choose a new hydra.run.dir"
            )
        state = SearchState(optimizer=optimizer)
        resumed = ""

    history = HistoryWriter(run_dir / "history.jsonl", existing=state.history)
    logger = build_logger(c, run_dir)
    progress = Progress(generations, start_generation=state.generation)
    progress.print(
        f"evomm: {adapter.name} adapter, {len(adapter.source_names)} source(s), method {space.template.method}, "
        f"{space.dim} parameters over {len(space.units)} unit(s), popsize {optimizer.popsize}, "
        f"{generations} generations (models loaded in {load_seconds:.1f}s){'; ' + resumed if resumed else ''}"
    )
    progress.print(f"run directory: {run_dir}")
    fitness = FitnessSettings.from_config(c.get("fitness"), resample)
    pool, selection = item_pool(run_dir, adapter, task, fitness, c["seed"], log=progress.print)
    progress.extra_items = selection["items_scored"] if selection else 0

    def on_generation(state: SearchState, entries: list[dict]) -> None:
        scores = torch.tensor([e["fitness"] for e in entries if e["fitness"] is not None], dtype=torch.float64)
        scored, full = items_scored(state.history)
        stats = {
            "items/scored": scored + progress.extra_items,
            "items/full_evaluation": full,
            "gen/stopped_early": sum(bool(e.get("stopped_early")) for e in entries),
            "gen/best": float(scores.max()),
            "gen/mean": float(scores.mean()),
            "gen/std": float(scores.std(unbiased=False)),
            "gen/failed": len(entries) - len(scores),
            "best_so_far": state.best["fitness"],
            **{f"optimizer/{k}": v for k, v in optimizer.state().items()},
        }
        logger.log_generation(state.generation, stats)
        checkpoint.save(ckpt_path, state, fp)
        progress.generation(state, entries, optimizer.state())

    problem = Problem(space=space, adapter=adapter, task=task, split=task.fitness_split, resample=resample, pool=pool)
    keep = getattr(optimizer, "mu", None) or max(1, optimizer.popsize // 2)
    try:
        state = search(
            problem, optimizer, state, generations, on_candidate=history.append, on_generation=on_generation,
            evaluate_population=distributed.population_evaluator(problem, ranks),
            racing=Racing(fitness, keep, c["seed"]) if fitness.racing else None,
        )
    except KeyboardInterrupt:
        # Keep what is finished: the checkpoint already holds every completed generation; the
        # best recipe and the plot so far are written too. The generation in flight is redone.
        if state.best is not None:
            _save_best(run_dir, space.decode(state.best["x"]), state.best)
            plot_fitness(state.history, run_dir / "fitness.png")
        progress.print(
            f"interrupted after {state.generation} generation(s): best_recipe.yaml and the checkpoint are in "
            f"{run_dir}; continue with resume=true hydra.run.dir={run_dir}"
        )
        logger.log_candidates(_candidate_rows(state.history))
        logger.finish()
        raise
    finally:
        ranks.release()  # the other ranks stop waiting for populations and exit

    # The best recipe; with no generations at all the search space's start point stands in.
    x_best = state.best["x"] if state.best else [0.5] * space.dim
    best = space.decode(x_best)
    _save_best(run_dir, best, state.best)
    plot_fitness(state.history, run_dir / "fitness.png", title=f"{c.get('experiment_name') or 'search'}: fitness")
    heatmap = plot_recipe_heatmap(best, run_dir / "recipe_heatmap.png")
    if heatmap is not None:
        logger.log_image("recipe_heatmap", heatmap)
    if best.route:
        plot_route(route_of(best), run_dir / "route.png", source_names=["A", *best.route["models"]])
        logger.log_image("route", run_dir / "route.png")

    rows: list[dict] = []
    final = c.get("final_eval") or {}
    merged_dir = run_dir / "merged"

    def after_evolved() -> None:
        if c.get("save_merged", True):
            adapter.save_merged(merged_dir)
        save_images = getattr(task, "save_images", None)  # image tasks: a grid of the evolved model's samples
        if save_images is not None:
            grid = save_images(adapter.handle(), task.heldout_split, run_dir)
            logger.log_image("samples", grid, caption="evolved, held-out prompts")

    if final.get("enabled", True):
        rows = final_evaluation(
            adapter,
            task,
            best,
            baselines=final.get("baselines") or {},
            include_sources=final.get("sources", True),
            after_evolved=after_evolved,
            log=progress.print,
            extra_tasks=extra_tasks,
        )
        extra = {"fitness on the held-out split": task.heldout_split}
        if task.fitness_split == task.heldout_split:
            extra["WARNING"] = "the search evolved on the held-out split (allow_heldout_fitness=true)"
        write_results(rows, run_dir, extra)
        logger.log_table("results", [{"name": r["name"], "kind": r["kind"], **r["metrics"]} for r in rows])
    else:
        apply_recipe(adapter, best)
        after_evolved()

    if c.get("save_merged", True):
        write_model_card(run_dir, best, rows, c)
    logger.log_candidates(_candidate_rows(state.history))
    logger.log_image("fitness", run_dir / "fitness.png")
    logger.log_artifact(run_dir / "best_recipe.yaml", name="best_recipe", kind="recipe")
    if rows:
        logger.log_artifact(run_dir / "results.json", name="results", kind="results")
    scored, full = items_scored(state.history)
    logger.summary({"best_fitness": state.best["fitness"] if state.best else None, "evaluations": len(state.history),
                    "items_scored": scored + progress.extra_items, "items_full_evaluation": full})
    logger.finish()

    progress.print("")
    progress.print(f"done: {len(state.history)} evaluations in {state.generation} generations, "
                   f"{describe_items(scored, full, progress.extra_items)} scored")
    written = [n for n in ("best_recipe.yaml", BEST_FILE, "history.jsonl", "fitness.png", "recipe_heatmap.png",
                           "route.png", "results.md") if (run_dir / n).exists()]
    if merged_dir.exists():
        written.append("merged/ (with its model card README.md)")
    progress.print(f"outputs in {run_dir}: {', '.join(written)}")
    if rows:
        progress.print("\n" + results_markdown(rows))
    return {"run_dir": run_dir, "best": state.best, "results": rows, "state": state}


def _save_best(run_dir: Path, recipe: Recipe, best: dict | None) -> None:
    """best_recipe.yaml, and best.json: where the kept candidate came from and its score.

    With resample_fitness the kept candidate's score is its latest re-score (on the sample
    named there), which the history, holding first scores only, cannot tell.
    """
    recipe.save(run_dir / "best_recipe.yaml")
    if best is not None:
        facts = {k: best[k] for k in ("generation", "index", "fitness", "sample", "metrics") if k in best}
        (run_dir / BEST_FILE).write_text(json.dumps(json_safe(facts), indent=2, ensure_ascii=False) + "\n")


def _candidate_rows(history: list[dict]) -> list[dict]:
    return [
        {
            "generation": h["generation"],
            "index": h["index"],
            "fitness": h["fitness"],
            "seconds": h["seconds"],
            "error": h["error"] or "",
            "cached": bool(h.get("cached", False)),
            **h["params"],
            **{f"metric/{k}": v for k, v in h["metrics"].items()},
        }
        for h in history
    ]
