"""Peak resident memory of a search vs (M + 1) x model bytes (M models loaded, plus the target).

A fresh subprocess imports everything and warms the libraries up on a tiny model (its
baseline: what does not grow with the model, the compiled merge kernels included), loads the adapter (base and two experts,
float32: M = 3) and runs a short TIES search, then a DARE-TIES one, at layer granularity with a
forward-pass fitness, while a thread samples the resident set size every few milliseconds. The
figure is the peak during the search minus the baseline, in model sizes; ru_maxrss (the peak
over the whole process, model loading included) is reported too.

    python bench/memory.py [--small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import build_models, emit, parser

TARGET_EXTRA = 1.25  # peak <= (M + 1.25) x model bytes


def child(base: str, experts: list[str]) -> None:
    import resource

    import psutil
    import torch

    from evomm.adapters.llm import LLMAdapter
    from evomm.quiet import quiet_libraries
    from evomm.search.checkpoint import SearchState
    from evomm.search.loop import Problem, search
    from evomm.search.optimizers import build_optimizer
    from evomm.merging import ties_thresholds
    from evomm.merging.engine import materialize
    from evomm.recipe.recipe import Entry, Recipe
    from evomm.search.space import SearchSpace, build_units

    quiet_libraries()
    proc = psutil.Process()
    imported = proc.memory_info().rss
    # Warm the libraries up (modeling code, kernels, pycma, allocator pools) on a tiny model of
    # the same family, so that the baseline holds what does not grow with the model.
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    with tempfile.TemporaryDirectory() as tmp:
        tiny.save_pretrained(tmp)
        warm = LLMAdapter(models=[tmp, tmp], base=tmp, device="cpu", require_tokenizer=False)
        with torch.inference_mode():
            warm.model(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long))
        build_optimizer("cmaes", dim=2, seed=0)  # importing pycma alone takes ~100 MB
        # Load every compiled merge kernel (numba, LLVM: several MB each): TIES on the tiny
        # tensors as on large ones (single-use thresholds, then the magnitude index), DARE.
        small_tensor, ties_thresholds.SMALL_TENSOR = ties_thresholds.SMALL_TENSOR, 0
        for method in ("ties", "ties", "dare_ties"):
            materialize(warm.slots(), Recipe(adapter="llm", method=method, models=[tmp, tmp], base=tmp, seed=0,
                                             entries=[Entry(params={"weight": [0.5, 0.5], "density": [0.5, 0.5]})]))
        ties_thresholds.SMALL_TENSOR = small_tensor
    del tiny, warm
    baseline = proc.memory_info().rss
    adapter = LLMAdapter(models=experts, base=base, device="cpu", require_tokenizer=False)
    loaded = proc.memory_info().rss
    # Sources loaded from safetensors may be mapped lazily: touch every tensor so that "resident"
    # holds all M models and the target, and the search's own increment shows.
    for slot in adapter.slots():
        for t in [slot.base, *slot.sources]:
            float(t.sum())
    resident = proc.memory_info().rss
    model_bytes = sum(s.target.numel() * s.target.element_size() for s in adapter.slots())
    ids = torch.randint(0, adapter.model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))

    class Loss:
        def evaluate(self, handle, split):
            with torch.inference_mode():
                return {"fitness": -float(handle.model(input_ids=ids, labels=ids).loss)}

    peak = [resident]
    running = [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for method in ("ties", "dare_ties"):
        template = Recipe(adapter="llm", method=method, models=experts, base=base, seed=0)
        space = SearchSpace(template=template, units=build_units("layer", adapter.groups(), adapter.layer_groups()),
                            evolve=["weight", "density"], bounds={"weight": (0.0, 1.0), "density": (0.1, 1.0)})
        optimizer = build_optimizer("cmaes", dim=space.dim, seed=0, popsize=4)
        search(Problem(space=space, adapter=adapter, task=Loss(), split="fitness"), optimizer,
               SearchState(optimizer=optimizer), 2)
    running[0] = False
    sampler.join()
    print(json.dumps({"imported": imported, "baseline": baseline, "loaded": loaded, "resident": resident,
                      "search_peak": peak[0], "model_bytes": model_bytes,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # the measured subprocess
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    with tempfile.TemporaryDirectory() as tmp:
        base, experts = build_models(Path(args.workdir or tmp), args.small)
        cmd = [sys.executable, __file__, "--child", base, *experts]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
    m = 1 + len(experts)
    mb = r["model_bytes"]
    extra = (r["search_peak"] - r["baseline"]) / mb
    emit(bench="memory", peak_over_baseline_models=round(extra, 3), limit_models=m + 1,
         ratio_to_limit=round(extra / (m + 1), 3), target_models=m + TARGET_EXTRA,
         search_peak_bytes=r["search_peak"], baseline_bytes=r["baseline"], after_imports_bytes=r["imported"],
         after_load_bytes=r["loaded"], all_models_resident_bytes=r["resident"],
         models_resident_over_baseline=round((r["resident"] - r["baseline"]) / mb, 3),
         search_increment_models=round((r["search_peak"] - r["resident"]) / mb, 3),
         ru_maxrss_bytes=r["ru_maxrss"], ru_maxrss_over_baseline_models=round((r["ru_maxrss"] - r["baseline"]) / mb, 3),
         model_bytes=mb, models_loaded=m, small=args.small)


if __name__ == "__main__":
    main()
