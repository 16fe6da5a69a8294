"""Fast greedy answers for a LLaVA-style VLM, with per-item work done once per run.

Every candidate of an EvoVLM-JP search answers the same questions about the same images. What
does not change between candidates is kept in a :class:`VisionCache`:

* the processor's output per item (token ids with the image tokens expanded, pixel values):
  it depends only on the processor, the prompt text and the image;
* the image features (vision tower + projector output) per item, as long as the vision tower
  and projector are not written: the cache is keyed by the identity and the in-place version
  counter of every parameter outside the language model, so a merge that writes them (an
  adapter with ``mergeable`` holding ``vision_tower`` or ``projector``), another model, or any
  other in-place change makes the cache start over. The features are computed batch by batch,
  in the same batches as ``model.generate`` would compute them, and handed to the model's
  forward as ``mm_encoder_outputs`` (transformers' hook for precomputed encoder outputs).

Greedy decoding runs in ``evomm.greedy``'s loop; other settings (EvoVLM-JP's fitness uses a
repetition penalty of 1.5) run ``model.generate`` fed the cached features. Both give the answers
of ``model.generate`` on the processor's batches.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from evomm.greedy import greedy_generate, left_pad


def vision_parameters(model) -> list[torch.Tensor]:
    """Parameters outside the text decoder and the LM head: the vision tower and projector."""
    lm = getattr(model, "lm", model)  # a routed model (evomm.merging.dfs) generates through .lm
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    skip = {id(p) for p in decoder.parameters()}
    if head is not None:
        skip |= {id(p) for p in head.parameters()}
    return [p for p in lm.parameters() if id(p) not in skip]


def vision_fingerprint(model) -> tuple:
    """Changes whenever a vision-side parameter is replaced or written in place."""
    return tuple((id(p), p.data_ptr(), p._version) for p in vision_parameters(model))


class VisionCache:
    """Processor outputs and image features per item key (see the module docstring)."""

    def __init__(self):
        self._inputs: dict[tuple[str, str], dict[str, Any]] = {}
        # model -> (fingerprint, {item key: features [image tokens, hidden]})
        self._features: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.feature_computations = 0  # items whose features were computed (tests and benches read it)

    def clear(self) -> None:
        self._inputs.clear()
        self._features = weakref.WeakKeyDictionary()

    def inputs(self, processor, key: str, text: str, load_image: Callable[[], Any]) -> dict[str, Any]:
        """``input_ids`` (a list) and the vision inputs (pixel_values, image_sizes ...) of one item."""
        memo_key = (key, text)
        if memo_key not in self._inputs:
            enc = processor(images=[load_image()], text=[text], return_tensors="pt")
            entry = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
            entry["input_ids"] = enc["input_ids"][0].tolist()
            self._inputs[memo_key] = entry
        return self._inputs[memo_key]

    def features(self, model, keys: Sequence[str], inputs: Sequence[dict[str, Any]]) -> list[torch.Tensor]:
        """Image features of each item, computing the missing ones together in one call."""
        fingerprint = vision_fingerprint(model)
        held = self._features.get(model)
        if held is None or held[0] != fingerprint:
            held = (fingerprint, {})
            self._features[model] = held
        memo = held[1]
        missing = [i for i, k in enumerate(keys) if k not in memo]
        if missing:
            for i, feats in zip(missing, _image_features(model, [inputs[i] for i in missing])):
                memo[keys[i]] = feats
            self.feature_computations += len(missing)
        return [memo[k] for k in keys]


def _image_features(model, inputs: Sequence[dict[str, Any]]) -> list[torch.Tensor]:
    """One features tensor [image tokens, hidden] per item (one image each)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch: dict[str, torch.Tensor] = {}
    for name in inputs[0]:
        if name == "input_ids":
            continue
        value = torch.cat([x[name] for x in inputs], dim=0)
        batch[name] = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
    out = model.get_image_features(**batch, return_dict=True)
    feats = out.pooler_output
    return [f.reshape(-1, f.shape[-1]) for f in feats]


def greedy_vlm_answers(model, order: Sequence[int], keys: Sequence[str], inputs: Sequence[dict[str, Any]],
                       cache: VisionCache, *, slots: int, max_new_tokens: int, pad_id: int,
                       eos_ids: Sequence[int]) -> list[list[int]]:
    """New token ids per item (item order); image features from ``cache``, rows refilled."""
    device = next(model.parameters()).device

    def encoder_outputs(items: list[int]) -> dict:
        feats = cache.features(model, [keys[i] for i in items], [inputs[i] for i in items])
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(
            pooler_output=[f.to(device) for f in feats])}}

    return greedy_generate(model, [x["input_ids"] for x in inputs], order, slots=slots,
                           max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                           prefill_kwargs=encoder_outputs)


def cached_generate(model, batches: Sequence[Sequence[int]], keys: Sequence[str], inputs: Sequence[dict[str, Any]],
                    cache: VisionCache, config, *, seed: int = 0) -> list[list[int]]:
    """``model.generate`` per batch of item indices, fed the cached image features
    (``mm_encoder_outputs``) instead of pixel values: for settings the fast loop does not do
    (beam search, sampling, a repetition penalty). New ids per item, in item order."""
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in inputs]
    with torch.inference_mode(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        for idx in batches:
            feats = cache.features(model, [keys[i] for i in idx], [inputs[i] for i in idx])
            input_ids, mask = left_pad([inputs[i]["input_ids"] for i in idx], config.pad_token_id)
            encoder = {"image": BaseModelOutputWithPooling(pooler_output=[f.to(device) for f in feats])}
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                       mm_encoder_outputs=encoder, generation_config=config)
            for i, row in zip(idx, generated[:, input_ids.shape[1]:].tolist()):
                out[i] = row
    return out
