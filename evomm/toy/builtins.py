"""Built-in text models: the shipped toy-world models and tiny random ones for smoke runs.

- ``toy-llm-base``, ``toy-llm-ja``, ``toy-llm-math``: the trained toy-world models shipped in
  ``evomm/toy/models/llm/`` (regenerate with ``python scripts/train_toy_llm.py``).
- ``toy-compose-base``, ``toy-compose-ja``, ``toy-compose-math``: the composition world's models,
  shipped in ``evomm/toy/models/compose/`` (``python scripts/train_compose_llm.py``).
- ``tiny-llm-base``, ``tiny-llm-a``, ``tiny-llm-b``: untrained Llama models built from a config in
  milliseconds (the experts are the base plus seeded noise, so task vectors exist).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from evomm.builtin import BUILDERS

SHIPPED = Path(__file__).parent / "models"


def _copy_shipped(relative: str, script: str = "scripts/train_toy_llm.py"):
    def build(out_dir: Path) -> None:
        src = SHIPPED / relative
        if not (src / "config.json").is_file():
            raise FileNotFoundError(
                f"the shipped toy model {src} is missing; regenerate it with python {script}"
            )
        shutil.copytree(src, out_dir, dirs_exist_ok=True)

    return build


for _name in ("base", "ja", "math"):
    BUILDERS.add(f"toy-llm-{_name}", _copy_shipped(f"llm/{_name}"))
    # the composition world (evomm/toy/compose_world.py): the default demo's models
    BUILDERS.add(f"toy-compose-{_name}", _copy_shipped(f"compose/{_name}", "scripts/train_compose_llm.py"))


def tiny_llm(seed: int, noise_from: int | None = None, noise: float = 0.02):
    """A 2-layer Llama over the toy tokenizer; ``noise_from`` adds seeded noise to that base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomm.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(noise_from if noise_from is not None else seed)
    model = LlamaForCausalLM(config)
    if noise_from is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    return model, tok


def _tiny(seed: int, noise_from: int | None = None):
    def build(out_dir: Path) -> None:
        model, tok = tiny_llm(seed, noise_from)
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)

    return build


BUILDERS.add("tiny-llm-base", _tiny(0))
BUILDERS.add("tiny-llm-a", _tiny(1, noise_from=0))
BUILDERS.add("tiny-llm-b", _tiny(2, noise_from=0))
