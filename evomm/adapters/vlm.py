"""VLM adapter: a LLaVA-style model whose language model is merged with text LLMs (EvoVLM-JP).

The FIRST model is the VLM (LLaVA-1.5 ``LlavaForConditionalGeneration`` or LLaVA-1.6/NeXT
``LlavaNextForConditionalGeneration``); it is the target's architecture and gives the processor.
The other models are text LLMs of the same architecture as the VLM's language model (e.g. Shisa
Gamma 7B next to LLaVA-1.6-Mistral-7B) or VLMs like the first; ``base`` (for task vectors) is a
text LLM or a VLM (Mistral-7B-v0.1 in EvoVLM-JP).

Cross-modal name mapping (the only place it exists). Every tensor gets a canonical key
``(component, name inside the component)``, found from the modules themselves, not from strings:

    component      VLM (transformers 5)                       text LLM
    language_model model.language_model.<rel>  (get_decoder)  model.<rel>
    head           lm_head.<rel>  (get_output_embeddings)      lm_head.<rel>
    vision_tower   model.vision_tower.<rel>                    -
    projector      everything else (multi_modal_projector.*, LLaVA-NeXT's image_newline)

so ``model.language_model.layers.3.mlp.up_proj.weight`` (VLM) <-> ``model.layers.3.mlp.up_proj.weight``
(LLM). Slots are named by the target (VLM) tensor names.

Parameter groups: ``vision_tower`` and ``projector`` (only when listed in ``mergeable``; by
default they are kept from the VLM, as the paper did), then the language model's ``embed``,
``layers.0`` ... ``layers.N-1``, ``norm`` and ``head``.

Vocabularies: LLaVA adds tokens (``<image>``, padding), so its embedding and LM-head matrices may
have more rows than the LLM's. The first V_shared = min(rows) rows are merged (the slot's target
and sources are views of those rows) and the VLM's extra rows stay as they are; ``notes()``
records the split. Any other shape difference is an IncompatibleModelsError naming the tensors,
raised from the configs (models instantiated on the meta device) before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evomm.adapters.base import TensorSlot, VLMHandle
from evomm.adapters.config_drift import config_differences, warn_differences
from evomm.adapters.llm import load_config
from evomm.adapters.llm_names import group_t, llm_group
from evomm.adapters.loading import check_ref, load_or_explain, pick_device, resolve_ref, torch_dtype
from evomm.errors import ConfigError, IncompatibleModelsError

MERGEABLE = ("language_model", "projector", "vision_tower")
LM, HEAD, VISION, PROJECTOR = "language_model", "head", "vision_tower", "projector"
# Components that the `mergeable` option switches on; the LM head goes with the language model.
_SWITCH = {LM: LM, HEAD: LM, VISION: VISION, PROJECTOR: PROJECTOR}


def is_vlm_config(config) -> bool:
    return getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None


def _model_class(config, vlm: bool):
    """The class named in config.architectures, else the Auto class of the kind."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForImageTextToText if vlm else transformers.AutoModelForCausalLM


@dataclass(frozen=True)
class _Layout:
    """Where a model's components live: the full-name prefix of each component it has."""

    prefixes: dict[str, str]  # component -> "model.language_model." etc. (absent: not in the model)
    embed: str  # canonical relative name of the input-embedding weight
    head: str | None  # canonical relative name of the output-embedding weight (None if absent)

    def key(self, name: str) -> tuple[str, str]:
        """Canonical (component, relative name) of a full tensor name."""
        for component in (LM, HEAD, VISION):
            prefix = self.prefixes.get(component)
            if prefix and name.startswith(prefix):
                return component, name[len(prefix):]
        return PROJECTOR, name


