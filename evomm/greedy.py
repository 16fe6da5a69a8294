"""Fast greedy decoding: a lean KV-cache loop that keeps its batch full of unfinished rows.

``model.generate`` runs a batch until its longest answer ends (finished rows keep computing
padding), so a batch of answers of different lengths costs as many steps as its longest one, and
each step spends much of its time in Python (logits processors, stopping criteria, input
preparation). This loop calls the model's forward directly, with the inputs ``generate`` passes
for greedy decoding (left-padded ``input_ids``, the 2-D attention mask, position ids counted from
the mask, ``logits_to_keep=1``, a ``DynamicCache`` built from the config), and:

* ends a row at its EOS id, at its own ``max_new_tokens``, or when a stop check says so (a stop
  string appeared in its text);
* drops finished rows from the KV cache and, in the same move, admits the next prompts of the
  queue into the freed slots (their prompt is run as one forward, their cache rows are
  left-padded to the batch's width and joined to it; columns no row uses any more are cut off);
  so ``slots`` rows are decoded at every step until the queue runs dry, and the number of steps
  is about the total answer length over ``slots`` instead of the sum of each batch's longest;
* stops when every row has ended.

Each row attends only to its own tokens (the mask hides the padding), so its tokens are the ones
``generate`` picks for it; rows move between batches of different sizes and widths, which
changes floating-point rounding only below what greedy argmax sees on the models tested.
Only plain greedy decoding qualifies: see ``evomm.generation.fast_path_reason``.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# Compact (and refill) when at most this share of the rows is still running: a compaction copies
# the whole cache, about one decode step's worth of reads, so doing it for every finished row
# would cost more than it saves; each refill also costs one extra (prompt) forward.
COMPACT_AT = 0.75

StopCheck = Callable[[list[int]], bool]  # a row's new tokens so far -> stop it now?
PrefillKwargs = Callable[[list[int]], dict]  # prompt indices -> extra kwargs for their first forward


def left_pad(encoded: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [batch, width], real tokens flush right."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, width - len(ids):] = 1
    return input_ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``generate`` makes them: count real tokens, padding at 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _forward_kwargs(model) -> dict:
    forward = getattr(model, "lm", model).forward  # a routed model forwards to its ``lm``
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}


@dataclass
class _Batch:
    """The rows being decoded: their cache, mask [rows, width], next position [rows, 1]."""

    cache: DynamicCache
    mask: torch.Tensor
    padded: bool  # False while no row has padding: generate then passes no mask at all
    next_pos: torch.Tensor
    tokens: torch.Tensor  # [rows] each row's latest token (the next step's input)
    items: list[int]  # prompt index of each row
    live: list[bool]

    @property
    def running(self) -> int:
        return sum(self.live)

    def compact(self) -> "_Batch":
        keep = [r for r, alive in enumerate(self.live) if alive]
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(index)
        mask = self.mask[index]
        first = int((mask.sum(0) > 0).long().argmax()) if len(keep) else 0
        _cut_columns(self.cache, first)
        return _Batch(self.cache, mask[:, first:], self.padded, self.next_pos[index], self.tokens[index],
                      [self.items[r] for r in keep], [True] * len(keep))


def _layers(cache: DynamicCache):
    return [layer for layer in cache.layers if layer.is_initialized]


def _cut_columns(cache: DynamicCache, first: int) -> None:
    """Drop the cache's first ``first`` columns (no row attends to them)."""
    if first <= 0:
        return
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = layer.keys.shape[-2]


def _can_join(cache: DynamicCache, width: int) -> bool:
    """Rows of different caches can be joined when every layer is a plain growing layer (a
    sliding one only while nothing has slid out of its window)."""
    for layer in cache.layers:
        if not layer.is_initialized:
            return False
        if type(layer) is DynamicLayer:
            continue
        if type(layer) is DynamicSlidingWindowLayer and width < layer.sliding_window - 1:
            continue
        return False
    return True


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _join(old: _Batch, new: _Batch) -> _Batch:
    """One batch holding ``old``'s rows then ``new``'s, right-aligned to the wider width."""
    width = max(old.mask.shape[1], new.mask.shape[1])
    for a, b in zip(old.cache.layers, new.cache.layers):
        a.keys = torch.cat([_pad_left(a.keys, width, 2), _pad_left(b.keys, width, 2)], dim=0)
        a.values = torch.cat([_pad_left(a.values, width, 2), _pad_left(b.values, width, 2)], dim=0)
        if isinstance(a, DynamicSlidingWindowLayer):
            a.cumulative_length = width
    mask = torch.cat([_pad_left(old.mask, width, 1), _pad_left(new.mask, width, 1)], dim=0)
    return _Batch(old.cache, mask, True, torch.cat([old.next_pos, new.next_pos]),
                  torch.cat([old.tokens, new.tokens]), old.items + new.items, old.live + new.live)


