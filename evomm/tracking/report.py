"""``evomm report``: read finished run directories without W&B.

Everything comes from the run directory contract: ``history.jsonl`` (one line per evaluated
candidate), ``best_recipe.yaml``, ``best.json`` (the kept candidate's generation, index and
score; older runs lack it and their best is read from the history) and, when the final
evaluation ran, ``results.json``. One run:
a summary (search, failures, best candidate, its recipe, the results table) and the plots
re-drawn (fitness.png, recipe_heatmap.png, route.png for a routed recipe). Several runs: one
comparison table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evomm.errors import ConfigError
from evomm.recipe.recipe import Recipe
from evomm.tracking.pareto_report import front_table, read_front
from evomm.tracking.spending import spending_lines

HISTORY, RECIPE, RESULTS, BEST_FILE = "history.jsonl", "best_recipe.yaml", "results.json", "best.json"


@dataclass
class RunRecord:
    """What a run directory holds, read once."""

    run_dir: Path
    history: list[dict]
    recipe: Recipe
    rows: list[dict] | None  # None: the run wrote no results.json (final_eval.enabled=false)
    config: dict = field(default_factory=dict)  # Hydra's .hydra/config.yaml when train.py wrote one
    kept: dict | None = None  # best.json: the candidate the run kept, with its latest score

    @property
    def best(self) -> dict | None:
        """The kept candidate (best.json), else the history's highest first score."""
        return self.kept if self.kept is not None else best_candidate(self.history)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def experiment(self) -> str | None:
        return self.config.get("experiment_name")


# ---- reading -------------------------------------------------------------------------------
def read_history_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: point evomm report at a run directory (it holds {HISTORY} and {RECIPE})")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} line {number} is not JSON ({e.msg}); the file is damaged: "
                "resume=true rewrites it from the checkpoint"
            ) from None
        if not isinstance(row, dict) or "fitness" not in row:
            raise ConfigError(f"{path} line {number} is not a candidate record (no 'fitness'); is this an evomm history file?")
        rows.append(row)
    return rows


def read_recipe_file(path: Path) -> Recipe:
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: the run has not finished its first generation, or was stopped before writing it; "
            "continue it with resume=true"
        )
    try:
        return Recipe.load(path)
    except ConfigError as e:
        raise ConfigError(f"{path} is not a readable recipe ({e}); rewrite it with resume=true or fix the file") from None


def _read_json(path: Path, remedy: str) -> Any:
    """The parsed file; unreadable JSON is a one-line error that ends with ``remedy``."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); {remedy}") from None


def read_results_file(path: Path) -> list[dict] | None:
    if not path.exists():
        return None
    rows = _read_json(path, "delete it or rerun the final evaluation")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "metrics" in r and "name" in r for r in rows):
        raise ConfigError(f"{path} is not an evomm results file (a list of {{name, kind, metrics}}); delete it or rerun")
    return rows


def read_best_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    best = _read_json(path, "delete it (the history then names the best)")
    if not isinstance(best, dict) or not isinstance(best.get("fitness"), (int, float)):
        raise ConfigError(f"{path} is not an evomm best-candidate file (no numeric 'fitness'); delete it")
    return best


def read_run_config(run_dir: Path) -> dict:
    """The resolved config Hydra saved next to the run (``.hydra/config.yaml``), if any."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory: give the run directory (hydra.run.dir / run_dir) of a run")
    return RunRecord(
        run_dir=run_dir,
        history=read_history_file(run_dir / HISTORY),
        recipe=read_recipe_file(run_dir / RECIPE),
        rows=read_results_file(run_dir / RESULTS),
        config=read_run_config(run_dir),
        kept=read_best_file(run_dir / BEST_FILE),
    )


# ---- facts ---------------------------------------------------------------------------------
def best_candidate(history: list[dict]) -> dict | None:
    """The first candidate with the highest fitness (the one the run kept)."""
    best = None
    for h in history:
        if h.get("fitness") is not None and (best is None or h["fitness"] > best["fitness"]):
            best = h
    return best


def failed_candidates(history: list[dict]) -> list[dict]:
    return [h for h in history if h.get("fitness") is None]


def generations(history: list[dict]) -> int:
    return len({h.get("generation") for h in history})


def _fitness(row: dict | None) -> float | None:
    if row is None:
        return None
    value = row.get("metrics", {}).get("fitness")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _best_of(rows: list[dict], kind: str) -> dict | None:
    scored = [r for r in rows if r.get("kind") == kind and _fitness(r) is not None]
    return max(scored, key=_fitness) if scored else None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _method_label(recipe: Recipe) -> str:
    if recipe.route is None:
        return recipe.method
    return "dfs" if len(recipe.models) == 1 else f"ps_dfs ({recipe.method} + route)"