def _layout(model, vlm: bool, ref: str) -> _Layout:
    """Find the component prefixes of a (meta or real) model from its modules."""
    names = {id(m): n for n, m in model.named_modules()}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    if decoder is None or id(decoder) not in names or id(in_emb) not in names:
        raise IncompatibleModelsError(
            f"'{ref}' ({type(model).__name__}) has no recognisable text decoder; "
            "the vlm adapter merges LLaVA-style VLMs with decoder-only LLMs"
        )
    prefixes = {LM: names[id(decoder)] + "."}
    if out_emb is not None and id(out_emb) in names and not names[id(out_emb)].startswith(prefixes[LM]):
        prefixes[HEAD] = names[id(out_emb)] + "."
    if vlm:
        towers = sorted((n for n in names.values() if n.split(".")[-1] == "vision_tower"), key=len)
        if not towers:
            raise IncompatibleModelsError(f"'{ref}' ({type(model).__name__}) has no vision_tower module")
        prefixes[VISION] = towers[0] + "."
    embed = names[id(in_emb)] + ".weight"
    if not embed.startswith(prefixes[LM]):
        raise IncompatibleModelsError(f"'{ref}': input embeddings {embed} sit outside the text decoder")
    return _Layout(prefixes, embed[len(prefixes[LM]):], "weight" if HEAD in prefixes else None)


def _named_tensors(model) -> dict[str, torch.Tensor]:
    # remove_duplicate=False: a tied lm_head.weight is listed under its own name as well.
    return dict(model.named_parameters(remove_duplicate=False))


def _meta_model(config, vlm: bool):
    """The model built on the meta device: real names and shapes, no memory, no weights."""
    cls = _model_class(config, vlm)
    with torch.device("meta"):
        return cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)


