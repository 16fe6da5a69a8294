"""Share of a search's wall time spent outside materialisation and fitness.

A real loop (``evomm.search.loop.search``: CMA-ES ask/tell, decode, the fitness cache,
history.jsonl, a checkpoint per generation) over the Llama-shaped checkpoints, TIES at layer
granularity. The fitness is a forward pass of the merged model over a fixed batch of token ids
(negative mean loss), sized so that it costs at least 10x a materialisation. Everything else in
the wall time is the loop's overhead.

    python bench/loop_overhead.py [--small] [--generations N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from _common import build_models, emit, parser, quiet, setup

from evomm.adapters.llm import LLMAdapter
from evomm.search import checkpoint, loop
from evomm.search.checkpoint import SearchState
from evomm.search.loop import Problem, search
from evomm.search.optimizers import build_optimizer
from evomm.recipe.recipe import Recipe
from evomm.search.space import SearchSpace, build_units
from evomm.tracking.history import HistoryWriter

TARGET = 0.05


class ForwardLoss:
    """Fitness = minus the LM loss of a fixed random batch: a real forward pass."""

    name, modality, fitness_split, heldout_split = "forward_loss", "llm", "fitness", "heldout"

    def __init__(self, vocab: int, batch: int, length: int):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (batch, length), generator=gen)
        self.seconds = 0.0

    def evaluate(self, handle, split):
        start = time.perf_counter()
        with torch.inference_mode():
            loss = handle.model(input_ids=self.ids, labels=self.ids).loss
        self.seconds += time.perf_counter() - start
        return {"fitness": -float(loss)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--popsize", type=int, default=4)
    p.add_argument("--tokens", type=int, default=None, help="batch x length of the fitness forward pass")
    args = p.parse_args()
    setup(args)
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, experts = build_models(Path(args.workdir or tmp), args.small)
        adapter = LLMAdapter(models=experts, base=base, device="cpu", require_tokenizer=False)
        template = Recipe(adapter="llm", method="ties", models=experts, base=base, seed=0)
        units = build_units("layer", adapter.groups(), adapter.layer_groups())
        space = SearchSpace(template=template, units=units, evolve=["weight", "density"],
                            bounds={"weight": (0.0, 1.0), "density": (0.1, 1.0)})
        tokens = args.tokens or (4096 if not args.small else 1024)
        task = ForwardLoss(adapter.model.config.vocab_size, batch=8, length=tokens // 8)

        materialising = [0.0]
        apply = loop.apply_recipe

        def timed_apply(a, recipe):
            start = time.perf_counter()
            apply(a, recipe)
            materialising[0] += time.perf_counter() - start

        loop.apply_recipe = timed_apply
        optimizer = build_optimizer("cmaes", dim=space.dim, seed=0, popsize=args.popsize)
        state = SearchState(optimizer=optimizer)
        history = HistoryWriter(tmp / "history.jsonl")
        problem = Problem(space=space, adapter=adapter, task=task, split="fitness")

        start = time.perf_counter()
        search(problem, optimizer, state, args.generations, on_candidate=history.append,
               on_generation=lambda s, entries: checkpoint.save(tmp / "checkpoint.pkl", s, "bench"))
        wall = time.perf_counter() - start
        loop.apply_recipe = apply

        overhead = wall - materialising[0] - task.seconds
        n = len(state.history)
        emit(bench="loop_overhead", overhead_share=round(overhead / wall, 4), target_share=TARGET,
             wall_seconds=round(wall, 3), materialise_seconds=round(materialising[0], 3),
             fitness_seconds=round(task.seconds, 3), overhead_seconds=round(overhead, 3),
             fitness_over_materialise=round(task.seconds / max(materialising[0], 1e-9), 1),
             candidates=n, genes=space.dim, small=args.small)


if __name__ == "__main__":
    main()
