"""``fitness.select``: score the sources once on the whole fitness sample and keep the items that
separate them; the choice and its reason go to ``<run dir>/item_selection.json``.

A resumed run reads the file back instead of scoring the sources again, so the search goes on
with the same items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evomm.adapters.apply import show_source
from evomm.errors import ConfigError
from evomm.search.scoring import FitnessSettings, ItemPool
from evomm.search.selection import SELECTION_FILE, select_items, spread_summary


def source_handles(adapter: Any):
    """(name, handle) of every source and the base, each made resident in turn."""
    for index, ref in enumerate(adapter.source_names):
        show_source(adapter, index)
        yield ref, adapter.handle()
    if adapter.base_name is not None:
        show_source(adapter, None)
        yield adapter.base_name + " (base)", adapter.handle()
    yield from getattr(adapter, "standalone", lambda: [])()


def item_pool(run_dir: Path, adapter: Any, task: Any, settings: FitnessSettings, seed: int,
              log: Callable[[str], None] = print) -> tuple[ItemPool | None, dict | None]:
    """The fitness items to score (None: all) and the selection record (None when not selecting)."""
    if settings.select is None:
        return None, None
    path = Path(run_dir) / SELECTION_FILE
    wanted = {"select": settings.select, "rule": settings.select_rule, "seed": seed}
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("settings") == wanted:
            log(f"item selection: {len(record['items'])} of {record['pool']} items, read from {path.name}")
            return _pool(record), record
    if not hasattr(task, "num_items"):
        raise ConfigError(f"fitness.select needs per-item scores; task '{task.name}' has no num_items (see tasks/base.py)")
    names, rows = [], []
    for name, handle in source_handles(adapter):
        result = task.evaluate(handle, task.fitness_split)
        if "item_scores" not in result:
            raise ConfigError(f"fitness.select needs per-item scores; task '{task.name}' returns no item_scores")
        names.append(name)
        rows.append([float(v) for v in result["item_scores"]])
    scores = np.asarray(rows)
    selection = select_items(scores, settings.select, settings.select_rule, seed)
    subset = scores[:, selection.items].mean(axis=1)
    record = {
        "settings": wanted,
        "rule": selection.rule,
        "pool": selection.pool,
        "items": selection.items,
        "reason": selection.reason,
        "items_scored": int(scores.size),  # what choosing cost: every model on every item
        "scale": selection.scale,
        "offset": selection.offset,
        "full_estimate": {"slope": selection.slope, "intercept": selection.intercept,
                          "meaning": "pool mean ~ intercept + slope * subset mean, fitted over the models"},
        "models": [{"name": n, "pool_mean": float(f), "subset_mean": float(s)}
                   for n, f, s in zip(names, scores.mean(axis=1), subset)],
        "chosen": spread_summary(scores, selection.items),
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    log(f"item selection: {selection.reason}; {record['items_scored']} items scored to choose, see {path.name}")
    return _pool(record), record


def _pool(record: dict) -> ItemPool:
    scale = record.get("scale")
    return ItemPool(items=[int(i) for i in record["items"]],
                    scale=None if scale is None else dict(zip(record["items"], scale)),
                    offset=float(record.get("offset") or 0.0))
