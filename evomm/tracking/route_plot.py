"""Picture of a data-flow-space route: which layer of which model each step runs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from evomm.tracking.plots import pyplot

from evomm.recipe.route import Route  # noqa: E402


def plot_route(route: Route, out_path: str | Path, source_names: Sequence[str] | None = None) -> Path:
    """Write a PNG: x = step, y = layer index, one colour per source model.

    A grey line joins consecutive steps; a step whose input is scaled (scale != 1, i.e. the path
    crossed between models) is drawn larger, with a black edge and its scale written above it.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = list(source_names or route.source_names or [])
    n_models = route.num_models
    names += [f"model {m}" for m in range(len(names), n_models)]

    xs = list(range(len(route.steps)))
    ys = [layer for _, layer in route.steps]
    width = min(24.0, max(6.4, 0.12 * len(xs) + 2.0))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, 4.0), dpi=100)
    ax.plot(xs, ys, color="0.75", linewidth=0.8, zorder=1)
    colours = plt.get_cmap("tab10")
    for m in range(n_models):
        idx = [k for k, (mm, _) in enumerate(route.steps) if mm == m]
        if not idx:
            continue
        plain = [k for k in idx if route.scales[k] == 1.0]
        scaled = [k for k in idx if route.scales[k] != 1.0]
        ax.scatter(plain, [ys[k] for k in plain], s=22, color=colours(m % 10), zorder=2,
                   label=f"{names[m]} ({len(idx)} steps)")
        if scaled:
            ax.scatter(scaled, [ys[k] for k in scaled], s=60, color=colours(m % 10),
                       edgecolors="black", linewidths=1.0, zorder=3)
            for k in scaled:
                ax.annotate(f"{route.scales[k]:.2f}", (k, ys[k]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("layer index")
    ax.set_title(f"route: {len(route.steps)} steps through {n_models} model(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
