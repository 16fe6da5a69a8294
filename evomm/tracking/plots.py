"""Plots written into the run directory (and logged to W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any



def pyplot():
    """matplotlib's pyplot, imported on first plot: a config mistake must fail before this second
    of imports, and a run that never plots never pays it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def plot_fitness(history: list[dict], out_path: Path, title: str = "fitness", metric: str | None = None) -> Path:
    """Each evaluated candidate (dots, failures as red x at the bottom) and the best so far."""
    out_path = Path(out_path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    ok = [(i, h["fitness"]) for i, h in enumerate(history) if h.get("fitness") is not None]
    failed = [i for i, h in enumerate(history) if h.get("fitness") is None]
    if ok:
        xs, ys = zip(*ok)
        ax.scatter(xs, ys, s=12, alpha=0.6, label="candidate")
        best, running = [], float("-inf")
        for _, y in ok:
            running = max(running, y)
            best.append(running)
        ax.plot(xs, best, color="black", linewidth=1.5, label="best so far")
        if failed:
            ax.scatter(failed, [min(ys)] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(f"fitness: {metric}" if metric else "fitness")  # name what was scored
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------------------------
# The evolved recipe as a picture: one row per entry (unit), one column per parameter/source
# ---------------------------------------------------------------------------------------------
def entry_labels(recipe) -> list[str]:
    """A readable name per recipe entry: its groups (layer runs shortened) and its filter.

    ``layers.0-3/self_attn`` for a filtered chunk; an unfiltered entry whose groups already
    appeared with a filter holds the rest of those layers (first match wins): ``layers.0-3 (rest)``.
    """
    labels, filtered_before = [], set()
    for entry in recipe.entries:
        groups = None if entry.groups is None else tuple(entry.groups)
        name = "all" if groups is None else _groups_label(list(groups))
        if entry.filter not in (None, "*"):
            filtered_before.add(groups)
            name = f"{name}/{entry.filter}"
        elif groups in filtered_before:
            name = f"{name} (rest)"
        labels.append(name)
    return labels


def _groups_label(groups: list[str]) -> str:
    """``layers.0, layers.1, layers.2`` -> ``layers.0-2``; other lists are joined with commas."""
    idx = [g.split(".", 1)[1] for g in groups if g.startswith("layers.")]
    if len(idx) == len(groups) > 1 and all(i.isdigit() for i in idx):
        nums = [int(i) for i in idx]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"layers.{nums[0]}-{nums[-1]}"
    return ",".join(groups)


def recipe_matrix(recipe) -> tuple[list[str], list[str], list[list[Any]]]:
    """The recipe's entry parameters as a table: (row labels, column labels, cells).

    Columns are ``param/src<i>`` for per-source parameters (one value per source model) and
    ``param`` for method-wide ones an entry sets, in order of first appearance. A cell holds
    the value as written (a number, or a gradient / condition list), ``None`` where the entry
    does not set that parameter.
    """
    from evomm.recipe.recipe import per_source_params

    try:
        per_source = per_source_params(recipe.method)
    except Exception:  # noqa: BLE001 - an unregistered method: one value per source by shape
        per_source = {k for e in recipe.entries for k, v in e.params.items()
                      if isinstance(v, list) and len(v) == len(recipe.models)}
    columns: list[tuple[str, int | None]] = []
    for entry in recipe.entries:
        for key in entry.params:
            cols = [(key, s) for s in range(len(recipe.models))] if key in per_source else [(key, None)]
            columns += [c for c in cols if c not in columns]
    cells = []
    for entry in recipe.entries:
        row = []
        for key, source in columns:
            value = entry.params.get(key)
            if value is not None and source is not None:
                value = value[source] if isinstance(value, list) and source < len(value) else None
            row.append(value)
        cells.append(row)
    names = [key if s is None else f"{key}/src{s}" for key, s in columns]
    return entry_labels(recipe), names, cells


def _number(value: Any) -> float:
    """A cell's colour value: numbers as they are, anything else (lists, None) as NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return float("nan")


def plot_recipe_heatmap(recipe, out_path: Path, title: str | None = None) -> Path | None:
    """Write a PNG of the recipe's values: rows = entries (units, in order), columns = parameter/source.

    Each cell is annotated with its value; a gradient or condition list shows as ``list`` on a
    grey cell, a parameter the entry leaves unset as an empty grey cell. Returns None and writes
    nothing when there is no parameter to draw: no entries (a pure route), or a route whose
    model A is a single model taken as it is (DFS).
    """
    if not recipe.entries or (recipe.route is not None and len(recipe.models) == 1):
        return None
    import numpy as np

    rows, cols, cells = recipe_matrix(recipe)
    if not cols:
        return None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    values = np.array([[_number(v) for v in row] for row in cells], dtype=float)  # (entries, columns)
    masked = np.ma.masked_invalid(values)

    width = max(5.0, 2.2 + 0.85 * len(cols) + 0.06 * max(len(r) for r in rows))
    height = max(2.8, 1.6 + 0.3 * len(rows))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # unset / list cells: light grey
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:  # one value everywhere: widen so the colour bar still has a range
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="value")

    if len(rows) * len(cols) <= 2000:  # past that the numbers are unreadable anyway
        fontsize = 8 if len(rows) <= 40 else 6
        for i, row in enumerate(cells):
            for j, value in enumerate(row):
                if np.isfinite(values[i, j]):
                    shade = (values[i, j] - vmin) / (vmax - vmin)
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=fontsize,
                            color="black" if shade > 0.6 else "white")
                elif value is not None:
                    ax.text(j, i, "list", ha="center", va="center", fontsize=fontsize, color="black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8 if len(rows) <= 40 else 6)
    ax.set_title(title or f"{recipe.method}: evolved values per unit")
    sources = ", ".join(f"src{i} = {_short(m)}" for i, m in enumerate(recipe.models))
    fig.text(0.01, 0.005, sources, fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def _short(ref: str) -> str:
    parts = [p for p in str(ref).rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) if parts else str(ref)
