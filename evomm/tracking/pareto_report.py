"""The Pareto front of a multi-objective run as ``evomm report`` shows it (from pareto.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

PARETO_FILE = "pareto.jsonl"


def read_front(run_dir: Path) -> list[dict] | None:
    """pareto.jsonl's members, or None when the run has no front (a single objective)."""
    path = Path(run_dir) / PARETO_FILE
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def front_table(front: list[dict], rows: list[dict] | None = None) -> str:
    """Markdown: one line per member with its objectives on the fitness split and, where the
    final evaluation scored it (a ``front g<G>-i<I>`` results row), on the held-out split."""
    names = list(front[0]["objectives"]) if front else []
    held = {r["name"]: r["metrics"] for r in rows or [] if r.get("kind") == "front"}
    cols = ["member", "recipe", *names, "fitness"] + [f"{n} (held-out)" for n in names]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in front:
        label = f"g{m['generation']}-i{m['index']}"
        out = held.get(f"front {label}", {})
        cells = [label, m.get("recipe", "-"), *(_f(m["objectives"][n]) for n in names), _f(m.get("fitness"))]
        cells += [_f(out.get(f"{n}/fitness")) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"