class VLMAdapter:
    """Merges the language model (and optionally projector / vision tower) of a LLaVA-style VLM."""

    name = "vlm"
    modality = "vlm"  # VLMHandle

    def __init__(
        self,
        models: list[str],
        base: str | None = None,
        mergeable: list[str] = (LM,),
        dtype: str = "float32",
        device: str = "auto",
    ):
        if not models:
            raise ConfigError(
                "adapter.models is empty: list the VLM first, then the LLMs or VLMs to merge into it"
            )
        if isinstance(mergeable, str):
            mergeable = [mergeable]
        mergeable = list(mergeable)
        unknown = [m for m in mergeable if m not in MERGEABLE]
        if unknown or not mergeable:
            raise ConfigError(
                f"adapter.mergeable must be a non-empty list drawn from {', '.join(MERGEABLE)}; got {mergeable}"
            )
        for ref in models:
            check_ref(ref)
        if base is not None:
            check_ref(base, "base model")
        self.mergeable = [m for m in MERGEABLE if m in mergeable]
        self.source_names = [resolve_ref(r) for r in models]
        self.base_name = resolve_ref(base) if base is not None else None
        self.dtype = torch_dtype(dtype)
        self.device = pick_device(device)

        refs = self.source_names + ([self.base_name] if self.base_name else [])
        shown = list(models) + ([base] if base is not None else [])  # names as the user wrote them
        configs, layouts, shapes = self._plan_merge(refs, shown)
        self._load_target(configs[0])
        self._build_slots(refs, configs, layouts, shapes)

    def _plan_merge(self, refs: list[str], shown: list[str]):
        """Configs and layouts only (meta device): refuse mismatches before loading weights."""
        configs = [load_config(r) for r in refs]
        if not is_vlm_config(configs[0]):
            raise ConfigError(
                f"the first of adapter.models must be the VLM (LLaVA-style, with a vision_config); "
                f"'{shown[0]}' is a {getattr(configs[0], 'model_type', '?')} model"
            )
        self._kinds = ["vlm" if is_vlm_config(c) else "llm" for c in configs]
        texts = [c.text_config if k == "vlm" else c for c, k in zip(configs, self._kinds)]  # the merged part
        self._config_differences = config_differences(shown, texts)
        warn_differences(self._config_differences)
        metas = [_meta_model(c, k == "vlm") for c, k in zip(configs, self._kinds)]
        layouts = [_layout(m, k == "vlm", r) for m, k, r in zip(metas, self._kinds, refs)]
        shapes = [{n: t.shape for n, t in metas[0].named_parameters()}]  # target: tied ones once
        shapes += [{n: t.shape for n, t in _named_tensors(m).items()} for m in metas[1:]]
        self._plan = self._check(shown, layouts, shapes)
        return configs, layouts, shapes

    def _load_target(self, config) -> None:
        """The resident target (the VLM) and its processor."""
        from transformers import AutoProcessor

        vlm_cls = _model_class(config, True)
        self.model = load_or_explain(
            self.source_names[0], lambda r: vlm_cls.from_pretrained(r, dtype=self.dtype), "VLM"
        ).to(self.device).eval()
        self.processor = load_or_explain(self.source_names[0], AutoProcessor.from_pretrained, "processor")
        tokenizer = self.processor.tokenizer
        if tokenizer.pad_token is None:  # batched generation pads; Mistral tokenizers have no pad
            tokenizer.pad_token = tokenizer.eos_token

    def _build_slots(self, refs, configs, layouts, shapes) -> None:
        """Source and base tensors (CPU, storage dtype; each source module is dropped after), as slots."""
        target = dict(self.model.named_parameters())  # no tied duplicates: each element once
        self._check_loaded(refs[0], {n: t.shape for n, t in target.items()}, shapes[0])
        tensors = [{n: target[n].detach().to("cpu", copy=True) for n, *_ in self._plan}]
        for i, ref in enumerate(refs[1:], start=1):
            tensors.append(self._load_tensors(ref, configs[i], self._kinds[i], i))

        def rows_of(t: torch.Tensor, rows: int | None) -> torch.Tensor:
            # Vocabulary matrices [V, hidden]: a view of the first V_shared rows; else the tensor.
            return t if rows is None else t[:rows]

        n_layers = int(configs[0].text_config.num_hidden_layers)
        n_src = len(self.source_names)
        self._slots: list[TensorSlot] = []
        for name, rows, others in self._plan:
            group = self._group(layouts[0].key(name))
            inputs = [tensors[0][name]] + [tensors[i][other] for i, other in enumerate(others, start=1)]
            inputs = [rows_of(t, rows) for t in inputs]  # sources in order, then the base
            self._slots.append(
                TensorSlot(
                    name=name,
                    group=group,
                    t=0.0 if group in (VISION, PROJECTOR) else group_t(group, n_layers),
                    target=rows_of(target[name].data, rows),
                    sources=inputs[:n_src],
                    base=inputs[n_src] if self.base_name else None,
                )
            )
        present = {s.group for s in self._slots}
        self._layer_groups = [f"layers.{i}" for i in range(n_layers) if f"layers.{i}" in present]
        order = [VISION, PROJECTOR, "embed", *self._layer_groups, "norm", HEAD, "other"]
        self._groups = [g for g in order if g in present]

    # -- compatibility ----------------------------------------------------------------------------

    def _check(self, refs, layouts, shapes) -> list[tuple[str, int | None, list[str]]]:
        """Match every mergeable target tensor with each other model's tensor and check shapes.

        ``shapes[0]`` lists the target's tensors once (tied weights under one name); the other
        models list tied weights under every name, so an untied target finds their head.
        Returns the plan: (target name, merged rows or None, [name in model 1, model 2, ...]).
        """
        target_layout, target_shapes = layouts[0], shapes[0]
        for i, kind in enumerate(self._kinds[1:], start=1):
            if kind == "llm" and set(self.mergeable) - {LM}:
                extra = ", ".join(m for m in self.mergeable if m != LM)
                raise IncompatibleModelsError(
                    f"'{refs[i]}' is a text LLM and has no {extra}; merge only the language "
                    "model (adapter.mergeable: [language_model]) or use VLMs as sources"
                )
        wanted = {target_layout.key(n): n for n in target_shapes}
        wanted = {k: n for k, n in wanted.items() if _SWITCH[k[0]] in self.mergeable}
        vocab_keys = {(LM, target_layout.embed), (HEAD, target_layout.head)}
        per_model = [{l.key(n): n for n in s} for l, s in zip(layouts[1:], shapes[1:])]
        missing, differ, extra = [], [], []
        rows: dict[tuple[str, str], int | None] = {k: None for k in wanted}
        for ref, lookup, s in zip(refs[1:], per_model, shapes[1:]):
            for key, name in wanted.items():
                other = lookup.get(key)
                if other is None:
                    missing.append(f"'{ref}' has no counterpart of {name}")
                    continue
                ts, os_ = tuple(target_shapes[name]), tuple(s[other])
                if os_ == ts:
                    continue
                if key in vocab_keys and os_[1:] == ts[1:]:  # vocabulary rows differ: allowed
                    rows[key] = min(rows[key] or ts[0], os_[0])
                    continue
                differ.append(f"{name} {ts} vs '{ref}' {other} {os_}")
            # Tensors the VLM lacks (e.g. more layers): the architectures differ. A head that the
            # target ties to its embeddings is the one exception.
            for key, other in lookup.items():
                tied_head = key[0] == HEAD and not any(k[0] == HEAD for k in wanted)
                if key not in wanted and _SWITCH[key[0]] in self.mergeable and not tied_head:
                    extra.append(f"'{ref}' {other} has no counterpart in the VLM")
        if differ or missing or extra:
            parts = [
                f"{label}: {'; '.join(items[:5])}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                for label, items in (("shapes differ", differ), ("missing", missing), ("extra", extra))
                if items
            ]
            raise IncompatibleModelsError(
                f"models do not line up with the VLM '{refs[0]}': " + " | ".join(parts)
                + ". Merge a VLM with LLMs of its language model's architecture and size."
            )
        self._vocab = self._vocab_note(target_shapes, wanted, vocab_keys, rows)
        return [
            (name, rows[key], [lookup[key] for lookup in per_model]) for key, name in wanted.items()
        ]

    def _vocab_note(self, target_shapes, wanted, vocab_keys, rows) -> dict[str, int]:
        keys = [k for k in vocab_keys if k in wanted]
        if not keys:
            return {}
        v_vlm = int(target_shapes[wanted[keys[0]]][0])
        merged = min((rows[k] if rows[k] is not None else v_vlm) for k in keys)
        return {"merged": int(merged), "kept_from_vlm": v_vlm - int(merged)}

    @staticmethod
    def _check_loaded(ref: str, loaded: dict, expected: dict) -> None:
        bad = [n for n, s in loaded.items() if n in expected and tuple(expected[n]) != tuple(s)]
        if bad:
            raise IncompatibleModelsError(f"'{ref}' loaded with shapes its config does not give: {', '.join(bad[:5])}")

    def _load_tensors(self, ref: str, config, kind: str, index: int) -> dict[str, torch.Tensor]:
        cls = _model_class(config, kind == "vlm")
        model = load_or_explain(ref, lambda r: cls.from_pretrained(r, dtype=self.dtype), "model")
        named = {n: t.detach() for n, t in _named_tensors(model).items()}
        needed = {others[index - 1] for _, _, others in self._plan}
        return {n: named[n] for n in needed}

    @staticmethod
    def _group(key: tuple[str, str]) -> str:
        component, rel = key
        if component == LM:
            return llm_group(rel)
        return component  # head, vision_tower, projector

    # -- the Adapter protocol ---------------------------------------------------------------------

    @property
    def source_kinds(self) -> list[str]:
        """"vlm" or "llm" for each model in adapter.models order."""
        return self._kinds[: len(self.source_names)]

    def groups(self) -> list[str]:
        return list(self._groups)

    def layer_groups(self) -> list[str]:
        return list(self._layer_groups)

    def slots(self) -> list[TensorSlot]:
        return self._slots

    def notes(self) -> dict:
        """Facts the recipe should record: vocabulary rows merged / kept, components kept."""
        notes: dict = {"kept_from_vlm": [m for m in MERGEABLE if m not in self.mergeable]}
        if self._vocab:
            notes["vocab_rows"] = dict(self._vocab)
        if self._config_differences:
            notes["config_differences"] = self._config_differences
        return notes

    def handle(self) -> VLMHandle:
        return VLMHandle(self.model, self.processor)

    def save_merged(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir)  # safetensors
        self.processor.save_pretrained(out_dir)
