"""A multi-objective run's Pareto front on disk, and its held-out evaluation.

``pareto.jsonl`` holds one JSON object per front member: ``generation``, ``index`` (its place in
history.jsonl), ``recipe`` (the member's recipe file, relative to the run directory, which
``evomm merge`` rebuilds), ``objectives`` (name -> fitness-split value), ``fitness`` (the
weighted scalar) and ``params``. The recipes are written to ``front/``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from evomm.adapters.apply import apply_recipe
from evomm.search.objectives import objective_names, pareto_front
from evomm.tracking.history import json_safe
from evomm.tracking.pareto_plot import plot_search_front
from evomm.tracking.pareto_report import PARETO_FILE

FRONT_DIR = "front"


def is_multi_objective(task: Any) -> bool:
    return len(objective_names(task)) > 1


def member_name(member: dict) -> str:
    return f"g{member['generation']}-i{member['index']}"


def write_front(run_dir: Path, history: list[dict], task: Any, space: Any) -> list[dict]:
    """The front of ``history``: pareto.jsonl, one recipe per member in front/, pareto.png."""
    run_dir = Path(run_dir)
    front = pareto_front(history, task)
    (run_dir / FRONT_DIR).mkdir(exist_ok=True)
    for old in (run_dir / FRONT_DIR).glob("*.yaml"):  # a resumed run's front replaces the last one
        old.unlink()
    lines = []
    for member in front:
        recipe_path = Path(FRONT_DIR) / f"{member_name(member)}.yaml"
        space.decode(member["x"]).save(run_dir / recipe_path)
        member["recipe"] = str(recipe_path)
        keys = ("generation", "index", "recipe", "objectives", "fitness", "params")
        lines.append(json.dumps(json_safe({k: member[k] for k in keys}), ensure_ascii=False))
    (run_dir / PARETO_FILE).write_text("".join(line + "\n" for line in lines))
    if len(objective_names(task)) > 1:
        plot_search_front(history, front, objective_names(task), run_dir / "pareto.png")
    return front


def score_front(
    adapter: Any,
    task: Any,
    members: list[dict],
    space: Any,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Results rows (kind ``front``) for front members, scored on the task's held-out split."""
    rows = []
    for member in members:
        start = time.perf_counter()
        row = {"name": f"front {member_name(member)}", "kind": "front", "detail": member.get("recipe", "")}
        try:
            apply_recipe(adapter, space.decode(member["x"]))
            result = task.evaluate(adapter.handle(), task.heldout_split)
            row["metrics"] = {k: float(v) for k, v in result.items() if k != "item_scores"}
        except Exception as e:  # noqa: BLE001 - one failing member must not lose the others
            row["metrics"], row["error"] = {"fitness": math.nan}, f"{type(e).__name__}: {e}"
        rows.append(row)
        log(f"  {'front':8s} {member_name(member):32s} fitness {row['metrics']['fitness']:.4f}  "
            f"({time.perf_counter() - start:.1f}s)")
    return rows
