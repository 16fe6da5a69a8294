"""Population-parallel evaluation across processes (``torchrun`` / ``accelerate launch``).

Launchers start one process per GPU (or per CPU slot) and set ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``. Every process loads the adapter and the task; rank 0 alone runs the optimizer
and writes the run directory (history, checkpoint, plots, W&B, final evaluation). For each
generation rank 0 broadcasts the candidates, every rank evaluates those with
``index % world_size == rank``, and rank 0 gathers the history entries back in order, so the
same seed gives the same history with any number of processes. When rank 0 is done (or fails),
it sends ``stop`` and the other ranks return from :func:`serve`.

Only small Python objects travel (the candidates' vectors and their history entries), so the
control plane is a CPU ``gloo`` group even when the models live on GPUs: NCCL would copy every
object through GPU memory and its watchdog would break the long idle waits of rank 0's final
evaluation. Each rank computes on ``cuda:LOCAL_RANK`` when GPUs exist (``torch.cuda.set_device``,
so ``device: auto`` / ``cuda`` mean that rank's GPU). Without ``WORLD_SIZE`` (or with 1) nothing
of ``torch.distributed`` is touched.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch

# A worker waits this long for rank 0's next population (a generation, checkpointing and W&B
# logging must fit in it); EVOMM_DIST_TIMEOUT (seconds) overrides it.
DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass
class Distributed:
    """This process's place among the evaluators."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # the gloo process group of the control messages (None: one process)
    _released: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def release(self) -> None:
        """Rank 0: tell the other ranks that no population follows, and leave the group."""
        if not self.enabled or self._released:
            return
        self._released = True
        if self.is_main:
            _broadcast(("stop", None), self.group)
        _leave()


def share(n: int, rank: int, world_size: int) -> list[int]:
    """The candidate indices a rank evaluates: every ``world_size``-th, from ``rank``."""
    return list(range(rank, n, world_size))


def init_from_env() -> Distributed:
    """Join the process group a launcher set up; a single process when WORLD_SIZE is unset or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout = timedelta(seconds=float(os.environ.get("EVOMM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timeout)
        group = None  # the default group is gloo
    else:  # someone (e.g. accelerate) already set up a group, maybe NCCL: add a gloo one
        group = dist.new_group(backend="gloo", timeout=timeout)
    ctx = Distributed(rank=rank, world_size=world_size, local_rank=local_rank, group=group)
    if ctx.is_main:
        atexit.register(ctx.release)  # a rank 0 that fails before the search still frees the others
    return ctx


def population_evaluator(problem: Any, ctx: Distributed) -> Callable[[list[np.ndarray]], list[dict]] | None:
    """Rank 0's ``evaluate_population`` for ``search``: spread, evaluate its own share, gather.

    Returns None for a single process (``search`` then evaluates in this process).
    """
    if not ctx.enabled:
        return None

    def evaluate(xs: list[np.ndarray], sample: int = 0, items: list[int] | None = None) -> list[dict]:
        xs = [np.asarray(x, dtype=np.float64) for x in xs]
        _broadcast(("evaluate", (xs, sample, items)), ctx.group)
        mine = _evaluate_share(problem, xs, sample, ctx, items)
        parts = _gather(mine, ctx)
        entries: list[dict | None] = [None] * len(xs)
        for part in parts:
            for index, entry in part:
                entries[index] = entry
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            raise RuntimeError(f"no result came back for candidates {missing}")
        return entries  # type: ignore[return-value]

    return evaluate


def serve(problem: Any, ctx: Distributed) -> int:
    """Ranks > 0: evaluate this rank's share of every population until rank 0 says stop.

    Returns the number of candidates this rank evaluated. Nothing is written anywhere.
    """
    evaluated = 0
    try:
        while True:
            kind, payload = _broadcast(None, ctx.group)
            if kind == "stop":
                break
            xs, sample, items = payload
            mine = _evaluate_share(problem, xs, sample, ctx, items)
            evaluated += len(mine)
            _gather(mine, ctx)
    finally:
        ctx._released = True
        _leave()
    return evaluated


def _evaluate_share(problem: Any, xs: list[np.ndarray], sample: int, ctx: Distributed,
                    items: list[int] | None = None) -> list[tuple[int, dict]]:
    """This rank's candidates, scored on ``items`` (a racing round or the selected items; None: all)."""
    mine = share(len(xs), ctx.rank, ctx.world_size)
    if items is None:
        return [(i, problem.evaluate(xs[i], sample)) for i in mine]
    return [(i, problem.evaluate(xs[i], sample, items)) for i in mine]


def _broadcast(message: Any, group: Any) -> Any:
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _gather(mine: list[tuple[int, dict]], ctx: Distributed) -> list:
    import torch.distributed as dist

    parts = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(mine, parts, dst=0, group=ctx.group)
    return parts or []


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
