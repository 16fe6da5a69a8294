"""Setting a run up: its directory, its tasks, and the optimizer state it starts (or resumes) from.

Everything here is cheap except what ``evomm.search.build`` loads; a mistake found here costs
seconds, not a model load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomm import plugins
from evomm.errors import ConfigError
from evomm.search import checkpoint
from evomm.search.checkpoint import SearchState
from evomm.search.objectives import objective_names
from evomm.search.route_space import RouteSpace
from evomm.search.scoring import FitnessSettings
from evomm.search.space_kinds import space_kind
from evomm.tasks import build_task_from, validate_for_evaluation
from evomm.tasks.base import Resampling


def resolve_run_dir(c: dict) -> Path:
    if c.get("run_dir"):
        return Path(c["run_dir"])
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        raise ConfigError("no run directory: set run_dir=<path> (train.py sets it from hydra.run.dir)") from None


def search_fingerprint(c: dict) -> str:
    """What must match for a checkpoint to be resumed: models, merge, space, optimizer, task, seed.

    The budget (generations, max_evals) is left out so a finished search can be extended. A
    built-in space kind is hashed in the merge section's shape from before the space group
    (``merge_view``), so that a checkpoint written then resumes.
    """
    keys = ("adapter", "merge", "optimizer", "task", "seed")
    relevant = {k: c.get(k) for k in keys}
    kind = space_kind(c)
    if hasattr(kind, "merge_view"):
        relevant["merge"] = kind.merge_view(c)
    else:  # a user's own space kind: its section as written
        relevant["space"] = c.get("space")
    if c.get("resample_fitness"):  # only when on, so that older checkpoints still resume
        relevant["resample_fitness"] = True
    relevant["optimizer"] = {k: v for k, v in (c.get("optimizer") or {}).items() if k not in ("generations", "max_evals")}
    fitness = FitnessSettings.from_config(c.get("fitness"), bool(c.get("resample_fitness"))).fingerprint()
    if fitness is not None:  # likewise: racing and item selection change what a search computes
        relevant["fitness"] = fitness
    return checkpoint.fingerprint(relevant)


def build_tasks(c: dict) -> tuple[Any, dict[str, Any]]:
    """The fitness task and the evaluation-only extra tasks, validated (data reachable, splits apart)."""
    task = build_task_from(c["task"])
    if c.get("resample_fitness") and not isinstance(task, Resampling):
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
        name: build_task_from({"name": name, **(options or {})})
        for name, options in ((c.get("final_eval") or {}).get("extra_tasks") or {}).items()
    }
    for extra_task in extra_tasks.values():
        validate_for_evaluation(extra_task)
    return task, extra_tasks


@dataclass
class Start:
    """Where the search starts: a fresh optimizer, or the checkpoint of a stopped run."""

    state: SearchState
    optimizer: Any
    fingerprint: str
    checkpoint_path: Path
    resumed: str  # "" for a fresh run, else "resumed at generation N"


def start_search(c: dict, space: Any, run_dir: Path, task: Any = None) -> Start:
    """Build the optimizer over the space, or take it (and the history) from the checkpoint."""
    opt = c["optimizer"]
    opt_options = plugins.options(opt, "generations")
    if isinstance(space, RouteSpace):  # the search starts from model A alone, not from x = 0.5
        opt_options["x0"] = space.x0()
    if "n_obj" in opt_options and opt_options["n_obj"] is None:  # multi-objective: one per task objective
        opt_options["n_obj"] = len(objective_names(task))
    optimizer = plugins.build("optimizer", plugins.reference(opt, "optimizer"), opt_options,
                              dim=space.dim, seed=c["seed"])
    fp = search_fingerprint(c)
    ckpt_path = run_dir / checkpoint.CHECKPOINT_NAME
    if c.get("resume") and ckpt_path.exists():
        state = checkpoint.load(ckpt_path, fp)
        return Start(state, state.optimizer, fp, ckpt_path, f"resumed at generation {state.generation}")
    if ckpt_path.exists():
        raise ConfigError(
            f"{run_dir} already holds a checkpoint; pass resume=true to continue it, or choose a new hydra.run.dir"
        )
    return Start(SearchState(optimizer=optimizer), optimizer, fp, ckpt_path, "")
