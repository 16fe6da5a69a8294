"""Shared helpers for the benchmarks: Llama-shaped checkpoints built here, JSON-line output.

The models are real checkpoints (``save_pretrained`` into a temporary folder, loaded back through
the same loading code a run uses): a random base and experts = base + small noise, so their task
vectors look like fine-tuning deltas. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ~110M parameters (tied embeddings): the size the README quotes.
FULL = dict(hidden_size=768, num_hidden_layers=12, intermediate_size=2048, vocab_size=32000,
            num_attention_heads=12, num_key_value_heads=12)
# --small: a quick check of the same code paths (~4M parameters).
SMALL = dict(hidden_size=256, num_hidden_layers=4, intermediate_size=688, vocab_size=4000,
             num_attention_heads=4, num_key_value_heads=4)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--small", action="store_true", help="a ~4M-parameter model: a quick check, not a figure")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (the median is reported)")
    p.add_argument("--workdir", default=None, help="where to build the checkpoints (default: a temp dir)")
    return p


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def build_models(out_dir: Path, small: bool, experts: int = 2, dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> tuple[str, list[str]]:
    """Save a base and ``experts`` fine-tune-like checkpoints; returns (base path, expert paths)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    config = LlamaConfig(**(SMALL if small else FULL), tie_word_embeddings=True,
                         max_position_embeddings=512)
    names = ["base"] + [f"expert{i}" for i in range(experts)]
    paths = [out_dir / n for n in names]
    if all((p / "config.json").exists() for p in paths):
        return str(paths[0]), [str(p) for p in paths[1:]]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(paths[0])
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, path in enumerate(paths[1:]):
        gen = torch.Generator().manual_seed(seed + 1 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen) * (0.02 * float(base[name].float().std()) + 1e-4)
                param.copy_(base[name].float() + noise)
        model.save_pretrained(path)
    del model
    return str(paths[0]), [str(p) for p in paths[1:]]


def model_bytes(slots) -> int:
    return sum(s.target.numel() * s.target.element_size() for s in slots)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def emit(**fields) -> None:
    fields.setdefault("threads", torch.get_num_threads())
    fields.setdefault("cpus", os.cpu_count())
    fields.setdefault("machine", platform.machine())
    fields.setdefault("loadavg_1min", round(os.getloadavg()[0], 2))  # other processes on the cores
    print(json.dumps(fields), flush=True)


def ended(row: list[int], eos: set[int]) -> list[int]:
    """A generated row up to and including its first EOS id (plain generate pads after it)."""
    for k, token in enumerate(row):
        if token in eos:
            return row[: k + 1]
    return row


def calibrated_eos(model, prompts, max_new_tokens: int, batch: int, share: float = 0.95) -> list[int]:
    """EOS ids for a random model: the tokens most rows of a no-EOS greedy run produce, taken
    until ``share`` of those rows end before ``max_new_tokens`` (at different lengths; the rest
    run to the limit, as a rambling answer does)."""
    from collections import Counter

    from transformers import GenerationConfig

    from evomm.generation import generate_ids

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    rows = generate_ids(model, prompts, config, batch_size=batch, fast=True)
    counts = Counter(t for row in rows for t in set(row))
    eos: list[int] = []
    for token, _ in counts.most_common():
        eos.append(token)
        if sum(any(t in eos for t in row) for row in rows) >= share * len(rows):
            break
    return eos


def mgsm_like_prompts(n: int, vocab: int = 32000, seed: int = 1) -> list[list[int]]:
    """Random token-id prompts of 60-120 tokens (an MGSM-JA prompt's length in Mistral tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(60, 121, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def compose(overrides: list[str]):
    """The real conf/ composed with overrides, as train.py does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def quiet() -> None:
    from evomm.quiet import quiet_libraries

    quiet_libraries()
