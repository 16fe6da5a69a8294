"""Data-flow-space (DFS) merging: route the hidden state through the layers of several models.

Sakana's EvoLLM-JP DFS keeps every weight as it is and evolves the *path* a token's hidden state
takes through the decoder layers of M source models (M = 2 in the paper, 32 layers each).

The route itself (steps, scales, the search vector that encodes it) is plain data in
``evomm.recipe.route``; this module runs it.

The routed model (:class:`RoutedCausalLM`) is an ordinary instance of model A's class (e.g.
``LlamaForCausalLM`` or ``LlavaForConditionalGeneration``) whose decoder ``layers`` are one
shallow copy of a source decoder layer per step: every copy shares the source's parameter tensors
(nothing is copied) and carries its own ``layer_idx`` (on the decoder layer and on its attention
module, which is where transformers 5 reads it: ``past_key_values.update(k, v, self.layer_idx)``),
so the KV cache holds one entry per step and ``generate()`` works with ``use_cache=True``. The
config gets ``num_hidden_layers = len(steps)`` and per-layer fields (``layer_types``) with one
entry per step. A scale s != 1 is applied by a forward pre-hook on the step's own copy that
multiplies the incoming hidden states [batch, seq, hidden] by s; a step with scale 1 has no hook,
so an all-model-A route computes exactly model A.

Scales do not fold into weights. With a pre-norm layer ``h' = h + Attn(Norm(h))``, feeding ``s*h``
gives ``s*h + Attn(Norm(s*h))``: RMSNorm removes s from the branch (up to its epsilon) but the
residual stream keeps it, and the residual path has no weight to absorb it. Folding would need
every earlier residual contribution (embeddings, o_proj, down_proj of all previous steps) scaled by
s, i.e. per-step weight copies, and would still differ by the norm's epsilon. So only a route
whose scales are all 1 exports as a plain transformers checkpoint (:func:`export_plain`); any
route saves as an evomm routed checkpoint (:func:`save_routed` / :func:`load_routed`).

PS+DFS: merge in parameter space first (any method), then pass the merged model as model A and
the other model(s) as B, C, ... — this module accepts any model objects that have a decoder stack.
"""


from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from evomm.builtin import portable
from evomm.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from evomm.recipe.route import Route, check_route_fits

ROUTED_FORMAT = "evomm-routed-v1"

# Config fields that hold one entry per decoder layer and must follow the route.
_PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types", "no_rope_layers")


# ============================================================================================
# Finding the decoder stack in a model
# ============================================================================================


@dataclass
class DecoderStack:
    """Where a model keeps its decoder layers.

    path:   dotted path from the model to the module that owns ``layers`` (``model`` for a
            CausalLM, ``model.language_model`` for a transformers-5 LLaVA, ``""`` for a bare base).
    base:   that module (it also owns ``embed_tokens``, ``norm`` and ``rotary_emb``).
    layers: the ModuleList of decoder layers.
    config: the decoder's (text) config.
    """

    path: str
    base: nn.Module
    layers: nn.ModuleList
    config: Any


# Tried in order: LLaVA in transformers 5, LLaVA in transformers 4, CausalLM, bare decoder.
_STACK_PATHS = ("model.language_model", "language_model.model", "model", "")


