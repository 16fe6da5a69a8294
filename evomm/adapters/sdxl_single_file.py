"""Key conversion between diffusers' SDXL layout and the original ("single-file") SDXL layout.

A1111, ComfyUI and most model hubs share SDXL as one ``.safetensors`` file in the layout of
Stability's ``generative-models`` code. diffusers splits the same tensors into per-component
folders with different names. The mapping below is written from the two module trees:

UNet (prefix ``model.diffusion_model.``), ``L`` = layers_per_block (2 for SDXL):
    time_embedding.linear_{1,2}        <-> time_embed.{0,2}
    add_embedding.linear_{1,2}         <-> label_emb.0.{0,2}
    conv_in                            <-> input_blocks.0.0
    down_blocks.i.resnets.j            <-> input_blocks.(1 + i(L+1) + j).0     (resnet renames below)
    down_blocks.i.attentions.j         <-> input_blocks.(1 + i(L+1) + j).1     (same inner names)
    down_blocks.i.downsamplers.0.conv  <-> input_blocks.(1 + i(L+1) + L).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1 <-> middle_block.0 / .1 / .2
    up_blocks.i.resnets.j              <-> output_blocks.(i(L+1) + j).0
    up_blocks.i.attentions.j           <-> output_blocks.(i(L+1) + j).1
    up_blocks.i.upsamplers.0.conv      <-> output_blocks.(i(L+1) + L).{2 with attention, else 1}.conv
    conv_norm_out / conv_out           <-> out.0 / out.2
    resnet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut
        <-> in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection
The UNet mapping only renames keys: every tensor keeps its shape and its storage.

VAE (prefix ``first_stage_model.``): ``down_blocks.i.resnets.j`` <-> ``down.i.block.j``,
decoder ``up_blocks.i`` <-> ``up.(N-1-i)`` (the original counts decoder levels from the bottom),
``conv_shortcut`` <-> ``nin_shortcut``, ``conv_norm_out`` <-> ``norm_out``, mid ``resnets.0/1``
<-> ``block_1/2``, mid attention ``group_norm/to_q/to_k/to_v/to_out.0`` <-> ``norm/q/k/v/proj_out``
whose weights are 1x1 convolutions in the original: (C, C) <-> (C, C, 1, 1).

Text encoder 1 (CLIP ViT-L, transformers layout) sits under
``conditioner.embedders.0.transformer.text_model.`` unchanged. Text encoder 2 (OpenCLIP ViT-bigG)
sits under ``conditioner.embedders.1.model.`` in open_clip's layout: q/k/v projections stacked
into ``attn.in_proj_{weight,bias}`` (3C, C), ``text_projection`` stored transposed (C, P), and
``layer_norm1/2, mlp.fc1/fc2, final_layer_norm`` named ``ln_1/2, mlp.c_fc/c_proj, ln_final``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# diffusers ResnetBlock2D child -> original ResBlock child (UNet)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_RESNET_INV = {v: k for k, v in _UNET_RESNET.items()}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_TOP_INV = {v: k for k, v in _UNET_TOP.items()}


def _split_param(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _rename_prefix(module: str, table: dict[str, str]) -> str | None:
    """Replace the longest dotted prefix of ``module`` found in ``table``; None when none."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return ".".join([table[head], *parts[n:]])
    return None


# --------------------------------------------------------------------------------------- UNet


def unet_layers_per_block(keys) -> int:
    """layers_per_block of a diffusers UNet state dict: resnets per down block."""
    js = [int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))]
    if not js:
        raise ValueError("not a diffusers UNet state dict: no 'down_blocks.0.resnets.*' keys")
    return max(js) + 1


