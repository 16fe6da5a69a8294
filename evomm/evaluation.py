"""Final evaluation on the held-out split: the evolved recipe, each source, hand-set baselines.

Every modality uses this step. It writes ``results.json`` (one entry per model: ``name``,
``kind`` in {evolved, source, baseline}, ``metrics`` with at least ``fitness``) and
``results.md`` (the same as a table).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from evomm.adapters.base import apply_recipe, show_source
from evomm.merging.methods import get_method
from evomm.merging.recipe import Entry, Recipe, per_source_params
from evomm.tracking.history import json_safe


def baseline_recipe(template: Recipe, method: str, params: dict[str, Any]) -> Recipe:
    """A hand-set merge: the same value for every source and every tensor."""
    n = len(template.models)
    recipe = template.copy()
    recipe.method = method
    recipe.method_params = {}
    recipe.route = None
    per_source = per_source_params(method)
    recipe.entries = [Entry(params={k: ([float(v)] * n if k in per_source else v) for k, v in params.items()})]
    return recipe


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
            metrics = {k: float(v) for k, v in task.evaluate(handle, split).items()
                       if k != "item_scores"}  # per-item scores: a list, not a metric
            for extra_name, extra in (extra_tasks or {}).items():
                scores = extra.evaluate(handle, extra.heldout_split)
                metrics.update({f"{extra_name}/{k}": float(v) for k, v in scores.items() if k != "item_scores"})
            error = None
        except Exception as e:  # noqa: BLE001 - one failing comparison must not lose the others
            metrics, error = {"fitness": math.nan}, f"{type(e).__name__}: {e}"
        row = {"name": name, "kind": kind, "detail": detail, "metrics": metrics}
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
        if adapter.base_name is not None:
            show_source(adapter, None)
            score(short_name(adapter.base_name) + " (base)", "source", adapter.base_name)
        for ref, handle in getattr(adapter, "standalone", lambda: [])():
            score(short_name(ref), "source", ref, handle=handle)

    for method, params in baselines.items():
        spec = get_method(method)
        if spec.needs_base and adapter.base_name is None:
            log(f"  skipping baseline {method}: it needs adapter.base")
            continue
        if spec.exact_sources is not None and spec.exact_sources != len(adapter.source_names):
            log(f"  skipping baseline {method}: it takes {spec.exact_sources} source(s)")
            continue
        described = ", ".join(f"{k}={v}" for k, v in params.items())
        apply_recipe(adapter, baseline_recipe(best, method, dict(params)))
        score(method, "baseline", described)
    return rows


def write_results(rows: list[dict], run_dir: Path, extra: dict | None = None) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    json_path = run_dir / "results.json"
    json_path.write_text(json.dumps(json_safe(rows), indent=2, ensure_ascii=False))
    md_path = run_dir / "results.md"
    md_path.write_text(results_markdown(rows, extra))
    return json_path, md_path


def results_markdown(rows: list[dict], extra: dict | None = None) -> str:
    # counts ("n") and the extra tasks' copies of their own fitness would only repeat columns
    hidden = lambda k: k in ("fitness", "n") or k.endswith(("/n", "/fitness"))  # noqa: E731
    metric_names = ["fitness"] + sorted({k for r in rows for k in r["metrics"] if not hidden(k)})
    header = "| model | kind | " + " | ".join(metric_names) + " |"
    lines = [header, "|" + "---|" * (2 + len(metric_names))]
    for r in rows:
        cells = [_fmt(r["metrics"].get(m)) for m in metric_names]
        lines.append(f"| {r['name']} | {r['kind']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if extra:
        text += "\n" + "\n".join(f"- {k}: {v}" for k, v in extra.items()) + "\n"
    return text


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
