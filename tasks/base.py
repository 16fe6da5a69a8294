"""The fitness-task contract.

A task scores a handle (see ``evomm.adapters.base``) on one split and returns a flat dict of
floats whose key ``fitness`` is what the search maximises (higher is better). It names the split
the search may use (``fitness_split``) and the split it reports on (``heldout_split``); the run
refuses to evolve on the held-out split unless told to. Generation settings and samples are fixed
and seeded, so the same model always gets the same score.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    name: str
    modality: str  # "llm", "vlm" or "sdxl": which handle evaluate() takes
    fitness_split: str
    heldout_split: str

    def validate(self) -> None:
        """Cheap checks before any model loads (data reachable, fields present, splits disjoint).

        Raises ``evomm.errors.ConfigError`` with a message that says what to change.
        """

    def evaluate(self, handle: Any, split: str) -> dict[str, float]:
        """Score the handle on ``split``; the result holds ``fitness`` plus explanatory metrics."""
