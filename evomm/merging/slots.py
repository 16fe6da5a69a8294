"""TensorSlot: the one thing the merge engine knows about a model.

An adapter describes every mergeable tensor of its resident target model as a slot; the engine
(``evomm.merging.engine``) only sees slots, so one engine serves every modality:

    target tensor  <-  method(base tensor, [source tensors], per-tensor parameters)

A slot's ``target`` is a view into the resident model's parameter, written in place with
``copy_`` for every candidate; ``sources`` and ``base`` are read-only tensors of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TensorSlot:
    """One mergeable tensor of the target and its inputs.

    name:    canonical tensor name in the target model (what recipe filters match against).
    group:   the parameter group this tensor belongs to (``embed``, ``layers.3``, ``IN04`` ...).
    t:       position of the group in the layer stack in [0, 1]; mergekit's ``t`` for per-layer
             value lists (i/(N-1) for layer i; 0 for tensors outside the stack, as mergekit 0.1.5).
    target:  the resident tensor (or a view of it) that a candidate is written into in place.
    sources: one tensor per source model, same shape as ``target``.
    base:    the base model's tensor for task-vector methods, or None when there is no base.
    """

    name: str
    group: str
    t: float
    target: torch.Tensor
    sources: list[torch.Tensor]
    base: torch.Tensor | None = None
