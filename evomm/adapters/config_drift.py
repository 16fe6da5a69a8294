"""Config fields that change what the weights mean, compared across the sources of a merge.

Two checkpoints of the same shapes can still disagree on how their weights are used: a RoPE base
of 1e4 vs 1e6, a sliding window vs full attention, another norm epsilon or activation. Merging
them is allowed (the paper's EvoVLM-JP pairs LLaVA-1.6-Mistral with Shisa Gamma, which differ in
this way), but it must not pass in silence: the run warns once and the recipe's notes (and so the
model card) record the differences. The merged model keeps the first source's config.
"""

from __future__ import annotations

import sys
from typing import Any

# Fields whose value changes what a given weight does (not the shapes: those are checked apart).
MEANING_FIELDS = (
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "sliding_window",
    "use_sliding_window", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "hidden_act",
    "tie_word_embeddings", "max_position_embeddings", "attention_bias", "mlp_bias",
)

_warned: set[str] = set()


def _plain(value: Any) -> Any:
    """A YAML-safe copy of a config value (rope dicts, numbers, strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_differences(refs: list[str], configs: list[Any]) -> dict[str, dict[str, Any]]:
    """``{field: {ref: value}}`` for every meaning field on which the configs disagree."""
    found: dict[str, dict[str, Any]] = {}
    for name in MEANING_FIELDS:
        values = [_plain(getattr(cfg, name, None)) for cfg in configs]
        if any(v != values[0] for v in values[1:]):
            found[name] = dict(zip(refs, values))
    return found


def warn_differences(differences: dict[str, dict[str, Any]]) -> None:
    """One line on stderr, once per distinct set of differences in a process."""
    if not differences:
        return
    parts = [f"{name} ({', '.join(f'{ref}: {v}' for ref, v in per_ref.items())})" for name, per_ref in differences.items()]
    message = (
        "evomm: warning: the sources differ in config fields that change what their weights mean: "
        + "; ".join(parts) + ". The merge goes on with the first source's config; the recipe notes "
        "(config_differences) and the model card record it."
    )
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)
