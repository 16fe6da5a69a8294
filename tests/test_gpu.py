"""Checks that need a CUDA device (``pytest -m gpu``; ``bench/gpu_check.py`` runs them)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import GenerationConfig

from evomm.generation import generate_ids
from evomm.toy.mistral_shape import random_mistral

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def ended(row, eos):
    for k, token in enumerate(row):
        if token in eos:
            return row[: k + 1]
    return row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_equals_plain_on_cuda(dtype):
    model = random_mistral(hidden_size=64, layers=32, dtype=dtype, device="cuda")
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 32000, (int(n),), generator=gen).tolist()
               for n in torch.randint(5, 40, (24,), generator=gen)]
    free = generate_ids(model, prompts, GenerationConfig(max_new_tokens=24, do_sample=False, pad_token_id=0),
                        batch_size=8, fast=True)
    eos = [free[0][3], free[1][9], free[2][15], free[3][20]]
    config = GenerationConfig(max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=eos)
    plain = [ended(r, set(eos)) for r in generate_ids(model, prompts, config, batch_size=8, fast=False)]
    fast = [ended(r, set(eos)) for r in generate_ids(model, prompts, config, batch_size=8, fast=True)]
    assert len({len(r) for r in plain}) >= 3
    assert fast == plain


def test_toy_vlm_fast_equals_plain_on_cuda():
    import evomm.toy.vlm_builtins  # noqa: F401 - registers builtin:toy-vlm-*
    from evomm.adapters import build_adapter
    from evomm.adapters.apply import show_source
    from evomm.tasks import build_task

    adapter = build_adapter("vlm", models=["builtin:toy-vlm-llava", "builtin:toy-vlm-ja"],
                            base="builtin:toy-vlm-base", device="cuda")
    show_source(adapter, 0)
    handle = adapter.handle()
    fast = build_task("toy_vqa_skills", fitness_samples=24)
    plain = build_task("toy_vqa_skills", fitness_samples=24, fast_generation=False)
    assert fast.evaluate(handle, "fitness") == plain.evaluate(handle, "fitness")
