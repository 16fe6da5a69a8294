"""What a search spent on fitness: items scored against a full evaluation, racing, item selection.

Read from the run directory alone (``history.jsonl``'s ``items`` / ``items_full`` /
``stopped_early`` and ``item_selection.json``), for ``evomm report`` and the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from evomm.search.selection import SELECTION_FILE


def selection_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SELECTION_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def spending_lines(run_dir: Path, history: list[dict]) -> list[str]:
    """Plain-text lines; none for a run whose task gave no per-item scores (or an older run)."""
    scored = sum(int(h.get("items") or 0) for h in history)
    full = sum(int(h.get("items_full") or 0) for h in history)
    if not full:
        return []
    selection = selection_record(run_dir)
    choosing = int(selection.get("items_scored", 0)) if selection else 0
    total = scored + choosing
    ratio = f"{full / total:.1f}x fewer" if total else "none"
    lines = [f"fitness items scored: {total} of the {full} a full evaluation of every candidate needs ({ratio})"]
    stopped = sum(bool(h.get("stopped_early")) for h in history)
    if stopped or any("stopped_early" in h for h in history):
        lines.append(f"candidates stopped early by racing: {stopped} of {len(history)}")
    if selection:
        lines.append(f"item selection ({selection.get('rule')}): {len(selection.get('items', []))} of "
                     f"{selection.get('pool')} items, {choosing} items scored to choose them; {selection.get('reason')}")
    return lines
