"""SDXL modality adapter: UNets merged, text encoders and VAE from one chosen source.

Sources are diffusers pipeline folders or hub ids (``StableDiffusionXLPipeline`` layout), UNet-only
folders/repos (a ``unet/`` subfolder without ``model_index.json``, like SDXL-DPO), or single-file
``.safetensors`` checkpoints in the original SDXL layout (loaded with diffusers' ``from_single_file``;
``single_file_config`` points it at a diffusers folder or hub id for the component configs, which
keeps it offline). A LoRA (for example SDXL-Lightning) can be fused into any source before merging.
``timestep_spacing`` rebuilds the resident scheduler with that spacing (SDXL-Lightning wants
"trailing"); ``trust_remote_code`` lets a pipeline repository's own component code load (opt-in).

One pipeline is resident: the ``components_from`` source's, moved to ``device`` in ``dtype``.
Its UNet parameters are the merge targets, written in place for every candidate; the source and
base tensors stay on the CPU in the storage dtype. With ``merge_text_encoders`` the two text
encoders become the extra groups ``TE1``/``TE2``; otherwise they (and the VAE) stay the
``components_from`` source's.

Cheap checks come first: options, then every source's UNet tensor names and shapes read from
``unet/config.json`` (built on the meta device) or from a single file's safetensors header.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from evomm.adapters.base import SDXLHandle, TensorSlot
from evomm.adapters.loading import (
    check_ref, compare_shapes, pick_device, portable_name_or_path, resolve_ref, torch_dtype,
)
from evomm.adapters.sdxl_blocks import GROUPINGS, group_unet
from evomm.adapters.sdxl_single_file import UNET_PREFIX, save_single_file, unet_from_original
from evomm.errors import ConfigError, ModelLoadError

TEXT_ENCODER_GROUPS = {"text_encoder": "TE1", "text_encoder_2": "TE2"}


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); pass what it expects."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present once renamed
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_single_file(ref: str) -> bool:
    return ref.endswith((".safetensors", ".ckpt"))


def _unet_subfolder(ref: str) -> str | None:
    """'unet' for a pipeline / UNet-only repo layout, None for a bare UNet folder."""
    path = Path(ref)
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():
            return "unet"
        if (path / "config.json").is_file():
            return None
        raise ModelLoadError(
            f"'{ref}' is a folder without unet/config.json or config.json; give a diffusers SDXL "
            "pipeline folder, a UNet folder, or a single-file .safetensors checkpoint"
        )
    return "unet"  # a hub id: the standard pipeline layout


def _has_pipeline(ref: str) -> bool:
    path = Path(ref)
    return _is_single_file(ref) or not path.is_dir() or (path / "model_index.json").is_file()


def unet_shapes(ref: str) -> dict[str, tuple[int, ...]]:
    """diffusers UNet tensor name -> shape, without loading weights (raises ModelLoadError)."""
    from diffusers import UNet2DConditionModel

    if _is_single_file(ref):
        if not Path(ref).is_file():
            raise ModelLoadError(f"single-file checkpoint '{ref}' does not exist; check the path")
        if not ref.endswith(".safetensors"):
            raise ModelLoadError(f"'{ref}' is a pickled .ckpt; convert it to .safetensors first")
        from safetensors import safe_open

        try:
            with safe_open(ref, framework="pt") as f:
                header = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(UNET_PREFIX)}
            return unet_from_original(header)
        except Exception as e:  # noqa: BLE001 - any failure means the file is not an SDXL checkpoint
            raise ModelLoadError(f"cannot read SDXL UNet tensors from '{ref}': {_first_line(e)}") from e
    try:
        config = UNet2DConditionModel.load_config(ref, subfolder=_unet_subfolder(ref))
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - hub errors, bad JSON, wrong class: all unloadable refs
        raise ModelLoadError(
            f"cannot load the SDXL UNet config of '{ref}': {_first_line(e)}. Give a hub id or folder in diffusers "
            "layout (unet/config.json) or a single-file .safetensors checkpoint"
        ) from e
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def _split_lora_ref(ref: str) -> tuple[str, dict[str, str]]:
    """'owner/repo/file.safetensors' -> ('owner/repo', {weight_name: file}); local paths unchanged."""
    if Path(ref).exists():
        return ref, {}
    parts = ref.split("/")
    if len(parts) >= 3 and parts[-1].endswith(".safetensors"):
        return "/".join(parts[:2]), {"weight_name": "/".join(parts[2:])}
    return ref, {}


def _lora_by_index(lora: dict | None, n_models: int) -> dict[int, str]:
    """``adapter.lora`` ({source index: LoRA file, folder or hub id}), checked."""
    out: dict[int, str] = {}
    for key, path in dict(lora or {}).items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"adapter.lora keys are source indices; got '{key}'") from None
        if not 0 <= index < n_models:
            raise ConfigError(f"adapter.lora index {index} is out of range for {n_models} models")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"adapter.lora[{index}] must be a LoRA file, folder or hub id")
        out[index] = path
    return out


class SDXLAdapter:
    """Merge SDXL UNets (and optionally text encoders); see the module docstring."""

    name = "sdxl"
    modality = "sdxl"  # SDXLHandle

    def __init__(
        self,
        models: list[str],
        base: str | None = None,
        grouping: str = "mbw",
        components_from: int = 0,
        merge_text_encoders: bool = False,
        lora: dict[int, str] | None = None,
        lora_scale: float = 1.0,
        dtype: str = "float32",
        device: str = "auto",
        single_file_config: str | None = None,
        timestep_spacing: str | None = None,
        trust_remote_code: bool = False,
    ):
        # -- options (no I/O) --------------------------------------------------------------
        if not models or isinstance(models, str) or not all(isinstance(m, str) for m in models):
            raise ConfigError("adapter.models must be a non-empty list of SDXL model ids or paths")
        if grouping not in GROUPINGS:
            raise ConfigError(f"adapter.grouping '{grouping}' is unknown; choose one of {', '.join(GROUPINGS)}")
        if not isinstance(components_from, int) or not 0 <= components_from < len(models):
            raise ConfigError(
                f"adapter.components_from must be a source index in 0..{len(models) - 1}, got {components_from!r}"
            )
        for ref in models:
            check_ref(ref)
        if base is not None:
            check_ref(base, "base model")
        self.lora = _lora_by_index(lora, len(models))
        self.grouping = grouping
        self.components_from = components_from
        self.merge_text_encoders = bool(merge_text_encoders)
        self.lora_scale = float(lora_scale)
        self.trust_remote_code = bool(trust_remote_code)
        self.dtype = torch_dtype(dtype)
        self.device = pick_device(device)
        self.single_file_config = resolve_ref(single_file_config) if single_file_config else None
        self.source_names = [resolve_ref(m) for m in models]
        self.base_name = resolve_ref(base) if base else None

        refs = self.source_names + ([self.base_name] if self.base_name else [])
        self._check_compatible(refs, components_from)
        self._load_all(refs, components_from)
        pipe = self.pipeline
        if timestep_spacing:
            scheduler_class = type(pipe.scheduler)
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, timestep_spacing=timestep_spacing)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._unet_groups = group_unet([n for n, _ in pipe.unet.named_parameters()], grouping)
        self._slots: list[TensorSlot] | None = None

    def _check_compatible(self, refs: list[str], components_from: int) -> None:
        """Compatibility from configs / headers, before any weight is read."""
        shapes = [unet_shapes(r) for r in refs]
        for ref, other in zip(refs[1:], shapes[1:]):
            compare_shapes(refs[0], shapes[0], ref, other)
        if self.merge_text_encoders:
            for ref in refs:
                if not _has_pipeline(ref):
                    raise ConfigError(
                        f"'{ref}' has no text encoders (UNet only); set adapter.merge_text_encoders=false "
                        "or give full SDXL pipelines"
                    )
        if not _has_pipeline(self.source_names[components_from]):
            raise ConfigError(
                f"adapter.components_from={components_from} names '{self.source_names[components_from]}', "
                "which has no text encoders / VAE; point it at a full SDXL pipeline"
            )


    def _load_all(self, refs: list[str], components_from: int) -> None:
        """Sources' (and the base's) tensors to CPU; one pipeline stays resident."""
        self._sources: list[dict[str, dict[str, torch.Tensor]]] = []
        self.pipeline: Any = None
        for i, ref in enumerate(self.source_names):
            keep = i == components_from
            need_pipeline = keep or self.merge_text_encoders or i in self.lora
            tensors, pipe = self._load(ref, self.lora.get(i), need_pipeline)
            self._sources.append(tensors)
            if keep:
                self.pipeline = pipe
            del pipe
            gc.collect()
        self._base: dict[str, dict[str, torch.Tensor]] | None = None
        if self.base_name:
            # A base that is also a source (without LoRA) shares that source's read-only tensors.
            same = [i for i, r in enumerate(self.source_names) if r == self.base_name and i not in self.lora]
            if same:
                self._base = self._sources[same[0]]
            else:
                self._base, _ = self._load(self.base_name, None, need_pipeline=self.merge_text_encoders)
        if self.merge_text_encoders:
            for component in TEXT_ENCODER_GROUPS:
                reference = {k: tuple(v.shape) for k, v in self._sources[0][component].items()}
                for ref, t in zip(refs[1:], self._sources[1:] + ([self._base] if self._base else [])):
                    shapes = {k: tuple(v.shape) for k, v in t[component].items()}
                    compare_shapes(f"{refs[0]} {component}", reference, f"{ref} {component}", shapes)


    # ------------------------------------------------------------------------------ loading

    def _load(self, ref: str, lora: str | None, need_pipeline: bool):
        """CPU copies of a source's tensors ({'unet': ..., 'text_encoder': ..., ...}) and its pipeline."""
        try:
            if need_pipeline:
                pipe = self._load_pipeline(ref)
                if lora:
                    self._fuse_lora(pipe, lora)
                unet = pipe.unet
            else:
                pipe, unet = None, self._load_unet(ref)
        except (ModelLoadError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - report which model failed and why, on one line
            raise ModelLoadError(f"cannot load SDXL model '{ref}': {_first_line(e)}") from e
        tensors = {"unet": self._cpu_copy(unet)}
        if need_pipeline and self.merge_text_encoders:
            for component in TEXT_ENCODER_GROUPS:
                tensors[component] = self._cpu_copy(getattr(pipe, component))
        return tensors, pipe

    def _cpu_copy(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        # copy=True: the resident pipeline's own parameters are overwritten by candidates later
        return {n: p.detach().to(device="cpu", dtype=self.dtype, copy=True) for n, p in module.named_parameters()}

    def _load_pipeline(self, ref: str):
        from diffusers import StableDiffusionXLPipeline

        if _is_single_file(ref):
            kwargs = {"config": self.single_file_config} if self.single_file_config else {}
            return StableDiffusionXLPipeline.from_single_file(ref, **_dtype_kwargs(self.dtype), **kwargs)
        extra = {"trust_remote_code": True} if self.trust_remote_code else {}
        return StableDiffusionXLPipeline.from_pretrained(ref, **_dtype_kwargs(self.dtype), **extra)

    def _load_unet(self, ref: str):
        from diffusers import UNet2DConditionModel

        if _is_single_file(ref):
            kwargs = {"config": self.single_file_config, "subfolder": "unet"} if self.single_file_config else {}
            return UNet2DConditionModel.from_single_file(ref, **_dtype_kwargs(self.dtype), **kwargs)
        return UNet2DConditionModel.from_pretrained(
            ref, subfolder=_unet_subfolder(ref), **_dtype_kwargs(self.dtype)
        )

    def _fuse_lora(self, pipe, lora: str) -> None:
        path, kwargs = _split_lora_ref(resolve_ref(lora))
        try:
            pipe.load_lora_weights(path, adapter_name="evomm_fused", **kwargs)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"cannot load LoRA '{lora}': {_first_line(e)}. Give a LoRA .safetensors file, a folder, "
                "a hub id, or 'owner/repo/file.safetensors'"
            ) from e
        pipe.fuse_lora(lora_scale=self.lora_scale, adapter_names=["evomm_fused"])
        pipe.unload_lora_weights()  # drops the LoRA layers, keeps the fused weights

    # ------------------------------------------------------------------------------ protocol

    def groups(self) -> list[str]:
        te = list(TEXT_ENCODER_GROUPS.values()) if self.merge_text_encoders else []
        return te + self._unet_groups.groups

    def layer_groups(self) -> list[str]:
        return list(self._unet_groups.layer_groups)

    def slots(self) -> list[TensorSlot]:
        if self._slots is None:
            slots = []
            for component, group in TEXT_ENCODER_GROUPS.items() if self.merge_text_encoders else ():
                for name, param in getattr(self.pipeline, component).named_parameters():
                    slots.append(self._slot(component, name, f"{component}.{name}", group, 0.0, param))
            g = self._unet_groups
            for name, param in self.pipeline.unet.named_parameters():
                slots.append(self._slot("unet", name, name, g.group_of[name], g.t_of[name], param))
            self._slots = slots
        return self._slots

    def _slot(self, component: str, key: str, name: str, group: str, t: float, param) -> TensorSlot:
        return TensorSlot(
            name=name,
            group=group,
            t=t,
            target=param.data,
            sources=[s[component][key] for s in self._sources],
            base=self._base[component][key] if self._base is not None else None,
        )

    def notes(self) -> dict:
        """Facts for the recipe: where the text encoders, VAE and tokenizers come from."""
        return {"components_from": self.source_names[self.components_from]}

    def handle(self) -> SDXLHandle:
        return SDXLHandle(self.pipeline)

    def save_merged(self, out_dir: Path) -> None:
        """diffusers folder (save_pretrained) plus ``<out_dir>/<out_dir name>.safetensors``.

        The single file holds UNet, VAE and both text encoders in the original SDXL layout
        (``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.{0,1}.*``).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline.save_pretrained(str(out_dir), safe_serialization=True)
        portable_name_or_path(out_dir)
        save_single_file(self.pipeline, single_file_path(out_dir))


def single_file_path(out_dir: Path) -> Path:
    """Where :meth:`SDXLAdapter.save_merged` puts the single-file checkpoint."""
    out_dir = Path(out_dir)
    return out_dir / f"{out_dir.name}.safetensors"
