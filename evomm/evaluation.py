"""Final evaluation on the held-out split: the evolved recipe, each source, hand-set baselines.

Every modality uses this step. Its rows (one per model: ``name``, ``kind`` in {evolved, source,
baseline}, ``metrics`` with at least ``fitness``) are written by ``evomm.tracking.results``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from evomm.builtin import portable
from evomm.adapters.apply import apply_recipe, show_source
from evomm.merging.methods import get_method
from evomm.recipe.recipe import Recipe, baseline_recipe


def short_name(ref: str) -> str:
    """A readable model name: the last two path components of a path or a hub id."""
    parts = [p for p in str(ref).rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) if parts else str(ref)


def final_evaluation(
    adapter: Any,
    task: Any,
    best: Recipe,
    baselines: dict[str, dict],
    include_sources: bool = True,
    after_evolved: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = print,
    extra_tasks: dict[str, Any] | None = None,
) -> list[dict]:
    """Score the evolved recipe, the sources and the baselines on the task's held-out split.

    ``after_evolved`` runs while the target still holds the evolved model (to save ``merged/``
    and render samples) before the target is overwritten by the comparison models.
    ``extra_tasks`` (name -> task) are evaluation-only benchmarks scored on their held-out split
    for every model; their metrics join the row as ``<name>/<metric>``.
    """
    split = task.heldout_split
    rows: list[dict] = []

    def score(name: str, kind: str, detail: str, handle: Any = None) -> None:
        start = time.perf_counter()
        handle = handle if handle is not None else adapter.handle()
        try:
            metrics = {k: float(v) for k, v in task.evaluate(handle, split).items() if k != "item_scores"}
            for extra_name, extra in (extra_tasks or {}).items():
                scores = extra.evaluate(handle, extra.heldout_split)
                metrics.update({f"{extra_name}/{k}": float(v) for k, v in scores.items() if k != "item_scores"})
            error = None
        except Exception as e:  # noqa: BLE001 - one failing comparison must not lose the others
            metrics, error = {"fitness": math.nan}, f"{type(e).__name__}: {e}"
        row = {"name": name, "kind": kind, "detail": portable(detail), "metrics": metrics}
        if error:
            row["error"] = error
        rows.append(row)
        log(f"  {kind:8s} {name:32s} fitness {metrics['fitness']:.4f}  ({time.perf_counter() - start:.1f}s)")

    log(f"final evaluation on the held-out split '{split}':")
    apply_recipe(adapter, best)
    detail = "route of " + str(len(best.route["steps"])) + " layers" if best.route else f"{best.method}, {len(best.entries)} parameter set(s)"
    score("evolved", "evolved", detail)
    after_evolved()

    if include_sources:
        for i, ref in enumerate(adapter.source_names):
            show_source(adapter, i)
            score(short_name(ref), "source", ref)
        if adapter.base_name is not None and adapter.base_name in adapter.source_names:
            log(f"  the base is source {adapter.source_names.index(adapter.base_name)}: scored once, above")
        elif adapter.base_name is not None:
            show_source(adapter, None)
            score(short_name(adapter.base_name) + " (base)", "source", adapter.base_name)
        for ref, handle in getattr(adapter, "standalone", lambda: [])():
            score(short_name(ref), "source", ref, handle=handle)

    for method, params in baselines.items():
        spec = get_method(method)
        if spec.needs_base and adapter.base_name is None:
            why = ("a routed run loads model A without adapter.base" if hasattr(adapter, "route_models")
                   else "set adapter.base to score it")
            log(f"  skipping baseline {method}: it needs a base model ({why})")
            continue
        if spec.exact_sources is not None and spec.exact_sources != len(adapter.source_names):
            log(f"  skipping baseline {method}: it takes {spec.exact_sources} source(s)")
            continue
        described = ", ".join(f"{k}={v}" for k, v in params.items())
        apply_recipe(adapter, baseline_recipe(best, method, dict(params)))
        score(method, "baseline", described)
    return rows
