"""``evomm merge`` (TIES, disk to disk, streamed) vs the floor: load, one elementwise pass, save.

The floor reads the three checkpoints the merge reads (base and two experts) with safetensors,
makes one elementwise pass over them (``torch.addcmul(base, e0, e1)``: three tensors in, one
out) and saves the result: what any disk-to-disk merge of these models must at least do. It is
timed two ways, and the faster counts: ``save_file`` after torch's own multi-threaded pass, and
the way ``evomm merge`` works (a worker per core, each computing tensors single-threaded and
writing them to their places in the file). Exact TIES thresholds need every magnitude of a
tensor before its first merged entry, so a streamed TIES merge reads its inputs twice (once to
find the thresholds, once to merge): the two-read floor (the worker floor with a first pass
that sums every input tensor) is reported beside it. The in-memory adapter path (load models,
materialise, save_pretrained) is reported too. The contestants alternate (the page cache is
warm for all after the first round); the ratio uses each one's fastest of 20 runs, since other
processes share the cores (with 10, the ratio moved by +-0.08 between runs), and the medians
are reported too.

A second line times what a user runs: ``evomm merge CONFIG OUT`` in a fresh process, end to end
(interpreter start, imports, merge, save), next to ``mergekit-yaml CONFIG OUT`` on the same
mergekit YAML, alternating, fastest of three each, and compares the two outputs tensor by tensor.
A mergekit YAML asks for mergekit's tie order (``tie_order: mergekit``), so the tensors are
mergekit's own. The first ``evomm merge`` of an architecture also builds its tensor layout
with transformers (kept in $EVOMM_HOME/layouts): that run is timed on its own, with an empty
layout cache (``evomm_new_architecture_seconds``).

    python bench/one_shot.py [--small] [--repeats N] [--cold-only]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from _common import build_models, emit, median, parser, quiet, setup, timed

from evomm.cli import merge_to_dir
from evomm.recipe.recipe import Entry, Recipe
from evomm.merging.safetensors_io import ShardWriter

TARGET = 1.5
COLD_TARGET = 10.0  # a cold `evomm merge` at least 10x faster than mergekit-yaml end to end

MERGEKIT_YAML = """merge_method: ties
base_model: {base}
models:
  - model: {e0}
    parameters: {{weight: 0.6, density: 0.4}}
  - model: {e1}
    parameters: {{weight: 0.5, density: 0.7}}