def unet_name_map(keys) -> dict[str, str]:
    """diffusers UNet key -> original key (without the ``model.diffusion_model.`` prefix).

    Works on names only, so it also serves parameter grouping (the MBW blocks are the
    original ``input_blocks.n`` / ``middle_block`` / ``output_blocks.n`` numbering).
    """
    keys = list(keys)
    L = unet_layers_per_block(keys)
    up_with_attn = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, str] = {}
    for key in keys:
        module, leaf = _split_param(key)
        p = module.split(".")
        new: str | None = None
        if p[0] in ("down_blocks", "up_blocks") and len(p) >= 4:
            i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
            if p[0] == "down_blocks":
                n = 1 + i * (L + 1) + (L if kind == "downsamplers" else j)
                if kind == "resnets":
                    new = f"input_blocks.{n}.0." + _resnet_child(rest, key)
                elif kind == "attentions":
                    new = ".".join([f"input_blocks.{n}.1", *rest])
                elif kind == "downsamplers" and rest == ["conv"]:
                    new = f"input_blocks.{n}.0.op"
            else:
                n = i * (L + 1) + (L if kind == "upsamplers" else j)
                if kind == "resnets":
                    new = f"output_blocks.{n}.0." + _resnet_child(rest, key)
                elif kind == "attentions":
                    new = ".".join([f"output_blocks.{n}.1", *rest])
                elif kind == "upsamplers" and rest == ["conv"]:
                    new = f"output_blocks.{n}.{2 if i in up_with_attn else 1}.conv"
        elif p[0] == "mid_block" and len(p) >= 3:
            kind, j, rest = p[1], int(p[2]), p[3:]
            if kind == "resnets" and j in (0, 1):
                new = f"middle_block.{2 * j}." + _resnet_child(rest, key)
            elif kind == "attentions" and j == 0:
                new = ".".join(["middle_block.1", *rest])
        else:
            new = _rename_prefix(module, _UNET_TOP)
        if new is None:
            raise ValueError(f"no original-layout name for UNet tensor '{key}' (not an SDXL UNet?)")
        out[key] = f"{new}.{leaf}"
    return out


def _resnet_child(rest: list[str], key: str) -> str:
    if not rest or rest[0] not in _UNET_RESNET:
        raise ValueError(f"unexpected resnet tensor '{key}'")
    return ".".join([_UNET_RESNET[rest[0]], *rest[1:]])


def unet_to_original(state_dict: dict[str, torch.Tensor], prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """diffusers UNet state dict -> original layout (same tensor objects, renamed)."""
    names = unet_name_map(state_dict)
    return {prefix + names[k]: v for k, v in state_dict.items()}


def unet_from_original(state_dict: dict[str, torch.Tensor], prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """Original-layout UNet tensors (keys under ``prefix``; others ignored) -> diffusers names."""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not sd:
        raise ValueError(f"no UNet tensors under '{prefix}'")
    # L from the first downsampler: input_blocks.(L+1).0.op
    ops = [int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))]
    if ops:
        L = min(ops) - 1
    else:  # a single-level UNet: every input block after conv_in is a layer
        L = max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, leaf = _split_param(key)
        p = module.split(".")
        new: str | None = None
        if p[0] == "input_blocks" and p[1] != "0":
            n, sub, rest = int(p[1]), int(p[2]), p[3:]
            i, j = divmod(n - 1, L + 1)
            if j == L and rest == ["op"]:
                new = f"down_blocks.{i}.downsamplers.0.conv"
            elif sub == 0:
                new = f"down_blocks.{i}.resnets.{j}." + _resnet_child_inv(rest, key)
            elif sub == 1:
                new = ".".join([f"down_blocks.{i}.attentions.{j}", *rest])
        elif p[0] == "output_blocks":
            n, sub, rest = int(p[1]), int(p[2]), p[3:]
            i, j = divmod(n, L + 1)
            if sub == 0:
                new = f"up_blocks.{i}.resnets.{j}." + _resnet_child_inv(rest, key)
            elif rest == ["conv"] and sub in (1, 2):  # an Upsample has a bare 'conv'
                new = f"up_blocks.{i}.upsamplers.0.conv"
            elif sub == 1:
                new = ".".join([f"up_blocks.{i}.attentions.{j}", *rest])
        elif p[0] == "middle_block":
            sub, rest = int(p[1]), p[2:]
            if sub in (0, 2):
                new = f"mid_block.resnets.{sub // 2}." + _resnet_child_inv(rest, key)
            elif sub == 1:
                new = ".".join(["mid_block.attentions.0", *rest])
        else:
            new = _rename_prefix(module, _UNET_TOP_INV)
        if new is None:
            raise ValueError(f"no diffusers name for original UNet tensor '{prefix}{key}'")
        out[f"{new}.{leaf}"] = value
    return out


def _resnet_child_inv(rest: list[str], key: str) -> str:
    head = ".".join(rest[:2])
    if head not in _UNET_RESNET_INV:
        raise ValueError(f"unexpected original resblock tensor '{key}'")
    return ".".join([_UNET_RESNET_INV[head], *rest[2:]])


