"""A decoder LLM's tensor names and sizes, read without torch (``evomm merge`` streams by them).

Parameter groups follow the decoder stack: ``embed``, ``layers.0`` ... ``layers.N-1``, ``norm``,
``head`` (and ``other`` for anything else a model family adds outside its layers).
"""

from __future__ import annotations

import re

from evomm.errors import IncompatibleModelsError

__all__ = ["SIZE_KEYS", "check_sizes", "group_t", "llm_group"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def llm_group(name: str) -> str:
    """The parameter group of a causal-LM tensor name."""
    m = _LAYER.search(name)
    if m:
        return f"layers.{m.group(1)}"
    if "embed" in name:
        return "embed"
    if name.startswith("lm_head") or name.startswith("head"):
        return "head"
    if "norm" in name:
        return "norm"
    return "other"


def group_t(group: str, n_layers: int) -> float:
    """mergekit's layer position for per-layer value lists: i/(N-1) inside the stack.

    mergekit 0.1.5 reads tensors outside the stack (embeddings, final norm, head) at t = 0;
    the compatibility tests check this against mergekit itself.
    """
    if group.startswith("layers."):
        i = int(group.split(".")[1])
        return i / (n_layers - 1) if n_layers > 1 else 1.0
    return 0.0


# The config fields that decide whether two checkpoints can be merged tensor for tensor.
SIZE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
             "num_attention_heads", "num_key_value_heads", "vocab_size")


def check_sizes(refs: list[str], fields: list[dict]) -> None:
    """Refuse checkpoints of different architectures or sizes, from their config.json fields
    (``evomm merge`` reads them as JSON, without transformers)."""
    ref0, cfg0 = refs[0], fields[0]
    for ref, cfg in zip(refs[1:], fields[1:]):
        diffs = [f"{k}: {cfg0.get(k)} vs {cfg.get(k)}" for k in SIZE_KEYS if cfg0.get(k) != cfg.get(k)]
        if diffs:
            raise IncompatibleModelsError(
                f"'{ref}' does not match '{ref0}' ({'; '.join(diffs)}). "
                "Merge models of the same architecture and size."
            )
