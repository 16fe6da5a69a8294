"""Text-LLM adapter: decoder-only causal LMs of one architecture (Llama, Mistral, Qwen2, ...).

Parameter groups follow the decoder stack: ``embed``, ``layers.0`` ... ``layers.N-1``, ``norm``,
``head`` (and ``other`` for anything else a model family adds outside its layers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomm.adapters.base import LLMHandle, TensorSlot
from evomm.adapters.config_drift import config_differences, warn_differences
from evomm.adapters.loading import (
    check_ref,
    compare_shapes,
    load_or_explain,
    pick_device,
    resolve_ref,
    torch_dtype,
)
from evomm.adapters.llm_names import SIZE_KEYS, check_sizes, group_t, llm_group
from evomm.errors import ConfigError, ModelLoadError

def load_config(ref: str):
    from transformers import AutoConfig

    return load_or_explain(ref, lambda r: AutoConfig.from_pretrained(r), "model config")


def check_llm_configs(refs: list[str]) -> list:
    """Refuse models of different architectures or sizes before any weights load; their configs."""
    configs = [load_config(r) for r in refs]
    check_sizes(refs, [{k: getattr(c, k, None) for k in SIZE_KEYS} for c in configs])
    return configs


class LLMAdapter:
    name = "llm"
    modality = "llm"  # the handle it gives tasks (evomm.adapters.base.LLMHandle)

    def __init__(
        self,
        models: list[str],
        base: str | None = None,
        dtype: str = "float32",
        device: str = "auto",
        tokenizer_from: int = 0,
        require_tokenizer: bool = True,
        device_map: str | dict | None = None,
    ):
        if not models:
            raise ConfigError("adapter.models is empty: list the hub ids or paths of the models to merge")
        for ref in models:
            check_ref(ref)
        if base is not None:
            check_ref(base, "base model")
        if not 0 <= tokenizer_from < len(models):
            raise ConfigError(f"adapter.tokenizer_from must index adapter.models (0..{len(models) - 1})")
        self.source_names = [resolve_ref(r) for r in models]
        self.base_name = resolve_ref(base) if base is not None else None
        self.dtype = torch_dtype(dtype)
        self.device = pick_device(device)
        refs = self.source_names + ([self.base_name] if self.base_name else [])
        shown = list(models) + ([base] if base is not None else [])  # names as the user wrote them
        self._config_differences = config_differences(shown, check_llm_configs(refs))
        warn_differences(self._config_differences)

        self._load_target(device_map)
        self.tokenizer = self._load_tokenizer(tokenizer_from, require_tokenizer)
        self._build_slots()

    def _load(self, ref: str, **kwargs):
        from transformers import AutoModelForCausalLM

        return load_or_explain(ref, lambda r: AutoModelForCausalLM.from_pretrained(r, dtype=self.dtype, **kwargs), "model")

    def _load_target(self, device_map: str | dict | None) -> None:
        """The resident target: a real model object whose parameters every candidate overwrites.

        device_map (e.g. "auto") lets accelerate spread a target too big for one GPU over the
        visible GPUs; the engine then merges each tensor on the GPU that holds it. Offloading to
        CPU or disk is not supported: offloaded weights are not written in place.
        """
        if device_map is None:
            self.model = self._load(self.source_names[0]).to(self.device).eval()
            return
        self.model = self._load(self.source_names[0], device_map=device_map).eval()
        if any(p.device.type == "meta" for p in self.model.parameters()):
            raise ConfigError(
                "adapter.device_map offloaded part of the model to CPU or disk; the merge needs every "
                "weight in GPU memory: add GPUs, lower adapter.dtype, or set a max_memory-aware device_map"
            )

    def _load_tokenizer(self, tokenizer_from: int, require_tokenizer: bool):
        from transformers import AutoTokenizer

        try:
            tokenizer = load_or_explain(self.source_names[tokenizer_from], AutoTokenizer.from_pretrained, "tokenizer")
        except ModelLoadError:
            if require_tokenizer:  # a weights-only merge (evomm merge) needs no tokenizer; a search does
                raise
            return None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _build_slots(self) -> None:
        """One slot per parameter; sources (and base) stay on the CPU as plain tensors in storage dtype."""
        target_params = dict(self.model.named_parameters())
        shapes = {k: v.shape for k, v in target_params.items()}

        def tensors_of(ref: str) -> dict[str, torch.Tensor]:
            if ref == self.source_names[0]:
                return {k: v.detach().to("cpu", copy=True) for k, v in target_params.items()}
            out = {k: v.detach() for k, v in self._load(ref).named_parameters()}  # the module is dropped
            compare_shapes(self.source_names[0], shapes, ref, {k: v.shape for k, v in out.items()})
            return out

        sources = [tensors_of(r) for r in self.source_names]
        base_tensors = tensors_of(self.base_name) if self.base_name else None
        n_layers = int(self.model.config.num_hidden_layers)
        self._slots = [
            TensorSlot(
                name=name,
                group=llm_group(name),
                t=group_t(llm_group(name), n_layers),
                target=param.data,
                sources=[s[name] for s in sources],
                base=None if base_tensors is None else base_tensors[name],
            )
            for name, param in target_params.items()
        ]
        present = {s.group for s in self._slots}
        layers = [f"layers.{i}" for i in range(n_layers) if f"layers.{i}" in present]
        self._groups = [g for g in ("embed",) if g in present] + layers + [
            g for g in ("norm", "head", "other") if g in present
        ]
        self._layer_groups = layers

    def groups(self) -> list[str]:
        return list(self._groups)

    def layer_groups(self) -> list[str]:
        return list(self._layer_groups)

    def slots(self) -> list[TensorSlot]:
        return self._slots

    def notes(self) -> dict:
        """Config fields on which the sources disagree (the merged model keeps the first's)."""
        return {"config_differences": self._config_differences} if self._config_differences else {}

    def handle(self) -> LLMHandle:
        return LLMHandle(self.model, self.tokenizer)

    def save_merged(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)
