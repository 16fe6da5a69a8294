"""The final evaluation's rows as files: ``results.json`` and ``results.md`` (a table)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evomm.tracking.history import json_safe


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
