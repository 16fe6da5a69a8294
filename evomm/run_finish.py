"""Finishing a run: the best recipe and plots, the held-out comparison, merged/ and its card, W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evomm.adapters.apply import apply_recipe
from evomm.evaluation import final_evaluation
from evomm.recipe.recipe import Recipe
from evomm.recipe.route import route_of
from evomm.search.front import FRONT_DIR, is_multi_objective, score_front, write_front
from evomm.search.objectives import objective_names, spread_subset
from evomm.tracking.history import json_safe
from evomm.tracking.model_card import write_model_card
from evomm.tracking.pareto_plot import plot_heldout_front
from evomm.tracking.pareto_report import PARETO_FILE
from evomm.tracking.plots import plot_fitness, plot_recipe_heatmap
from evomm.tracking.report import BEST_FILE
from evomm.tracking.results import results_markdown, write_results
from evomm.tracking.route_plot import plot_route
from evomm.search.scoring import describe_items, items_scored

OUTPUTS = ("best_recipe.yaml", BEST_FILE, "history.jsonl", "fitness.png", "recipe_heatmap.png", "route.png",
           PARETO_FILE, FRONT_DIR, "pareto.png", "pareto_heldout.png", "results.md")


def finish(c: dict, run_dir: Path, space: Any, adapter: Any, task: Any, extra_tasks: dict, state: Any,
           logger: Any, progress: Any) -> list[dict]:
    """Write everything a finished search leaves behind; returns the held-out rows."""
    # The best recipe; with no generations at all the search space's start point stands in.
    best = space.decode(state.best["x"] if state.best else [0.5] * space.dim)
    save_best(run_dir, best, state.best)
    _plots(c, run_dir, best, state, logger)
    front = write_front(run_dir, state.history, task, space) if is_multi_objective(task) else []
    if front:
        logger.log_image("pareto", run_dir / "pareto.png")
    rows = _held_out(c, run_dir, adapter, task, extra_tasks, best, logger, progress, front, space)
    if c.get("save_merged", True):
        write_model_card(run_dir, best, rows, c)
    logger.log_candidates(candidate_rows(state.history))
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
    written = [n for n in OUTPUTS if (run_dir / n).exists()]
    if (run_dir / "merged").exists():
        written.append("merged/ (with its model card README.md)")
    progress.print(f"outputs in {run_dir}: {', '.join(written)}")
    if rows:
        progress.print("\n" + results_markdown(rows))
    return rows


def fitness_metric(c: dict) -> str:
    """What the fitness axis measures: the fitness task's name (or import path)."""
    return str(c["task"].get("name") or c["task"].get("_target_") or "fitness")


def _plots(c: dict, run_dir: Path, best: Recipe, state: Any, logger: Any) -> None:
    plot_fitness(state.history, run_dir / "fitness.png", title=f"{c.get('experiment_name') or 'search'}: fitness",
                 metric=fitness_metric(c))
    heatmap = plot_recipe_heatmap(best, run_dir / "recipe_heatmap.png")
    if heatmap is not None:
        logger.log_image("recipe_heatmap", heatmap)
    if best.route:
        plot_route(route_of(best), run_dir / "route.png", source_names=["A", *best.route["models"]])
        logger.log_image("route", run_dir / "route.png")


def _held_out(c: dict, run_dir: Path, adapter: Any, task: Any, extra_tasks: dict, best: Recipe,
              logger: Any, progress: Any, front: list[dict], space: Any) -> list[dict]:
    """Score the evolved recipe, the sources, the baselines and (several objectives) the front's
    best-spread members on the held-out split; save merged/."""
    final = c.get("final_eval") or {}

    def after_evolved() -> None:  # while the target still holds the evolved model
        if c.get("save_merged", True):
            adapter.save_merged(run_dir / "merged")
        save_images = getattr(task, "save_images", None)  # image tasks: a grid of the evolved model's samples
        if save_images is not None:
            grid = save_images(adapter.handle(), task.heldout_split, run_dir)
            logger.log_image("samples", grid, caption="evolved, held-out prompts")

    if not final.get("enabled", True):
        apply_recipe(adapter, best)
        after_evolved()
        return []
    rows = final_evaluation(
        adapter, task, best,
        baselines=final.get("baselines") or {},
        include_sources=final.get("sources", True),
        after_evolved=after_evolved,
        log=progress.print,
        extra_tasks=extra_tasks,
    )
    if front:  # the front's best-spread members on the held-out split(s), beside the others
        rows += score_front(adapter, task, spread_subset(front, final.get("front_size")), space, progress.print)
        plot_heldout_front(rows, objective_names(task), run_dir / "pareto_heldout.png")
        logger.log_image("pareto_heldout", run_dir / "pareto_heldout.png")
    extra = {"fitness on the held-out split": task.heldout_split}
    if task.fitness_split == task.heldout_split:
        extra["WARNING"] = "the search evolved on the held-out split (allow_heldout_fitness=true)"
    write_results(rows, run_dir, extra)
    logger.log_table("results", [{"name": r["name"], "kind": r["kind"], **r["metrics"]} for r in rows])
    return rows


def save_best(run_dir: Path, recipe: Recipe, best: dict | None) -> None:
    """best_recipe.yaml, and best.json: where the kept candidate came from and its score.

    With resample_fitness the kept candidate's score is its latest re-score (on the sample
    named there), which the history, holding first scores only, cannot tell.
    """
    recipe.save(run_dir / "best_recipe.yaml")
    if best is not None:
        facts = {k: best[k] for k in ("generation", "index", "fitness", "sample", "metrics") if k in best}
        (run_dir / BEST_FILE).write_text(json.dumps(json_safe(facts), indent=2, ensure_ascii=False) + "\n")


def candidate_rows(history: list[dict]) -> list[dict]:
    return [
        {
            "generation": h["generation"],
            "index": h["index"],
            "fitness": h["fitness"],
            "seconds": h["seconds"],
            "error": h["error"] or "",
            "cached": bool(h.get("cached", False)),
            "items": int(h.get("items") or 0),  # fitness items scored (racing stops some early)
            "stopped_early": bool(h.get("stopped_early", False)),
            **h["params"],
            **{f"metric/{k}": v for k, v in h["metrics"].items()},
        }
        for h in history
    ]
