"""Parameter groups of the SDXL UNet at three granularities.

``mbw``        supermerger's Merge Block Weighted blocks for SDXL: BASE (time and size
               embeddings), IN00-IN08 (the original ``input_blocks.n``), M00 (``middle_block``),
               OUT00-OUT08 (``output_blocks.n``; ``conv_norm_out``/``conv_out`` go with OUT08).
               The block of a tensor is read off its original single-file name, so this file and
               the single-file converter agree by construction.
``diffusers``  the finer diffusers modules: ``conv_in``, ``time_embedding``, ``add_embedding``,
               ``down_blocks.i.{resnets,attentions,downsamplers}.j``, ``mid_block.{resnets,attentions}.j``,
               ``up_blocks.i.{resnets,attentions,upsamplers}.j``, ``conv_norm_out``, ``conv_out``
               (37 groups for SDXL).
``attn_split`` attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) vs everything else,
               the split of EvoSDXL-JP's published rebuild script (its "attn" and "conv" sets).

Groups are listed non-layer groups first, then the layer groups in data-flow order. ``t`` (the
position used to interpolate per-layer value lists) is the group's index among the layer groups
over (count - 1); non-layer groups get 0. For ``attn_split`` both groups are layer groups, so the
search's ``layer`` granularity gives EvoSDXL-JP's two units (attention / the rest); there ``t``
is the position of the tensor's MBW block, so depth-dependent value lists still follow depth.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from evomm.adapters.sdxl_single_file import unet_name_map

GROUPINGS = ("mbw", "diffusers", "attn_split")
BASE = "BASE"
ATTN_GROUP = "attn"
OTHER_GROUP = "other"
_ATTN_MODULES = ("to_q", "to_k", "to_v")
# diffusers modules that are not part of the down -> mid -> up flow
_DIFFUSERS_NON_LAYER = ("time_embedding", "add_embedding")


@dataclass(frozen=True)
class UNetGroups:
    """The grouping of one UNet's tensors."""

    groups: list[str]  # every group, non-layer ones first, then data-flow order
    layer_groups: list[str]  # the blocks that `layer` granularity chunks
    group_of: dict[str, str]  # tensor name -> group
    t_of: dict[str, float]  # tensor name -> position in [0, 1]


def mbw_block(original_name: str, last_out: int) -> str:
    """MBW block of an original-layout UNet key (without the ``model.diffusion_model.`` prefix)."""
    head, _, rest = original_name.partition(".")
    if head in ("time_embed", "label_emb"):
        return BASE
    if head == "input_blocks":
        return f"IN{int(rest.split('.')[0]):02d}"
    if head == "middle_block":
        return "M00"
    if head == "output_blocks":
        return f"OUT{int(rest.split('.')[0]):02d}"
    if head == "out":  # final norm + conv: supermerger counts them in the last OUT block
        return f"OUT{last_out:02d}"
    return BASE


def mbw_blocks(n_in: int, n_out: int) -> list[str]:
    """The layer blocks in order: IN00.., M00, OUT00.. (SDXL: 9 + 1 + 9 = 19)."""
    return [f"IN{i:02d}" for i in range(n_in)] + ["M00"] + [f"OUT{i:02d}" for i in range(n_out)]


def diffusers_group(name: str) -> str:
    """The diffusers module group of a UNet tensor name."""
    p = name.split(".")
    if p[0] in ("down_blocks", "up_blocks"):
        return ".".join(p[:4])
    if p[0] == "mid_block":
        return ".".join(p[:3])
    return p[0]


def is_attention_projection(name: str) -> bool:
    """True for attention q/k/v/out projections (EvoSDXL-JP's 'attn' set)."""
    parts = name.split(".")
    return any(m in parts for m in _ATTN_MODULES) or ".to_out.0." in f".{name}"


def _diffusers_order(group: str) -> tuple:
    p = group.split(".")
    kind_rank = {"resnets": 0, "attentions": 1}
    if p[0] == "conv_in":
        return (0,)
    if p[0] in ("down_blocks", "up_blocks"):
        stage = 1 if p[0] == "down_blocks" else 3
        if p[2] in ("downsamplers", "upsamplers"):
            return (stage, int(p[1]), math.inf, 0)
        return (stage, int(p[1]), int(p[3]), kind_rank[p[2]])
    if p[0] == "mid_block":
        return (2, 0, int(p[2]), kind_rank[p[1]])
    if p[0] == "conv_norm_out":
        return (4,)
    if p[0] == "conv_out":
        return (5,)
    raise ValueError(f"unknown UNet module group '{group}'")


def _positions(layer_groups: list[str]) -> dict[str, float]:
    n = len(layer_groups)
    return {g: (i / (n - 1) if n > 1 else 0.0) for i, g in enumerate(layer_groups)}


def group_unet(names: Iterable[str], grouping: str = "mbw") -> UNetGroups:
    """Assign every UNet tensor (diffusers names) to exactly one group of ``grouping``."""
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping '{grouping}'; choose one of {', '.join(GROUPINGS)}")
    names = list(names)
    original = unet_name_map(names)
    outs = [int(m.group(1)) for o in original.values() if (m := re.match(r"output_blocks\.(\d+)\.", o))]
    ins = [int(m.group(1)) for o in original.values() if (m := re.match(r"input_blocks\.(\d+)\.", o))]
    last_out = max(outs)
    mbw_of = {n: mbw_block(original[n], last_out) for n in names}
    mbw_layers = mbw_blocks(max(ins) + 1, last_out + 1)
    mbw_t = {**_positions(mbw_layers), BASE: 0.0}

    if grouping == "mbw":
        present = set(mbw_of.values())
        layers = [b for b in mbw_layers if b in present]
        groups = ([BASE] if BASE in present else []) + layers
        return UNetGroups(groups, layers, mbw_of, {n: mbw_t[g] for n, g in mbw_of.items()})

    if grouping == "diffusers":
        group_of = {n: diffusers_group(n) for n in names}
        present = list(dict.fromkeys(group_of.values()))
        non_layer = [g for g in present if g in _DIFFUSERS_NON_LAYER]
        layers = sorted((g for g in present if g not in _DIFFUSERS_NON_LAYER), key=_diffusers_order)
        pos = {**_positions(layers), **{g: 0.0 for g in non_layer}}
        return UNetGroups(non_layer + layers, layers, group_of, {n: pos[g] for n, g in group_of.items()})

    group_of = {n: (ATTN_GROUP if is_attention_projection(n) else OTHER_GROUP) for n in names}
    groups = [g for g in (ATTN_GROUP, OTHER_GROUP) if g in set(group_of.values())]
    return UNetGroups(groups, list(groups), group_of, {n: mbw_t[mbw_of[n]] for n in names})
