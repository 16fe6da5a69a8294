"""One command for a GPU machine: merge, generate and test a Mistral-7B-shaped model (< 5 min, one H100).

1. ``materialize``: a random bf16 model of Mistral-7B's shape on the GPU is the resident target;
   three sources (a base and two experts = base + noise) sit beside it. Each candidate is a
   DARE-TIES recipe with fresh weights and densities written in place by the merge engine; its
   time is set against a device-memory pass over the same bytes (``torch.addcmul`` reading the
   three sources and writing the target: the bandwidth floor).
2. ``generation``: MGSM-style greedy generation (prompts of 60-120 tokens, answers ending at
   different lengths: EOS ids calibrated on the random model as in ``bench/generation.py``) with
   plain ``model.generate`` and with the fast path, same batch size; tokens/s of each and how many
   rows came out identical (bf16 kernels may pick other reductions for other batch shapes, so
   rows can part where two logits tie to bf16 precision; the count says how often).
   ``--static`` adds ``generate`` with a static KV cache (transformers compiles its decode step
   on a GPU), the GPU-only option this project has not measured yet.
3. ``pytest``: the tests marked ``gpu`` (``pytest -m gpu``).

Every result is a JSON line. ``--cpu-small`` runs the same code on the CPU with a narrow model,
few items and ``pytest -m gpu --collect-only`` (the suite runs it so that this script cannot rot).

    python bench/gpu_check.py                 # on a GPU machine
    python bench/gpu_check.py --cpu-small     # anywhere, seconds
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch

from _common import REPO, calibrated_eos, emit, ended, mgsm_like_prompts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def check_materialize(model, device, repeats: int) -> None:
    from evomm.adapters.base import TensorSlot
    from evomm.merging.engine import materialize
    from evomm.recipe.recipe import Entry, Recipe

    gen = torch.Generator(device=device).manual_seed(0)
    slots = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = param.detach().clone()
            experts = [base + 0.01 * base.abs().mean() * torch.randn(base.shape, generator=gen, device=device,
                                                                         dtype=base.dtype) for _ in range(2)]
            slots.append(TensorSlot(name, "all", 0.0, param.data, experts, base))
    nbytes = sum(s.target.numel() * s.target.element_size() for s in slots)
    rng = np.random.default_rng(0)

    def candidate() -> None:
        params = {"weight": [float(w) for w in rng.uniform(0.2, 1.0, 2)],
                  "density": [float(d) for d in rng.uniform(0.2, 0.9, 2)]}
        materialize(slots, Recipe(adapter="llm", method="dare_ties", models=["e0", "e1"], base="base",
                                  entries=[Entry(params=params)], seed=0))

    def floor() -> None:  # read base and both experts, write the target: the same bytes
        for s in slots:
            torch.addcmul(s.base, s.sources[0], s.sources[1], out=s.target)

    first = _timed(candidate, device, 1)[0]
    times, floors = [], []
    for _ in range(repeats):
        times += _timed(candidate, device, 1)
        floors += _timed(floor, device, 1)
    t, f = min(times), min(floors)
    emit(check="materialize", method="dare_ties", sources=3, device=str(device), dtype=str(model.dtype),
         params=sum(s.target.numel() for s in slots), target_bytes=nbytes, seconds=round(t, 4),
         first_call_seconds=round(first, 4), floor_seconds=round(f, 4), ratio=round(t / f, 2),
         floor_gb_per_s=round(4 * nbytes / f / 1e9, 1))
    del slots


def check_generation(model, device, items: int, batch: int, max_new_tokens: int, static: bool = False) -> None:
    from transformers import GenerationConfig

    from evomm.generation import generate_ids

    prompts = mgsm_like_prompts(items, vocab=model.config.vocab_size)
    eos = calibrated_eos(model, prompts[:8], max_new_tokens, 8)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)
    rows, seconds, stats = {}, {}, {}
    for kind in ("plain", "fast", "plain", "fast"):  # the second round is timed (the first warms up)
        stats[kind] = {}

        def run(k=kind) -> None:
            rows[k] = generate_ids(model, prompts, config, batch_size=batch, fast=k == "fast", stats=stats[k])

        seconds[kind] = _timed(run, device, 1)[0]
    eos_set = set(eos)
    plain = [ended(r, eos_set) for r in rows["plain"]]
    fast = [ended(r, eos_set) for r in rows["fast"]]
    tokens = sum(len(r) for r in plain)
    emit(check="generation", device=str(device), dtype=str(model.dtype), layers=model.config.num_hidden_layers,
         hidden=model.config.hidden_size, items=items, batch=batch, max_new_tokens=max_new_tokens,
         answer_tokens_mean=round(tokens / items, 1), plain_tokens_per_s=round(tokens / seconds["plain"], 1),
         fast_tokens_per_s=round(sum(len(r) for r in fast) / seconds["fast"], 1),
         plain_items_per_s=round(items / seconds["plain"], 3), fast_items_per_s=round(items / seconds["fast"], 3),
         ratio=round(seconds["plain"] / seconds["fast"], 2), fast_forwards=stats["fast"]["forwards"],
         rows_equal=sum(a == b for a, b in zip(plain, fast)), rows=items, outputs_equal=plain == fast)
    if static:
        check_static_generate(model, device, prompts, config, batch, plain, tokens)


def check_static_generate(model, device, prompts, config, batch, plain, tokens) -> None:
    """``generate`` with a static KV cache, which transformers compiles on a GPU (first call: compile)."""
    import copy

    from evomm.generation import generate_ids

    static = copy.deepcopy(config)
    static.cache_implementation = "static"
    rows = {}

    def run() -> None:
        rows["static"] = generate_ids(model, prompts, static, batch_size=batch, fast=False)

    first = _timed(run, device, 1)[0]
    again = _timed(run, device, 1)[0]
    eos_set = set(config.eos_token_id)
    same = [ended(r, eos_set) for r in rows["static"]]
    emit(check="generation_static_cache", device=str(device), first_call_seconds=round(first, 1),
         tokens_per_s=round(tokens / again, 1), rows_equal=sum(a == b for a, b in zip(plain, same)),
         rows=len(prompts))


def check_tests(collect_only: bool, timeout: int) -> None:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    if collect_only:  # the CPU mode: collect the GPU test module only (the suite is slow to import)
        command += ["--collect-only", "tests/test_gpu.py"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    emit(check="pytest", command=" ".join(command[1:]), returncode=done.returncode,
         summary=lines[-1] if lines else "", seconds=round(time.perf_counter() - start, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-small", action="store_true", help="a narrow model on the CPU: checks the script")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--static", action="store_true",
                   help="also time generate with a static KV cache (compiled by transformers on a GPU; "
                        "the compile takes minutes, beyond the 5-minute budget)")
    p.add_argument("--skip", nargs="*", default=[], choices=("materialize", "generation", "pytest"))
    args = p.parse_args()

    from evomm.toy.mistral_shape import random_mistral

    if args.cpu_small:
        device, hidden, layers = torch.device("cpu"), 32, 4
        args.items, args.batch, args.max_new_tokens, args.repeats = 8, 4, 12, 1
        args.static = True  # no compile on a CPU: cheap, and it keeps that code path checked
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --cpu-small to check the script on a CPU")
    else:
        device, hidden, layers = torch.device("cuda"), None, 32
    start = time.perf_counter()
    model = random_mistral(hidden, layers=layers, dtype=torch.bfloat16, device=str(device), init_std=0.02)
    emit(check="model", device=str(device), name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
         params=sum(p.numel() for p in model.parameters()), seconds=round(time.perf_counter() - start, 1))
    if "materialize" not in args.skip:
        check_materialize(model, device, args.repeats)
    if "generation" not in args.skip:
        check_generation(model, device, args.items, args.batch, args.max_new_tokens, args.static)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "pytest" not in args.skip:
        check_tests(collect_only=args.cpu_small, timeout=240)


if __name__ == "__main__":
    main()