class _Decoder:
    """State shared by the steps of one ``greedy_generate`` call."""

    def __init__(self, model, max_new_tokens, eos_ids, stop, prefill_kwargs, pad_id):
        self.model = model
        self.device = next(model.parameters()).device
        self.config = model.config.get_text_config(decoder=True)
        self.extra = _forward_kwargs(model)
        self.max_new_tokens = max_new_tokens
        self.eos = set(int(e) for e in eos_ids)
        self.stop = stop
        self.prefill_kwargs = prefill_kwargs
        self.pad_id = pad_id
        self.out: dict[int, list[int]] = {}
        self.forwards = 0  # model calls (benchmarks report it)

    def record(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Append each live row's greedy token; end rows at EOS, max_new_tokens or a stop."""
        tokens = logits[:, -1].to(dtype=torch.float32).argmax(dim=-1)  # [rows]
        batch.tokens = tokens
        for row, token in enumerate(tokens.tolist()):
            if not batch.live[row]:
                continue
            new = self.out[batch.items[row]]
            new.append(token)
            if (token in self.eos or len(new) >= self.max_new_tokens
                    or (self.stop is not None and self.stop(new))):
                batch.live[row] = False

    def prefill(self, prompts: Sequence[Sequence[int]], items: list[int]) -> _Batch:
        input_ids, mask = left_pad([prompts[i] for i in items], self.pad_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        padded = bool((mask == 0).any())
        positions = _positions(mask)
        cache = DynamicCache(config=self.config)
        extra = self.prefill_kwargs(items) if self.prefill_kwargs is not None else {}
        out = self.model(input_ids=input_ids, **extra, attention_mask=mask if padded else None,
                         position_ids=positions, cache=cache, use_cache=True, return_dict=True,
                         **self.extra)
        self.forwards += 1
        for i in items:
            self.out[i] = []
        batch = _Batch(cache, mask, padded, positions[:, -1:] + 1, input_ids[:, -1], list(items),
                       [True] * len(items))
        self.record(batch, out.logits)
        return batch

    def step(self, batch: _Batch) -> None:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], 1))], dim=1)
        out = self.model(input_ids=batch.tokens[:, None], attention_mask=batch.mask if batch.padded else None,
                         position_ids=batch.next_pos, cache=batch.cache, use_cache=True, return_dict=True,
                         **self.extra)
        self.forwards += 1
        batch.next_pos = batch.next_pos + 1
        self.record(batch, out.logits)


@torch.inference_mode()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    order: Sequence[int],
    *,
    slots: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    stop: StopCheck | None = None,
    prefill_kwargs: PrefillKwargs | None = None,
    refill: bool = True,
    stats: dict | None = None,
) -> list[list[int]]:
    """Greedy new ids for every prompt (prompt order), its EOS id included when it ended there.

    Prompts enter the batch in ``order`` (shortest first keeps padding small), at most ``slots``
    rows at a time. ``stop(new_ids)`` ends a row early; ``prefill_kwargs(indices)`` gives extra
    inputs for the first forward of those prompts (a VLM's precomputed image features).
    ``refill=False`` runs fixed batches of ``slots`` prompts (each to its own end), as
    ``generate`` batches them. ``stats`` (a dict) receives ``forwards``, the model calls made.
    """
    dec = _Decoder(model, max_new_tokens, eos_ids, stop, prefill_kwargs, pad_id)
    queue = deque(order)
    longest = max(len(p) for p in prompts) + max_new_tokens
    batch: _Batch | None = None
    while True:
        if batch is not None and batch.running <= COMPACT_AT * len(batch.items):
            batch = batch.compact() if batch.running else None
        free = slots - (batch.running if batch is not None else 0)
        can_join = batch is None or (refill and _can_join(batch.cache, longest))
        if queue and can_join and (batch is None or free >= max(1, slots - int(COMPACT_AT * slots))):
            if batch is not None and batch.running < len(batch.items):
                batch = batch.compact()  # finished rows leave before new ones join
            new = dec.prefill(prompts, [queue.popleft() for _ in range(min(free, len(queue)))])
            batch = new if batch is None else _join(batch, new)
            continue  # the new rows may have ended on their first token
        if batch is None:
            break
        dec.step(batch)
    if stats is not None:
        stats["forwards"] = stats.get("forwards", 0) + dec.forwards
    return [dec.out[i] for i in range(len(prompts))]
