"""Fitness generation: the fast greedy path against plain ``model.generate`` on the same prompts.

Three models, each scored on items/s and new tokens/s by both paths, outputs checked equal:

* ``mistral_shape``: Mistral-7B's architecture (32 layers, vocabulary 32000) at hidden size
  ``--hidden`` with random weights, on MGSM-style work: prompts of 60-120 tokens and long greedy
  answers that end at different lengths. A random model has no answer end of its own, so the
  bench picks EOS ids from a short calibration run (the tokens most rows produce, until 95% of
  the calibration rows end before ``--max-new-tokens``); the rest run to the limit, as rambling
  MGSM answers do. The answer lengths (mean, min, max) are printed with the figures. Both paths run at ``--batch`` and at a larger batch (``--big-batch``): the
  fast path's finished rows do not hold the batch, so a larger batch pays more for it.
* ``toy_llm``: the shipped toy-world LLM (``toy-llm-math``) on the ``toy_skills`` fitness prompts.
* ``toy_vlm``: the toy LLaVA on the ``toy_vqa_skills`` fitness (English VQA on images and
  Japanese text Q/A): the per-candidate fitness time with plain generate, with the fast path
  without its image-feature cache (cleared before every candidate) and with it; and its English
  VQA half with EvoVLM-JP's fitness settings (repetition penalty 1.5, so ``generate`` runs, fed
  the cached image features) against plain ``generate``.

Plus what caching the tokenised prompts saves per candidate, and what keeping the CLIP text
embeddings of the prompts saves in a CLIP-score fitness (the built-in tiny open_clip model, the
32 fitness prompts, random 64 x 64 images: the image side is the same in both). Each line holds the figures of
both sides and their ratio; ``forwards`` counts the fast path's model calls.

    python bench/generation.py [--small] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from _common import calibrated_eos, emit, ended, median, mgsm_like_prompts, parser, quiet, setup, timed

from transformers import GenerationConfig

from evomm.generation import generate_ids


def bench_mistral(args) -> None:
    from evomm.toy.mistral_shape import random_mistral

    model = random_mistral(args.hidden, layers=4 if args.small else 32)
    n = 16 if args.small else args.items
    prompts = mgsm_like_prompts(n)
    max_new = 32 if args.small else args.max_new_tokens
    eos = calibrated_eos(model, prompts[:8], max_new, 8)
    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=eos)
    big = args.big_batch or 3 * args.batch
    runs = {  # name: (fast, refill, batch)
        "plain": (False, False, args.batch), "fast_no_refill": (True, False, args.batch),
        "fast": (True, True, args.batch), "plain_big_batch": (False, False, big),
        "fast_big_batch": (True, True, big),
    }
    results, stats, times = {}, {}, {}
    for name, (fast, refill, batch) in runs.items():
        stats[name] = {}

        def run(name=name, fast=fast, refill=refill, batch=batch) -> None:
            results[name] = generate_ids(model, prompts, config, batch_size=batch, fast=fast, refill=refill,
                                         stats=stats[name])

        times[name] = median(timed(run, args.repeats))
    eos_set = set(eos)
    reference = [ended(r, eos_set) for r in results["plain"]]
    lengths = [len(r) for r in reference]
    for name in ("fast_no_refill", "fast", "fast_big_batch"):
        same_batch = "plain_big_batch" if name == "fast_big_batch" else "plain"
        emit(bench="generation", model="mistral_shape", path=name, layers=model.config.num_hidden_layers,
             hidden=model.config.hidden_size, vocab=model.config.vocab_size, items=n, batch=runs[name][2],
             max_new_tokens=max_new, answer_tokens_mean=round(sum(lengths) / n, 1),
             answer_tokens_min=min(lengths), answer_tokens_max=max(lengths),
             items_per_s=round(n / times[name], 3), plain_items_per_s=round(n / times[same_batch], 3),
             new_tokens_per_s=round(sum(lengths) / times[name], 1),
             plain_new_tokens_per_s=round(sum(lengths) / times[same_batch], 1),
             ratio=round(times[same_batch] / times[name], 2),
             ratio_vs_plain_at_batch=(args.batch, round(times["plain"] / times[name], 2)),
             forwards=stats[name]["forwards"],
             outputs_equal=all([ended(r, eos_set) for r in results[k]] == reference for k in (name, same_batch)))


def bench_toy_llm(args) -> None:
    from evomm.builtin import resolve
    from evomm.generation import generate_texts
    from evomm.stops import _ENCODED
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import evomm.toy.builtins  # noqa: F401 - registers builtin:toy-llm-*
    from evomm.tasks.toy_skills import SKILLS, skill_split

    path = resolve("builtin:toy-llm-math")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [p for skill in SKILLS for p, _ in skill_split(skill, "fitness")]
    out = {}

    def run(fast: bool) -> None:
        out[fast] = generate_texts(model, tok, prompts, max_new_tokens=8, batch_size=64, fast=fast)

    plain = median(timed(lambda: run(False), args.repeats))
    fast = median(timed(lambda: run(True), args.repeats))
    new_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in out[True])
    emit(bench="generation", model="toy_llm", path="fast", items=len(prompts), batch=64, max_new_tokens=8,
         items_per_s=round(len(prompts) / fast, 1), plain_items_per_s=round(len(prompts) / plain, 1),
         new_tokens_per_s=round(new_tokens / fast, 1), plain_new_tokens_per_s=round(new_tokens / plain, 1),
         ratio=round(plain / fast, 2), outputs_equal=out[True] == out[False])

    # Tokenising the prompts: every candidate (no memo) against once per run (the memo).
    def encode_fresh() -> None:
        _ENCODED.pop(tok, None)
        run(True)

    fresh = median(timed(encode_fresh, args.repeats))
    emit(bench="generation", model="toy_llm", path="prompt_ids_memo", items=len(prompts),
         seconds_per_candidate=round(fast, 4), without_memo_seconds=round(fresh, 4),
         ratio=round(fresh / fast, 3))


def bench_toy_vlm(args) -> None:
    import evomm.toy.vlm_builtins  # noqa: F401 - registers builtin:toy-vlm-*
    from evomm.adapters import build_adapter
    from evomm.adapters.apply import show_source
    from evomm.tasks import build_task

    adapter = build_adapter("vlm", models=["builtin:toy-vlm-llava", "builtin:toy-vlm-ja"],
                            base="builtin:toy-vlm-base", device="cpu")
    show_source(adapter, 0)
    handle = adapter.handle()
    plain = build_task("toy_vqa_skills", fast_generation=False)
    fast = build_task("toy_vqa_skills")
    plain.validate()
    results = {}

    def run(task, key, clear=False):
        if clear:
            task._vqa.vision_cache.clear()
        results[key] = task.evaluate(handle, "fitness")

    fast.evaluate(handle, "fitness")  # the first candidate fills the caches
    t_plain = median(timed(lambda: run(plain, "plain"), args.repeats))
    t_nocache = median(timed(lambda: run(fast, "nocache", True), args.repeats))
    t_fast = median(timed(lambda: run(fast, "fast"), args.repeats))
    items = len(fast.vqa_items("fitness")) + len(fast.qa_items("fitness"))
    same = results["plain"] == results["fast"] == results["nocache"]
    emit(bench="generation", model="toy_vlm", path="fitness_per_candidate", items=items,
         seconds=round(t_fast, 4), plain_seconds=round(t_plain, 4), ratio=round(t_plain / t_fast, 2),
         outputs_equal=same)
    # EvoVLM-JP's fitness settings (repetition penalty 1.5): generate, fed the cached features.
    from dataclasses import replace

    from evomm.tasks.ja_vg_vqa import generate_answers

    vqa = fast._vqa
    settings = replace(vqa.settings["train"], repetition_penalty=1.5)
    vqa_items = fast.vqa_items("fitness")
    answers = {}

    def penalised(cache) -> None:
        answers[cache is None] = generate_answers(handle, vqa_items, settings, vqa.system_prompt, vqa.prompt,
                                                  cache=cache)

    t_cached = median(timed(lambda: penalised(vqa.vision_cache), args.repeats))
    t_uncached = median(timed(lambda: penalised(None), args.repeats))
    emit(bench="generation", model="toy_vlm", path="repetition_penalty_cached_features", items=len(vqa_items),
         seconds=round(t_cached, 4), plain_seconds=round(t_uncached, 4), ratio=round(t_uncached / t_cached, 2),
         outputs_equal=answers[True] == answers[False])
    emit(bench="generation", model="toy_vlm", path="image_feature_cache", items=items,
         seconds=round(t_fast, 4), without_cache_seconds=round(t_nocache, 4),
         ratio=round(t_nocache / t_fast, 2), outputs_equal=same)


def bench_clip_text(args) -> None:
    """CLIP score per candidate: scoring with the prompts' text embeddings kept against re-embedding."""
    from PIL import Image

    from evomm.builtin import resolve
    from evomm.tasks import build_task
    from evomm.tasks.clip_score import DEFAULT_PROMPTS

    clip = resolve("builtin:tiny-clip")
    task = build_task("clip_score", model_name="evomm-tiny-clip", pretrained=str(clip), batch_size=8)
    prompts, _ = task.split("fitness")
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(64, 64, 3, generator=gen) * 255).byte().numpy()) for _ in prompts]
    device = torch.device("cpu")
    task.score(images, prompts, device)  # loads the model, fills the cache
    kept = median(timed(lambda: task.score(images, prompts, device), args.repeats))

    def fresh() -> None:
        task._text_features = {}
        task.score(images, prompts, device)

    again = median(timed(fresh, args.repeats))
    emit(bench="generation", model="tiny_clip", path="clip_text_embeddings", prompts=len(prompts),
         prompts_file=DEFAULT_PROMPTS.name, seconds=round(kept, 4), without_cache_seconds=round(again, 4),
         ratio=round(again / kept, 2))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the Mistral-shaped model")
    p.add_argument("--items", type=int, default=96, help="MGSM-style prompts")
    p.add_argument("--batch", type=int, default=16, help="rows decoded together (mgsm_ja's batch_size)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--big-batch", type=int, default=None, help="the larger batch also measured (default 3 x --batch)")
    p.add_argument("--only", choices=("mistral", "toy_llm", "toy_vlm", "clip"), default=None)
    p.set_defaults(repeats=3)
    args = p.parse_args()
    setup(args)
    quiet()
    with tempfile.TemporaryDirectory() as home:
        os.environ.setdefault("EVOMM_HOME", home)
        for name, fn in (("toy_llm", bench_toy_llm), ("toy_vlm", bench_toy_vlm), ("clip", bench_clip_text),
                         ("mistral", bench_mistral)):
            if args.only in (None, name):
                start = time.perf_counter()
                fn(args)
                if args.small:
                    print(f"# {name}: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
