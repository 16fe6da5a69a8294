"""Plots written into the run directory (and logged to W&B)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402


def plot_fitness(history: list[dict], out_path: Path, title: str = "fitness") -> Path:
    """Each evaluated candidate (dots, failures as red x at the bottom) and the best so far."""
    out_path = Path(out_path)
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
    ax.set_ylabel("fitness")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
