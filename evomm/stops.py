"""Prompt encoding done once per run, and stop strings checked while generating.

A search scores every candidate on the same prompts, so their token ids are computed once per
tokenizer and kept (``encode_prompts``). Stop strings (``"###"`` where a model starts a new prompt
section) are checked on text, but decoding every row after every token would cost more than the
model's step at search batch sizes: a row's tail is decoded only after a token that can end a
stop string (its own text holds a stop string's last character, or it is a partial byte token
whose text is not known alone), and a hit in the tail is confirmed on the row's full text.
"""

from __future__ import annotations

import weakref
from typing import Sequence

_ENCODED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {prompt: ids}
_TRIGGERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {chars: ids}


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (``tokenizer(p)["input_ids"]``), computed once per tokenizer."""
    try:
        memo = _ENCODED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo
        memo = {}
    missing = [p for p in dict.fromkeys(prompts) if p not in memo]
    for p in missing:
        memo[p] = list(tokenizer(p)["input_ids"])
    return [memo[p] for p in prompts]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (all of it when none occurs)."""
    cut = len(text)
    for stop in stop_strings:
        at = text.find(stop) if stop else -1
        if at >= 0:
            cut = min(cut, at)
    return text[:cut]


def _trigger_ids(tokenizer, last_chars: str) -> frozenset[int]:
    """Ids whose text alone could complete a stop string (see the module docstring)."""
    try:
        memo = _TRIGGERS.setdefault(tokenizer, {})
    except TypeError:
        memo = {}
    if last_chars not in memo:
        ids = range(len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
        memo[last_chars] = frozenset(
            i for i, t in zip(ids, texts) if "\ufffd" in t or any(c in t for c in last_chars)
        )
    return memo[last_chars]


class StopStrings:
    """``stop(new_ids) -> bool``: has the row's text so far reached one of ``stop_strings``?"""

    def __init__(self, tokenizer, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stop_strings if s]
        self.triggers = _trigger_ids(tokenizer, "".join(sorted({s[-1] for s in self.stops})))
        # A stop string spans at most this many tokens when every token holds a character; a
        # few more cover tokens that decode to nothing alone.
        self.tail = max(len(s) for s in self.stops) + 8

    def _found(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in self.stops)

    def __call__(self, new_ids: list[int]) -> bool:
        if new_ids[-1] not in self.triggers:
            return False
        return self._found(new_ids[-self.tail:]) and self._found(new_ids)
