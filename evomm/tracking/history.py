"""history.jsonl: one JSON object per evaluated candidate, readable without W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line parses with any JSON reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class HistoryWriter:
    def __init__(self, path: Path, existing: list[dict] | None = None):
        self.path = Path(path)
        # Rewrite from the checkpointed history: lines of a generation that was in flight when a
        # run was killed are dropped here and re-evaluated, so no candidate appears twice.
        with open(self.path, "w") as f:
            for entry in existing or []:
                f.write(json.dumps(json_safe(entry), ensure_ascii=False) + "\n")

    def append(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(entry), ensure_ascii=False) + "\n")
            f.flush()


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