# ---- one run -------------------------------------------------------------------------------
def recipe_table(recipe: Recipe) -> str:
    """The best recipe's parameters as Markdown: one row per entry, one column per parameter/source."""
    from evomm.tracking.plots import recipe_matrix

    rows, cols, cells = recipe_matrix(recipe)
    lines = []
    if cols:
        lines += ["| unit | " + " | ".join(cols) + " |", "|" + "---|" * (1 + len(cols))]
        for label, row in zip(rows, cells):
            lines.append(f"| {label} | " + " | ".join(_cell(v) for v in row) + " |")
    if recipe.method_params:
        lines.append("method-wide: " + ", ".join(f"{k}={v}" for k, v in recipe.method_params.items()))
    if recipe.route is not None:
        steps = recipe.route.get("steps") or []
        lines.append(f"route: {len(steps)} steps through A + {recipe.route.get('models')}")
        lines.append("  " + " ".join(f"{m}:{layer}" for m, layer in steps))
        if recipe.route.get("w"):  # the M x M hidden-state scale when the path changes model
            lines.append("W: " + "; ".join(" ".join(f"{v:.3f}" for v in row) for row in recipe.route["w"]))
    return "\n".join(lines) if lines else "(no parameters)"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def summary_text(run: RunRecord) -> str:
    from evomm.tracking.results import results_markdown

    h, recipe = run.history, run.recipe
    best = run.best
    failed = failed_candidates(h)
    lines = [f"# {run.run_dir}", ""]
    if run.experiment:
        lines.append(f"experiment: {run.experiment}")
    lines += [
        f"adapter {recipe.adapter}, method {_method_label(recipe)}, {len(recipe.models)} source(s)"
        + (f", base {recipe.base}" if recipe.base else ""),
        f"evaluations: {len(h)} in {generations(h)} generation(s)",
        f"failed candidates: {len(failed)}",
    ]
    for f in failed:
        first = (f.get("error") or "unknown error").splitlines()[0]
        lines.append(f"  generation {f.get('generation')} candidate {f.get('index')}: {first}")
    if best is not None:
        where = f"generation {best.get('generation')}, candidate {best.get('index')}"
        if best.get("sample") is not None:  # resample_fitness: the score on that generation's sample
            where += f"; scored on fitness sample {best['sample']}"
        lines.append(f"best fitness: {best['fitness']:.4f} ({where})")
    else:
        lines.append("best fitness: - (no candidate scored)")
    lines += spending_lines(run.run_dir, h)
    lines += ["", "## best recipe", recipe_table(recipe), ""]
    front = read_front(run.run_dir)
    if front:  # several objectives: every member's recipe file rebuilds with evomm merge
        lines += [f"## Pareto front ({len(front)} member(s); evomm merge <run>/<recipe> OUT rebuilds one)",
                  front_table(front, run.rows), ""]
    if run.rows:
        lines += ["## results (held-out split)", results_markdown(run.rows)]
    else:
        lines.append(f"no {RESULTS}: the final evaluation did not run (final_eval.enabled=false)")
    return "\n".join(lines).rstrip() + "\n"


def write_plots(run: RunRecord) -> list[Path]:
    """(Re)draw fitness.png, recipe_heatmap.png and, for a routed recipe, route.png."""
    from evomm.tracking.plots import plot_fitness, plot_recipe_heatmap

    title = f"{run.experiment or 'search'}: fitness"
    written = [plot_fitness(run.history, run.run_dir / "fitness.png", title=title)]
    heatmap = plot_recipe_heatmap(run.recipe, run.run_dir / "recipe_heatmap.png")
    if heatmap is not None:
        written.append(heatmap)
    if run.recipe.route is not None:
        from evomm.recipe.route import route_of
        from evomm.tracking.route_plot import plot_route

        names = ["A", *run.recipe.route.get("models", [])]
        written.append(plot_route(route_of(run.recipe), run.run_dir / "route.png", source_names=names))
    return written


# ---- several runs ----------------------------------------------------------------------------
def comparison_row(run: RunRecord) -> dict[str, Any]:
    best = run.best
    rows = run.rows or []
    evolved = next((r for r in rows if r.get("kind") == "evolved"), None)
    source, baseline = _best_of(rows, "source"), _best_of(rows, "baseline")
    others = [x for x in (_fitness(source), _fitness(baseline)) if x is not None]
    evolved_fitness = _fitness(evolved)
    delta = evolved_fitness - max(others) if evolved_fitness is not None and others else None
    method = _method_label(run.recipe)
    return {
        "run": run.name,
        "experiment / method": f"{run.experiment} / {method}" if run.experiment else method,
        "evaluations": len(run.history),
        "best fitness": None if best is None else float(best["fitness"]),
        "evolved (held-out)": evolved_fitness,
        "best source": None if source is None else f"{source['name']} {_fitness(source):.4f}",
        "best baseline": None if baseline is None else f"{baseline['name']} {_fitness(baseline):.4f}",
        "delta": delta,
    }


def comparison_table(runs: list[RunRecord]) -> str:
    """Markdown: one row per run; delta = evolved held-out fitness - best source or baseline."""
    rows = [comparison_row(r) for r in runs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: show the parent too
        for row, run in zip(rows, runs):
            row["run"] = f"{run.run_dir.parent.name}/{run.run_dir.name}"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:+.4f}" if c == "delta" and row[c] is not None else _fmt(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(run_dirs: list[str | Path], plots: bool = True) -> str:
    """The text ``evomm report`` prints; one run also gets its plots re-drawn."""
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]  # every file is read before anything is written
    if len(runs) == 1:
        text = summary_text(runs[0])
        if plots:
            written = write_plots(runs[0])
            text += "\nplots: " + ", ".join(str(p) for p in written) + "\n"
        return text
    return comparison_table(runs)
