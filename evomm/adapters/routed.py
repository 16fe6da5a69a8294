"""Data-flow-space adapter: route hidden states through the layers of several models.

Model A is the resident target of an ordinary adapter (``llm`` or ``vlm``): for DFS it is simply
the first model; for PS+DFS it is a parameter-space merge written into that target once. The
other *route models* (model B, ...) are loaded as modules. A :class:`RoutedCausalLM` shares
every parameter tensor with these models and is re-routed for every candidate, so a candidate
costs no weight copy at all.

A routed recipe is an ordinary recipe (how to build model A from its sources) plus
``recipe.route``: the route models and the evolved path (``evomm.recipe.route.Route``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomm.adapters.base import LLMHandle, VLMHandle
from evomm.adapters.loading import check_ref, load_or_explain, resolve_ref
from evomm.errors import ConfigError
from evomm.merging.dfs import RoutedCausalLM, check_routable, find_decoder_stack, save_routed
from evomm.recipe.route import Route, route_of
from evomm.merging.engine import materialize, write_source
from evomm.recipe.recipe import Recipe


class RoutedAdapter:
    def __init__(self, inner: Any, route_models: list[str], ps_recipe: Recipe | None = None):
        if getattr(inner, "modality", None) not in ("llm", "vlm"):
            raise ConfigError(f"routing needs a decoder stack: the {inner.name} adapter has none; use llm or vlm")
        if not route_models:
            raise ConfigError("routing needs at least one model besides model A: list model B in adapter.models")
        for ref in route_models:
            check_ref(ref)
        self.inner = inner
        self.name, self.modality = inner.name, inner.modality
        self.route_models = [resolve_ref(r) for r in route_models]
        self._ps_applied: Any = None
        if ps_recipe is not None:
            self._apply_ps(ps_recipe)

        from transformers import AutoModelForCausalLM

        model_a = inner.model
        dtype, device = next(model_a.parameters()).dtype, next(model_a.parameters()).device
        others = [
            load_or_explain(r, lambda ref: AutoModelForCausalLM.from_pretrained(ref, dtype=dtype), "route model")
            .to(device)
            .eval()
            for r in self.route_models
        ]
        check_routable([model_a, *others])
        self.layer_counts = [len(find_decoder_stack(m).layers) for m in (model_a, *others)]
        self.routed = RoutedCausalLM([model_a, *others], source_names=["A", *self.route_models])
        self.route = Route.model_a(self.layer_counts[0], source_names=["A", *self.route_models])

    # ---- the same surface as the inner adapter ----------------------------------------------
    @property
    def source_names(self) -> list[str]:
        return self.inner.source_names

    @property
    def base_name(self) -> str | None:
        return self.inner.base_name

    def groups(self) -> list[str]:
        return self.inner.groups()

    def layer_groups(self) -> list[str]:
        return self.inner.layer_groups()

    def slots(self):
        return self.inner.slots()

    def notes(self) -> dict:
        return self.inner.notes()

    def _apply_ps(self, recipe: Recipe) -> None:
        """Write model A's parameter-space merge, skipping it when it is already there."""
        key = (recipe.method, repr(recipe.entries), repr(recipe.method_params), recipe.seed)
        if key != self._ps_applied:
            materialize(self.inner.slots(), recipe)
            self._ps_applied = key

    def show_source(self, index: int | None) -> None:
        """Model A becomes source ``index`` of its own sources (None: the base), routed alone."""
        write_source(self.inner.slots(), index)
        self._ps_applied = None
        self.route = Route.model_a(self.layer_counts[0])
        self.routed.set_route(self.route)

    def standalone(self) -> list[tuple[str, Any]]:
        """The route models on their own, for the final table (text route models only)."""
        if self.name != "llm":
            return []
        from transformers import AutoTokenizer

        handles = []
        for ref, model in zip(self.route_models, self.routed.sources[1:]):
            tokenizer = load_or_explain(ref, AutoTokenizer.from_pretrained, "tokenizer")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            handles.append((ref, LLMHandle(model, tokenizer)))
        return handles

    def apply(self, recipe: Recipe) -> None:
        """Model A from the recipe's parameter-space part, then the recipe's route (or A alone)."""
        self._apply_ps(recipe)
        self.route = route_of(recipe) if recipe.route else Route.model_a(self.layer_counts[0])
        self.routed.set_route(self.route)

    def handle(self):
        inner = self.inner.handle()
        if isinstance(inner, VLMHandle):
            return VLMHandle(self.routed.lm, inner.processor)
        return LLMHandle(self.routed.lm, inner.tokenizer)

    def save_merged(self, out_dir: Path) -> None:
        inner = self.inner.handle()
        tokenizer = getattr(inner, "tokenizer", None) or getattr(inner, "processor", None)
        save_routed(self.routed, self.route, Path(out_dir), tokenizer=tokenizer)
