"""The fitness-task contract.

A task scores a handle (see ``evomm.adapters.base``) on one split and returns a flat dict of
floats whose key ``fitness`` is what the search maximises (higher is better). It names the split
the search may use (``fitness_split``) and the split it reports on (``heldout_split``); the run
refuses to evolve on the held-out split unless told to. Generation settings and samples are fixed
and seeded, so the same model always gets the same score.

A task whose fitness split is a seeded sample of a larger pool can also redraw that sample
(``resample_fitness: true`` in the run config): it mixes in :class:`Resampling`, and the search
calls ``resample(generation)`` before scoring each generation's candidates.
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


class Resampling:
    """The fitness sample is seeded by (seed, round); ``resample(r)`` switches to round r.

    Round 0 is the task's fixed sample (its own ``seed``); the held-out split never changes.
    Tasks use ``random.Random(self.sample_seed(split))`` where they draw a sample and override
    ``forget`` when they cache a split's items.
    """

    sample_round: int = 0

    def sample_seed(self, split: str) -> int | str:
        round_ = self.sample_round if split == self.fitness_split else 0
        # a str seed is hashed with SHA-512 by random.Random: the same draw in every process
        return self.seed if round_ == 0 else f"{self.seed}/resample/{round_}"

    def resample(self, round_: int) -> None:
        """Draw the fitness sample of round ``round_`` (0: the fixed sample)."""
        if round_ != self.sample_round:
            self.sample_round = round_
            self.forget(self.fitness_split)

    def forget(self, split: str) -> None:
        """Drop what is cached of ``split`` (nothing here)."""