dtype: float32
"""


def cold_commands() -> dict[str, list[str]]:
    """The two commands as a user types them (the installed console scripts when present)."""
    evomm = shutil.which("evomm")
    mergekit = shutil.which("mergekit-yaml")
    return {
        "evomm": [evomm, "merge"] if evomm else [sys.executable, "-m", "evomm.cli", "merge"],
        "mergekit": [mergekit] if mergekit else [],
    }


def cold_runs(base: str, experts: list[str], tmp: Path, repeats: int = 3) -> dict:
    """Fresh-process timings of both commands and how far apart their tensors are."""
    import os

    config = tmp / "ties.yml"
    config.write_text(MERGEKIT_YAML.format(base=base, e0=experts[0], e1=experts[1]))
    outs = {"evomm": tmp / "cold_evomm", "mergekit": tmp / "cold_mergekit"}
    cmds = cold_commands()
    extra = {"evomm": [], "mergekit": ["--no-copy-tokenizer"]}
    start = time.perf_counter()  # a new architecture: the layout cache is empty
    subprocess.run([*cmds["evomm"], str(config), str(tmp / "cold_first")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "EVOMM_HOME": str(tmp / "fresh_home")})
    first = time.perf_counter() - start
    seconds: dict[str, list[float]] = {"evomm": [], "mergekit": []}
    for _ in range(repeats):
        for name in ("evomm", "mergekit"):
            if not cmds[name]:
                continue
            shutil.rmtree(outs[name], ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([*cmds[name], str(config), str(outs[name]), *extra[name]], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
    result = {f"{k}_seconds": round(min(v), 2) for k, v in seconds.items() if v}
    result["evomm_new_architecture_seconds"] = round(first, 2)
    if seconds["mergekit"]:
        ours, theirs = _tensors(outs["evomm"]), _tensors(outs["mergekit"])
        diffs = [(ours[k].float() - theirs[k].float()).abs() for k in theirs]
        result.update(speedup=round(min(seconds["mergekit"]) / min(seconds["evomm"]), 1),
                      max_abs_diff=float(max(d.max() for d in diffs)),
                      elements_differing=int(sum(int((d > 0).sum()) for d in diffs)),
                      elements=int(sum(d.numel() for d in diffs)))
    return result


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(repeats=20)
    p.add_argument("--cold-only", action="store_true", help="only the fresh-process commands")
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
        files = [Path(m) / "model.safetensors" for m in (base, *experts)]

        def fresh_out() -> Path:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            return out / "model.safetensors"

        def evomm_merge() -> None:
            shutil.rmtree(out, ignore_errors=True)
            merge_to_dir(recipe, out, device="cpu")

        def floor_save_file() -> None:
            path = fresh_out()
            b, e0, e1 = (load_file(f) for f in files)
            save_file({k: torch.addcmul(b[k], e0[k], e1[k]) for k in b}, path, metadata={"format": "pt"})

        def floor_workers(reads: int = 1) -> None:
            path = fresh_out()
            b, e0, e1 = (load_file(f) for f in files)
            writer = ShardWriter(path, [(k, "F32", tuple(t.shape)) for k, t in b.items()])

            def one(k: str) -> None:
                for _ in range(reads - 1):  # an earlier read of every input (sums: nothing written)
                    for t in (b[k], e0[k], e1[k]):
                        t.sum()
                writer.write(k, torch.addcmul(b[k], e0[k], e1[k]).numpy())

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=threads) as pool:
                    list(pool.map(one, b))
            finally:
                torch.set_num_threads(threads)
                writer.close()

        def in_memory() -> None:
            from evomm.adapters.llm import LLMAdapter
            from evomm.merging.engine import materialize

            shutil.rmtree(out, ignore_errors=True)
            adapter = LLMAdapter(models=experts, base=base, device="cpu", require_tokenizer=False)
            materialize(adapter.slots(), recipe)
            adapter.save_merged(out)

        nbytes = (Path(base) / "model.safetensors").stat().st_size
        if args.cold_only:
            emit(bench="one_shot_cold", method="ties", what="evomm merge CONFIG OUT vs mergekit-yaml CONFIG OUT, "
                 "fresh processes, end to end", target_speedup=COLD_TARGET, model_bytes=nbytes, small=args.small,
                 **cold_runs(base, experts, tmp))
            return
        floor_save_file()
        evomm_merge()  # warm the page cache (and compile the kernels) for everyone
        saves, workers, two_reads, merges = [], [], [], []
        for _ in range(args.repeats):
            saves += timed(floor_save_file, 1)
            workers += timed(floor_workers, 1)
            two_reads += timed(lambda: floor_workers(reads=2), 1)
            merges += timed(evomm_merge, 1)
        memory = timed(in_memory, 1)
        f, m = min(min(saves), min(workers)), min(merges)
        emit(bench="one_shot", method="ties", seconds=round(m, 3), floor_seconds=round(f, 3), ratio=round(m / f, 2),
             target_ratio=TARGET, median_seconds=round(median(merges), 3),
             floor_save_file_seconds=round(min(saves), 3), floor_workers_seconds=round(min(workers), 3),
             median_floor_seconds=round(median(saves + workers), 3),
             two_read_floor_seconds=round(min(two_reads), 3), ratio_to_two_read_floor=round(m / min(two_reads), 2),
             in_memory_path_seconds=round(memory[0], 3),
             model_bytes=nbytes, models_loaded=3, small=args.small)
        cold = cold_runs(base, experts, tmp)
        emit(bench="one_shot_cold", method="ties", what="evomm merge CONFIG OUT vs mergekit-yaml CONFIG OUT, "
             "fresh processes, end to end", target_speedup=COLD_TARGET, model_bytes=nbytes, small=args.small, **cold)


if __name__ == "__main__":
    main()
