"""Console progress: one line per generation with best so far, throughput and ETA."""

from __future__ import annotations

import statistics
import sys
import time
from typing import TextIO

from evomm.search.checkpoint import SearchState


class Progress:
    def __init__(self, generations: int, start_generation: int = 0, stream: TextIO | None = None):
        self.generations = generations
        self.start_generation = start_generation
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.extra_items = 0  # fitness items scored outside the generations (item selection)

    def print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def generation(self, state: SearchState, entries: list[dict], extra: dict[str, float]) -> None:
        done = state.generation - self.start_generation
        elapsed = time.perf_counter() - self.started
        per_gen = elapsed / max(done, 1)
        eta = per_gen * (self.generations - state.generation)
        scores = [e["fitness"] for e in entries if e["fitness"] is not None]
        failed = len(entries) - len(scores)
        evals_per_min = 60 * done * len(entries) / max(elapsed, 1e-9)
        parts = [
            f"gen {state.generation}/{self.generations}",
            f"best {state.best['fitness']:.4f}" if state.best else "best -",
            f"gen mean {statistics.fmean(scores):.4f}" if scores else "gen mean -",
            f"{evals_per_min:.1f} evals/min",
            f"ETA {_duration(eta)}",
        ]
        scored = sum(int(h.get("items") or 0) for h in state.history) + self.extra_items
        full = sum(int(h.get("items_full") or 0) for h in state.history)
        if full:  # the task reports per-item scores: say what racing / selection saved
            parts.append(f"items {scored}/{full}")
        parts += [f"{k} {v:.3g}" for k, v in extra.items()]
        if failed:
            parts.append(f"{failed} failed")
        self.print(" | ".join(parts))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