# ---------------------------------------------------------------------------------------- VAE

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTN_INV = {v: k for k, v in _VAE_ATTN.items()}
_VAE_TOP = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
}
_VAE_TOP_INV = {v: k for k, v in _VAE_TOP.items()}
# Modules whose names are the same in both layouts.
_VAE_SAME = (
    "encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv"
)


def _vae_up_levels(keys) -> int:
    levels = [int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))]
    return max(levels) + 1


def vae_to_original(state_dict: dict[str, torch.Tensor], prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> original layout (mid-attention weights as 1x1 convs)."""
    n_up = _vae_up_levels(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, leaf = _split_param(key)
        p = module.split(".")
        new: str | None = None
        if module in _VAE_SAME:
            new = module
        elif module in _VAE_TOP:
            new = _VAE_TOP[module]
        elif len(p) >= 5 and p[1] in ("down_blocks", "up_blocks"):
            coder, i, kind, j, rest = p[0], int(p[2]), p[3], int(p[4]), p[5:]
            level = f"down.{i}" if p[1] == "down_blocks" else f"up.{n_up - 1 - i}"
            if kind == "resnets":
                new = f"{coder}.{level}.block.{j}." + ".".join(_vae_resnet(rest))
            elif kind in ("downsamplers", "upsamplers") and rest == ["conv"]:
                new = f"{coder}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.conv"
        elif len(p) >= 4 and p[1] == "mid_block":
            coder, kind, j, rest = p[0], p[2], int(p[3]), p[4:]
            if kind == "resnets":
                new = f"{coder}.mid.block_{j + 1}." + ".".join(_vae_resnet(rest))
            elif kind == "attentions" and ".".join(rest) in _VAE_ATTN:
                new = f"{coder}.mid.attn_1.{_VAE_ATTN['.'.join(rest)]}"
                if leaf == "weight" and value.ndim == 2:  # Linear (C, C) -> Conv2d 1x1 (C, C, 1, 1)
                    value = value.reshape(*value.shape, 1, 1)
        if new is None:
            raise ValueError(f"no original-layout name for VAE tensor '{key}'")
        out[f"{prefix}{new}.{leaf}"] = value
    return out


def _vae_resnet(rest: list[str]) -> list[str]:
    return ["nin_shortcut" if rest[0] == "conv_shortcut" else rest[0], *rest[1:]]


def vae_from_original(state_dict: dict[str, torch.Tensor], prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """Original-layout VAE tensors (keys under ``prefix``) -> diffusers AutoencoderKL names."""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    ups = [int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))]
    n_up = max(ups) + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, leaf = _split_param(key)
        p = module.split(".")
        new: str | None = None
        if module in _VAE_SAME:
            new = module
        elif module in _VAE_TOP_INV:
            new = _VAE_TOP_INV[module]
        elif len(p) >= 4 and p[1] in ("down", "up"):
            coder, level, kind, rest = p[0], int(p[2]), p[3], p[4:]
            blocks = f"down_blocks.{level}" if p[1] == "down" else f"up_blocks.{n_up - 1 - level}"
            if kind == "block":
                child = ["conv_shortcut" if rest[1] == "nin_shortcut" else rest[1], *rest[2:]]
                new = f"{coder}.{blocks}.resnets.{rest[0]}." + ".".join(child)
            elif kind in ("downsample", "upsample") and rest == ["conv"]:
                new = f"{coder}.{blocks}.{kind}rs.0.conv"
        elif len(p) >= 3 and p[1] == "mid":
            coder, kind, rest = p[0], p[2], p[3:]
            if kind in ("block_1", "block_2"):
                new = f"{coder}.mid_block.resnets.{int(kind[-1]) - 1}." + ".".join(rest)
            elif kind == "attn_1" and rest and rest[0] in _VAE_ATTN_INV:
                new = f"{coder}.mid_block.attentions.0.{_VAE_ATTN_INV[rest[0]]}"
                if leaf == "weight" and value.ndim == 4:  # Conv2d 1x1 -> Linear
                    value = value.reshape(value.shape[0], value.shape[1])
        if new is None:
            raise ValueError(f"no diffusers name for original VAE tensor '{prefix}{key}'")
        out[f"{new}.{leaf}"] = value
    return out


# ------------------------------------------------------------------------------ text encoders


def _strip_text_model(key: str) -> str:
    # transformers >= 5.6 flattens CLIPTextModel (no 'text_model.' level); older versions do not.
    return key[len("text_model."):] if key.startswith("text_model.") else key


def clip_l_to_original(
    state_dict: dict[str, torch.Tensor], prefix: str = CLIP_L_PREFIX
) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> ``conditioner.embedders.0.transformer.text_model.*``."""
    return {
        f"{prefix}text_model.{_strip_text_model(k)}": v
        for k, v in state_dict.items()
        if not k.endswith("position_ids")  # a buffer, rebuilt by the model
    }


def clip_l_from_original(
    state_dict: dict[str, torch.Tensor], prefix: str = CLIP_L_PREFIX, text_model_level: bool = False
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`clip_l_to_original`; ``text_model_level`` keeps the 'text_model.' level."""
    head = prefix + "text_model."
    lead = "text_model." if text_model_level else ""
    return {
        lead + k[len(head):]: v
        for k, v in state_dict.items()
        if k.startswith(head) and not k.endswith("position_ids")
    }


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_LAYER_INV = {v: k for k, v in _OPEN_CLIP_LAYER.items()}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_TOP_INV = {v: k for k, v in _OPEN_CLIP_TOP.items()}
# open_clip keeps CLIP's learned temperature next to the text tower; it does not affect the text
# features. Trained CLIP models sit at the clamp, ln(100).
_LOGIT_SCALE = math.log(100.0)


def open_clip_to_original(
    state_dict: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict -> open_clip layout under ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    any_tensor = None
    for key, value in state_dict.items():
        any_tensor = value
        if key.endswith("position_ids"):
            continue
        if key == "text_projection.weight":  # Linear (P, C) -> open_clip matrix (C, P)
            out[prefix + "text_projection"] = value.t().contiguous()
            continue
        k = _strip_text_model(key)
        if k in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[k]] = value
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m is None:
            raise ValueError(f"no open_clip name for text-encoder tensor '{key}'")
        layer, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        block = f"{prefix}transformer.resblocks.{layer}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer, leaf), {})[module[-6]] = value
        elif module in _OPEN_CLIP_LAYER:
            out[f"{block}{_OPEN_CLIP_LAYER[module]}.{leaf}"] = value
        else:
            raise ValueError(f"no open_clip name for text-encoder tensor '{key}'")
    for (layer, leaf), parts in sorted(qkv.items()):
        # q, k, v (C, C) each -> in_proj (3C, C), in that order
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    if any_tensor is not None:
        out[prefix + "logit_scale"] = torch.tensor(_LOGIT_SCALE, dtype=any_tensor.dtype, device=any_tensor.device)
    return out


def open_clip_from_original(
    state_dict: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`open_clip_to_original` (CLIPTextModelWithProjection names)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix):]
        if k == "logit_scale":
            continue
        if k == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif k in _OPEN_CLIP_TOP_INV:
            out["text_model." + _OPEN_CLIP_TOP_INV[k]] = value
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", k):
            layer, leaf = m.groups()
            q, kk, v = value.chunk(3, dim=0)  # (3C, ...) -> three (C, ...)
            for name, part in (("q", q), ("k", kk), ("v", v)):
                out[f"text_model.encoder.layers.{layer}.self_attn.{name}_proj.{leaf}"] = part
        elif (m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", k)) and (
            m.group(2) in _OPEN_CLIP_LAYER_INV
        ):
            layer, module, leaf = m.groups()
            out[f"text_model.encoder.layers.{layer}.{_OPEN_CLIP_LAYER_INV[module]}.{leaf}"] = value
        else:
            raise ValueError(f"no transformers name for open_clip tensor '{key}'")
    return out


# ------------------------------------------------------------------------------- whole model


def pipeline_to_original(pipeline: Any) -> dict[str, torch.Tensor]:
    """All of an SDXL pipeline's weights (UNet, VAE, both text encoders) in the original layout.

    Text encoders are included when present (a refiner-style pipeline without ``text_encoder``
    exports the rest). Tensors are moved to the CPU and made contiguous for safetensors.
    """
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_original(pipeline.unet.state_dict()))
    sd.update(vae_to_original(pipeline.vae.state_dict()))
    if getattr(pipeline, "text_encoder", None) is not None:
        sd.update(clip_l_to_original(pipeline.text_encoder.state_dict()))
    if getattr(pipeline, "text_encoder_2", None) is not None:
        sd.update(open_clip_to_original(pipeline.text_encoder_2.state_dict()))
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_single_file(pipeline: Any, path: str | Path) -> Path:
    """Write ``pipeline`` as one original-layout ``.safetensors`` file (A1111 / ComfyUI)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = pipeline_to_original(pipeline)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