def _get_path(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for name in path.split(".") if path else []:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def find_decoder_stack(model: Any) -> DecoderStack:
    """The decoder stack of a CausalLM, a LLaVA-style VLM or a bare decoder model."""
    for path in _STACK_PATHS:
        base = _get_path(model, path)
        if (
            isinstance(base, nn.Module)
            and isinstance(getattr(base, "layers", None), nn.ModuleList)
            and isinstance(getattr(base, "embed_tokens", None), nn.Module)
            and getattr(base, "config", None) is not None
        ):
            return DecoderStack(path=path, base=base, layers=base.layers, config=base.config)
    raise ConfigError(
        f"routing needs a decoder stack (model.layers with embed_tokens, as in Llama/Mistral/Qwen2 "
        f"CausalLMs, or model.language_model.layers as in LLaVA); {type(model).__name__} has none. "
        "Use decoder-only language models (or a LLaVA model) as DFS sources."
    )


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    return next(chain(module.parameters(), module.buffers()), None)


def check_routable(sources: Sequence[Any]) -> list[DecoderStack]:
    """Find every source's decoder stack and check that their layers can feed each other."""
    if not sources:
        raise ConfigError("routing needs at least one source model (model A)")
    stacks = [find_decoder_stack(m) for m in sources]
    if stacks[0].path == "":
        raise ConfigError(
            f"model A must have a language-model head (a *ForCausalLM or a LLaVA model), "
            f"got the bare decoder {type(sources[0]).__name__}"
        )
    ref = stacks[0]

    def describe(stack: DecoderStack) -> dict[str, Any]:
        cfg = stack.config
        if getattr(cfg, "is_heterogeneous", False):
            raise ConfigError("routing does not support heterogeneous per-layer configs")
        heads = cfg.num_attention_heads
        first = _first_tensor(stack.layers)
        return {
            "decoder layer class": type(stack.layers[0]).__name__ if len(stack.layers) else None,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": heads,
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", heads),
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            "attention implementation": getattr(cfg, "_attn_implementation", None),
            "dtype": None if first is None else first.dtype,
            "device": None if first is None else first.device,
            "per-layer config fields": tuple(f for f in _PER_LAYER_FIELDS
                                             if getattr(cfg, f, None) is not None),
        }

    want = describe(ref)
    if not len(ref.layers):
        raise ConfigError("model A has no decoder layers")
    for k, stack in enumerate(stacks[1:], start=1):
        got = describe(stack)
        diff = [f"{key}: {want[key]} vs {got[key]}" for key in want if want[key] != got[key]]
        if diff:
            raise IncompatibleModelsError(
                f"source model {k} cannot be routed with model A ({'; '.join(diff)}); DFS needs "
                "decoder layers of one architecture, hidden size, head layout, dtype and device"
            )
    return stacks


# ============================================================================================
# Per-step layer copies
# ============================================================================================


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A shallow copy with its own bookkeeping dicts (submodules, parameters) and no hooks.

    ``copy.copy`` alone would share ``_modules`` and the hook dicts with the original, so
    replacing a child or registering a hook on the copy would change the source model too. The
    Parameter objects themselves stay shared. Hooks on the source layer are not carried over:
    they belong to the source model (e.g. transformers' output-capturing hooks, installed once
    per model), and the routed model installs its own.
    """
    if "_hf_hook" in module.__dict__:
        raise ConfigError(
            "DFS sources must be loaded without device_map/offloading (accelerate hooks bind each "
            "layer's forward to the original module); load them on one device with .to(device)"
        )
    clone = copy.copy(module)
    for key, value in module.__dict__.items():
        if key.startswith("_") and isinstance(value, dict):
            clone.__dict__[key] = type(value)() if "hook" in key else value.copy()
    return clone


def step_layer(layer: nn.Module, layer_idx: int) -> nn.Module:
    """A copy of a decoder layer for path position ``layer_idx``, sharing every parameter.

    Every submodule is a fresh shallow copy, and every ``layer_idx`` attribute in the tree (the
    decoder layer's, the attention module's) is set to the step's position, so the KV cache gets
    one entry per step even when a source layer is used several times.
    """
    root = _fresh_copy(layer)
    pending = [root]
    while pending:
        module = pending.pop()
        if "layer_idx" in module.__dict__:
            module.layer_idx = layer_idx
        for name, child in module._modules.items():
            if child is not None:
                module._modules[name] = _fresh_copy(child)
                pending.append(module._modules[name])
    return root


def _scale_hook(scale: float):
    """Forward pre-hook multiplying the incoming hidden states [batch, seq, hidden] by ``scale``."""

    def hook(module, args, kwargs):
        if args:
            return (args[0] * scale, *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"] * scale
        return args, kwargs

    return hook


# ============================================================================================
# The routed model
# ============================================================================================


def _text_configs(lm: nn.Module, stack: DecoderStack) -> list[Any]:
    """Every config object that describes the routed decoder (usually one shared object)."""
    configs = [stack.config]
    top = lm.config.get_text_config(decoder=True)
    if top is not stack.config:
        configs.append(top)
    return configs


def _shell_like(root: nn.Module, stack: DecoderStack) -> nn.Module:
    """A new instance of the root's class that reuses every module of the root except the layers.

    The instance is built on the meta device (no memory, no init), then the root's modules
    (embeddings, norm, rotary embedding, head, and for a VLM the vision tower and projector) are
    put in place along the path to the decoder stack. Its config is a private copy so that
    re-routing never touches model A's config.
    """
    config = copy.deepcopy(root.config)
    text = config.get_text_config(decoder=True)
    text.num_hidden_layers = 0
    for name in _PER_LAYER_FIELDS:
        if getattr(text, name, None) is not None:
            setattr(text, name, [])
    with torch.device("meta"):
        shell = type(root)(config)
    if getattr(root, "generation_config", None) is not None:
        shell.generation_config = copy.deepcopy(root.generation_config)

    names = stack.path.split(".")
    new, old = shell, root
    for depth in range(len(names) + 1):
        keep = names[depth] if depth < len(names) else "layers"
        for name, child in old._modules.items():
            if name != keep:
                new._modules[name] = child
        new._parameters.update(old._parameters)
        new._buffers.update(old._buffers)
        new._non_persistent_buffers_set = set(old._non_persistent_buffers_set)
        if depth < len(names):
            new, old = new._modules[keep], old._modules[keep]
    shell.train(root.training)
    return shell


class RoutedCausalLM(nn.Module):
    """A DFS-routed model that shares its parameters with the source models.

    ``self.lm`` is an instance of model A's class (``LlamaForCausalLM``, ``MistralForCausalLM``,
    ``LlavaForConditionalGeneration`` ...) and is what generates; this wrapper forwards
    ``forward``/``generate`` and any other attribute to it, and re-routes it with
    :meth:`set_route`. Hand ``routed.lm`` (or the wrapper) to tasks as the model.

    Move the sources to their device and dtype before routing: ``.to()`` on the routed model only
    reaches the layers the current route uses.
    """

    def __init__(self, sources: Sequence[nn.Module], route: Route | None = None,
                 source_names: Sequence[str] | None = None):
        super().__init__()
        stacks = check_routable(sources)
        # Plain attributes (a tuple and a list), so the sources are not registered as submodules:
        # parameters() and state_dict() list only what the route uses.
        self._sources = tuple(sources)
        self._stacks = stacks
        self.layer_counts = [len(s.layers) for s in stacks]
        self.source_names = (list(source_names) if source_names
                             else [f"model_{i}" for i in range(len(sources))])
        if len(self.source_names) != len(sources):
            raise ConfigError(f"{len(sources)} source models but {len(self.source_names)} source_names")
        self.lm = _shell_like(sources[0], stacks[0])
        self._lm_stack = find_decoder_stack(self.lm)
        self.route: Route | None = None
        # The route over the original sources, when this model was rebuilt by load_routed.
        self.original_route: Route | None = None
        self.set_route(route if route is not None else Route.model_a(self.layer_counts[0], self.source_names))
        meta = [n for n, t in chain(self.lm.named_parameters(), self.lm.named_buffers()) if t.is_meta]
        if meta:  # a module of A's class that the transplant did not reach
            raise ModelLoadError(
                f"routing left tensors without data (model class {type(self.lm).__name__}): {meta[:5]}"
            )

    @property
    def sources(self) -> tuple[nn.Module, ...]:
        return self._sources

    def set_route(self, route: Route) -> None:
        """Re-route in place: new per-step layer copies, config updated; no weights touched."""
        if not isinstance(route, Route):
            raise ConfigError(f"set_route takes a Route, got {type(route).__name__}")
        check_route_fits(route, self.layer_counts)
        steps = []
        for k, ((m, l), scale) in enumerate(zip(route.steps, route.scales)):
            layer = step_layer(self._stacks[m].layers[l], k)
            if scale != 1.0:
                layer.register_forward_pre_hook(_scale_hook(scale), with_kwargs=True)
            steps.append(layer)
        self._lm_stack.base.layers = nn.ModuleList(steps)
        self._lm_stack.layers = self._lm_stack.base.layers
        for config in _text_configs(self.lm, self._lm_stack):
            config.num_hidden_layers = len(steps)
            for name in _PER_LAYER_FIELDS:
                if getattr(config, name, None) is not None:
                    setattr(config, name,
                            [getattr(self._stacks[m].config, name)[l] for m, l in route.steps])
        base = self._lm_stack.base
        # transformers installs output-capturing hooks (output_hidden_states / attentions) once per
        # model and marks it; the new step copies have none, so let it install them again.
        base.__dict__.pop("_output_capturing_hooks_installed", None)
        if hasattr(base, "has_sliding_layers"):  # Qwen2-style models cache this at init
            base.has_sliding_layers = "sliding_attention" in (
                getattr(self._lm_stack.config, "layer_types", None) or [])
        if not route.source_names:
            route = copy.copy(route)
            route.source_names = list(self.source_names)
        self.route = route

    # -- the transformers model interface, forwarded to self.lm --------------------------------
    def forward(self, *args, **kwargs):
        return self.lm(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.lm.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "lm" not in modules:
                raise
            return getattr(modules["lm"], name)


# ============================================================================================
# Saving and loading
# ============================================================================================


def _save_without_aliases(model: nn.Module, out_dir: Path) -> None:
    """save_pretrained, cloning tensors that several steps share (safetensors refuses aliases).

    Declared ties (lm_head <-> embed_tokens) are left to transformers.
    """
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    tied_names = set(tied) | set(tied.values())
    state = model.state_dict()
    seen: set[int] = set()
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and name not in tied_names:
            state[name] = tensor.clone()
        seen.add(ptr)
    model.save_pretrained(out_dir, state_dict=state)


def export_plain(routed: RoutedCausalLM, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write the routed model as an ordinary transformers checkpoint (all scales must be 1).

    The result is model A's class with ``num_hidden_layers = len(steps)`` whose layer k holds the
    weights of step k (a source layer used twice is stored twice); ``from_pretrained`` loads it
    with no evomm code. A scale != 1 does not fold into weights (see the module docstring), so
    such routes are refused: save them with :func:`save_routed`.
    """
    route = routed.route
    off = [(k, s) for k, s in enumerate(route.scales) if s != 1.0]
    if off:
        raise ConfigError(
            f"export_plain: step(s) {[k for k, _ in off][:8]} have scales != 1 (e.g. {off[0][1]}), "
            "which no plain checkpoint can express; use save_routed for this route"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_without_aliases(routed.lm, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def save_routed(routed: RoutedCausalLM, route: Route | None, out_dir: str | Path,
                tokenizer: Any = None) -> Path:
    """Write a self-contained routed checkpoint that :func:`load_routed` rebuilds.

    Layout::

        out_dir/route.yaml     format tag, the route over the stored layers, the original route
        out_dir/layers/        a plain checkpoint of model A's class whose layers are the route's
                               distinct (model, layer) pairs in order of first use (each once),
                               plus model A's embeddings, norm, head (and vision tower); the
                               tokenizer too when given

    Loading ``layers/`` alone with transformers gives those layers in a row, NOT the routed
    model; use load_routed (or export_plain when all scales are 1).
    """
    route = route if route is not None else routed.route
    check_route_fits(route, routed.layer_counts)
    unique = route.unique_layers()
    store = RoutedCausalLM(routed.sources, Route(steps=unique, scales=[1.0] * len(unique)),
                           source_names=routed.source_names)
    out = Path(out_dir)
    (out / "layers").mkdir(parents=True, exist_ok=True)
    _save_without_aliases(store.lm, out / "layers")
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "layers")
    index = {step: k for k, step in enumerate(unique)}
    stored = Route(steps=[(0, index[s]) for s in route.steps], scales=list(route.scales),
                   source_names=["layers"])
    original = route.to_dict()
    # where the layers came from, built-in models by name (not this machine's cache folder)
    original["source_names"] = [portable(n) for n in (route.source_names or routed.source_names)]
    doc = {
        "format": ROUTED_FORMAT,
        "architecture": type(routed.lm).__name__,
        "route": stored.to_dict(),
        "original_route": original,
    }
    (out / "route.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                                    encoding="utf-8")
    return out


def load_routed(out_dir: str | Path, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> RoutedCausalLM:
    """Rebuild a model written by :func:`save_routed` (same logits as the saved one)."""
    import transformers

    out = Path(out_dir)
    meta_file = out / "route.yaml"
    if not meta_file.is_file() or not (out / "layers" / "config.json").is_file():
        raise ModelLoadError(
            f"{out} is not an evomm routed checkpoint (route.yaml and layers/config.json expected); "
            "it is written by evomm.merging.dfs.save_routed"
        )
    doc = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
    if doc.get("format") != ROUTED_FORMAT:
        raise ModelLoadError(f"{meta_file}: format {doc.get('format')!r}, expected {ROUTED_FORMAT!r}")
    arch = json.loads((out / "layers" / "config.json").read_text())["architectures"][0]
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ModelLoadError(f"{out / 'layers'}: transformers has no class {arch}")
    kwargs = {} if dtype is None else {"dtype": dtype}
    store = cls.from_pretrained(out / "layers", **kwargs)
    if device is not None:
        store = store.to(device)
    store.eval()
    routed = RoutedCausalLM([store], Route.from_dict(doc["route"]), source_names=["layers"])
    if "original_route" in doc:
        routed.original_route = Route.from_dict(doc["original_route"])
    return routed
