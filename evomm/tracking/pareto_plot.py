"""pareto.png: a multi-objective run's candidates and front (first two objectives), and the
held-out picture: front members beside the sources and hand-set baselines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"front": ("tab:red", "o"), "evolved": ("black", "*"), "source": ("tab:blue", "s"),
         "baseline": ("tab:green", "^")}


def plot_search_front(history: list[dict], front: list[dict], names: list[str], out_path: Path) -> Path:
    """Every scored candidate (grey) and the front (red, joined) on the fitness split."""
    a, b = names[0], names[1]
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=100)
    pts = [(h["metrics"].get(f"{a}/fitness"), h["metrics"].get(f"{b}/fitness"))
           for h in history if h.get("fitness") is not None and not h.get("cached")]
    pts = [p for p in pts if None not in p]
    if pts:
        ax.scatter(*zip(*pts), s=10, color="grey", alpha=0.4, label="candidate")
    if front:
        fx = sorted((m["objectives"][a], m["objectives"][b]) for m in front)
        ax.plot(*zip(*fx), color="tab:red", marker="o", markersize=4, linewidth=1, label="front")
    _finish(ax, fig, a, b, "candidates and front (fitness split)", out_path)
    return Path(out_path)


def plot_heldout_front(rows: list[dict], names: list[str], out_path: Path, title: str = "held-out") -> Path:
    """Front members, the evolved best, sources and baselines by their held-out objective values.

    ``rows`` are results rows (``kind``, ``name``, ``metrics`` with ``<objective>/fitness``); for
    several runs (seeds) pass them all, the same kinds share a colour.
    """
    a, b = names[0], names[1]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    labelled, named = set(), 0
    for row in rows:
        x, y = row["metrics"].get(f"{a}/fitness"), row["metrics"].get(f"{b}/fitness")
        if x is None or y is None:
            continue
        colour, marker = STYLE.get(row["kind"], ("grey", "."))
        label = row.get("label", row["kind"])
        ax.scatter([x], [y], color=colour, marker=marker, s=60 if row["kind"] != "front" else 25,
                   label=None if label in labelled else label, alpha=0.8, zorder=3)
        labelled.add(label)
        if row["kind"] in ("source", "baseline"):  # short names, offsets alternate so neighbours stay legible
            name = row["name"].split("/")[-1]
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, (6, -11, -20)[named % 3]), textcoords="offset points")
            named += 1
    _finish(ax, fig, a, b, title, out_path, legend="center left")
    return Path(out_path)


def _finish(ax, fig, a: str, b: str, title: str, out_path: Path, legend: str = "lower left") -> None:
    ax.set_xlabel(a)
    ax.set_ylabel(b)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
