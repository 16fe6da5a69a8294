"""The fitness-task contract.

A task scores a handle (see ``evomm.adapters.base``) on one split and returns a flat dict of
floats whose key ``fitness`` is what the search maximises (higher is better). It names the split
the search may use (``fitness_split``) and the split it reports on (``heldout_split``); the run
refuses to evolve on the held-out split unless told to. Generation settings and samples are fixed
and seeded, so the same model always gets the same score.

Per-item scores are the common currency of the search: ``evaluate(handle, split, items)`` scores
only the listed items of the split's item list (``None``: all of them; for the fitness split that
list is its fixed seeded sample) and returns, besides the floats, ``item_scores``: one float per
scored item, in the order scored. ``fitness`` is their mean (a task whose fitness is another
aggregate weights its item scores so that their mean over the whole list is that aggregate).
``num_items(split)`` is the length of the list. Racing (stop scoring a candidate that cannot be
selected) and item selection (score on the items that separate models) rely on nothing else.

A task whose fitness split is a seeded sample of a larger pool can also redraw that sample
(``resample_fitness: true`` in the run config): it mixes in :class:`Resampling`, and the search
calls ``resample(generation)`` before scoring each generation's candidates.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


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

    def evaluate(self, handle: Any, split: str, items: Sequence[int] | None = None) -> dict[str, Any]:
        """Score the handle on ``items`` of ``split`` (None: all).

        The result holds ``fitness`` and explanatory float metrics over the scored items, and
        ``item_scores``: one float per scored item, in the order of ``items``.
        """

    def num_items(self, split: str) -> int:
        """How many items ``evaluate(handle, split)`` scores; ``items`` index into them."""


def pick(records: Sequence[T], items: Sequence[int] | None, task: str = "task") -> list[T]:
    """``records`` at the indices ``items`` (None: all of them, in order)."""
    if items is None:
        return list(records)
    n = len(records)
    bad = [i for i in items if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < n]
    if bad:
        raise IndexError(f"{task}: item indices {bad[:5]} are outside 0..{n - 1}")
    return [records[i] for i in items]


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no items were scored")
    return float(sum(values) / len(values))


def balanced_weights(groups: Sequence[int]) -> list[float]:
    """Weights for items of several groups (``groups[g]`` items in group g, in that order) so that
    the mean of weighted item scores over all items is the mean of the groups' means.

    A task whose fitness averages several skills of different sizes scores item k of group g as
    ``correct_k * weight_g``: their plain mean is then its fitness, and the mean over any uniform
    subset is an unbiased estimate of it, which is what racing and item selection need.
    """
    total, present = sum(groups), sum(1 for n in groups if n)
    return [total / (present * n) if n else 0.0 for n in groups]


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

