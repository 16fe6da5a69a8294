"""The modality-adapter contract.

An adapter loads the source models through the real loading code, checks that they line up,
owns one resident *target* model, and describes every mergeable tensor as a :class:`TensorSlot`.
The merge engine (``evomm.merging.engine``) only sees slots, so one engine serves every modality:

    target tensor  <-  method(base tensor, [source tensors], per-tensor parameters)

A slot's ``target`` is a view into the resident model's parameter, written in place with
``copy_`` for every candidate; ``sources`` and ``base`` are read-only tensors of the same shape.
Cross-modal name mapping (LLaVA ``model.language_model.layers.i`` <-> LLM ``model.layers.i``)
and vocabulary-row slicing happen inside the adapter when it builds the slots, nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from evomm.merging.slots import TensorSlot  # noqa: F401 - re-exported: adapters build slots


@runtime_checkable
class Adapter(Protocol):
    """What the loop, the engine and the final evaluation need from a modality."""

    name: str
    modality: str  # the handle it gives tasks: "llm", "vlm" or "sdxl" (tasks declare the one they score)
    source_names: list[str]  # model references, in recipe order
    base_name: str | None

    def groups(self) -> list[str]:
        """All parameter groups, in model order."""

    def layer_groups(self) -> list[str]:
        """The repeated blocks that `layer` granularity chunks (a subset of groups())."""

    def slots(self) -> list[TensorSlot]:
        """Every mergeable tensor. Each target tensor element is covered by exactly one slot."""

    def handle(self) -> Any:
        """What tasks evaluate: model + tokenizer, model + processor, or a pipeline."""

    def save_merged(self, out_dir: Path) -> None:
        """Write the resident target in the modality's standard format."""

    def notes(self) -> dict:
        """Facts about this merge that the recipe records (e.g. vocabulary rows kept from a VLM)."""


# What tasks receive. A task declares its modality and reads only these fields.


@dataclass
class LLMHandle:
    """A causal LM ready for generation (eval mode, on its device) and its tokenizer."""

    model: Any
    tokenizer: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class VLMHandle:
    """A LLaVA-style model ready for generation and its processor (tokenizer + image processor)."""

    model: Any
    processor: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class SDXLHandle:
    """A diffusers text-to-image pipeline whose UNet holds the current candidate."""

    pipeline: Any

    @property
    def device(self) -> torch.device:
        return self.pipeline.device
