"""Per-candidate materialisation time of each merge method vs one streaming pass.

The limit: ``torch.add(a, b, out=c)`` over the same tensors (two expert tensors in, the
resident target out) -- one read of two models and one write of one, at memory bandwidth --
done both ways a CPU can (torch splitting each add over its threads; single-threaded adds on
whole tensors side by side, as the engine works), the faster one counting. A
materialisation reads the base and every expert and writes the target, plus the method's
arithmetic. Each candidate gets fresh weights and densities (as a search does). The first
call (which, in a fresh process, also compiles the kernels) is reported separately: there TIES
takes single-use thresholds, and the second call, not timed, builds its magnitude index. The
two contestants are timed alternately; the ratio uses the fastest run of each (medians are
reported too), since other processes share the cores.

    python bench/materialize.py [--small] [--threads N] [--repeats N]
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from _common import build_models, emit, median, model_bytes, parser, setup, timed

from evomm.adapters.llm import LLMAdapter
from evomm.merging.engine import materialize
from evomm.merging.slots import TensorSlot
from evomm.recipe.recipe import Entry, Recipe

TARGET = 3.0
METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--methods", nargs="*", default=METHODS)
    p.add_argument("--chunk", type=int, default=None, help="engine chunk size in elements")
    args = p.parse_args()
    setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        base, experts = build_models(Path(args.workdir or tmp), args.small)
        adapter = LLMAdapter(models=experts, base=base, device="cpu", require_tokenizer=False)
        slots = adapter.slots()
        # slerp takes one expert: the same tensors, seen through slots with one source
        one_source = [TensorSlot(s.name, s.group, s.t, s.target, s.sources[:1], s.base) for s in slots]
        nbytes = model_bytes(slots)
        rng = np.random.default_rng(0)

        def floor_ops() -> None:  # torch splits each add over its threads
            for s in slots:
                torch.add(s.sources[0], s.sources[1], out=s.target)

        def floor_slots() -> None:  # single-threaded adds, tensors side by side (the engine's way)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    list(pool.map(lambda s: torch.add(s.sources[0], s.sources[1], out=s.target),
                                  sorted(slots, key=lambda s: -s.target.numel())))
            finally:
                torch.set_num_threads(threads)

        for method in args.methods:
            def candidate() -> None:
                models = experts[:1] if method == "slerp" else experts
                if method == "slerp":
                    params = {"t": float(rng.uniform(0.1, 0.9))}
                else:
                    params = {"weight": [float(w) for w in rng.uniform(0.2, 1.0, len(models))]}
                if method in ("ties", "dare_ties", "dare_linear"):
                    params["density"] = [float(d) for d in rng.uniform(0.2, 0.9, len(models))]
                recipe = Recipe(adapter="llm", method=method, models=models, base=base,
                                entries=[Entry(params=params)], seed=0)
                materialize(one_source if method == "slerp" else slots, recipe, chunk=args.chunk)

            first = timed(candidate, 1)[0]
            candidate()  # builds the per-tensor caches
            floor_ops()  # warm
            floors, times = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                floors += timed(floor_ops, 1) + timed(floor_slots, 1)
                times += timed(candidate, 1)
            # The machine is shared: the fastest of the interleaved runs is each one's own speed.
            f, t = min(floors), min(times)
            emit(bench="materialize", method=method, seconds=round(t, 4), floor_seconds=round(f, 4),
                 ratio=round(t / f, 2), target_ratio=TARGET, median_seconds=round(median(times), 4),
                 median_floor_seconds=round(median(floors), 4), first_call_seconds=round(first, 4),
                 params=sum(s.target.numel() for s in slots), model_bytes=nbytes,
                 models_loaded=1 + len(experts), small=args.small)


if __name__ == "__main__":
    main()
