"""``evomm merge`` (TIES, disk to disk, streamed) vs the floor: load, one elementwise pass, save.

The floor reads the three checkpoints (base and two experts) with safetensors, adds the two
experts' tensors (one elementwise pass) and saves the result: what any disk-to-disk merge must
at least do. The in-memory adapter path (load models, materialise, save_pretrained) is reported
too. Timings alternate between the contestants (the page cache is warm for all after the first
round) and the median is reported.

    python bench/one_shot.py [--small] [--repeats N]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from _common import build_models, emit, median, parser, quiet, setup, timed

from evomm.cli import merge_to_dir
from evomm.merging.recipe import Entry, Recipe

TARGET = 1.5


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(repeats=3)
    args = p.parse_args()
    setup(args)
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, experts = build_models(Path(args.workdir or tmp), args.small)
        recipe = Recipe(adapter="llm", method="ties", models=experts, base=base, seed=0,
                        entries=[Entry(params={"weight": [0.6, 0.5], "density": [0.4, 0.7]})],
                        adapter_options={"dtype": "float32"})
        out = tmp / "out"

        def evomm_merge() -> None:
            shutil.rmtree(out, ignore_errors=True)
            merge_to_dir(recipe, out, device="cpu")

        def floor() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            b = load_file(Path(base) / "model.safetensors")
            e0 = load_file(Path(experts[0]) / "model.safetensors")
            e1 = load_file(Path(experts[1]) / "model.safetensors")
            merged = {k: torch.add(e0[k], e1[k]) for k in e0}
            save_file(merged, out / "model.safetensors", metadata={"format": "pt"})
            del b

        def in_memory() -> None:
            from evomm.adapters.llm import LLMAdapter
            from evomm.merging.engine import materialize

            shutil.rmtree(out, ignore_errors=True)
            adapter = LLMAdapter(models=experts, base=base, device="cpu", require_tokenizer=False)
            materialize(adapter.slots(), recipe)
            adapter.save_merged(out)

        floor()
        evomm_merge()  # warm the page cache for everyone
        floors, merges, memory = [], [], []
        for _ in range(args.repeats):
            floors += timed(floor, 1)
            merges += timed(evomm_merge, 1)
            memory += timed(in_memory, 1)
        f, m = median(floors), median(merges)
        nbytes = (Path(base) / "model.safetensors").stat().st_size
        emit(bench="one_shot", method="ties", seconds=round(m, 3), floor_seconds=round(f, 3), ratio=round(m / f, 2),
             target_ratio=TARGET, in_memory_path_seconds=round(median(memory), 3), model_bytes=nbytes,
             models_loaded=3, small=args.small)


if __name__ == "__main__":
    main()
