"""toy_ja_math: the composition world's target, arithmetic asked and answered in Japanese.

The toy analogue of MGSM-JA for the composition world (``evomm.toy.compose_world``): the model
gets "問: 3 * 4 =" (the shipped design's phrasing) and must answer "12 です" — the right number,
in the Japanese answer form (the paper's rule "right number AND in Japanese", made exact). No
model is trained on these items: the math expert knows the operations in English, the Japanese
expert knows Japanese, and the base (and the Japanese expert after it) saw Japanese arithmetic
only on operand pairs of its own (the ``bridge``). Fitness and held-out items share no operand
pair. Besides ``accuracy`` the task reports ``accuracy_<operation>``, ``number_rate`` (the right
number in any form) and ``japanese_rate`` (answers in the "<n> です" form).

Follows the per-item task contract: ``evaluate(handle, split, items=None)`` scores all items of
the split (the fitness split: its fixed seeded sample) or the listed indices, and returns
``item_scores`` (1.0 / 0.0 per scored item, in order) with the metrics.
"""

from __future__ import annotations

import random

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.tasks.base import Resampling
from evomm.tasks.toy_arith import japanese_form_number, normalise
from evomm.toy import compose_world


OP_NAMES = {op: spec.en for op, spec in compose_world.OPS.items()}  # "*" -> "times"


class ToyJaMathTask(Resampling):
    name = "toy_ja_math"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(self, fitness_samples: int = 1000, heldout_samples: int = 1000, seed: int = 0,
                 max_new_tokens: int = 8, batch_size: int = 128):
        for key, value in (("fitness_samples", fitness_samples), ("heldout_samples", heldout_samples),
                           ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"toy_ja_math: {key} must be a positive integer, got {value!r}")
        self.samples = {"fitness": fitness_samples, "heldout": heldout_samples}
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.design = compose_world.DEFAULT
        self._records: dict[str, list[dict[str, str]]] = {}

    def records(self, split: str) -> list[dict[str, str]]:
        """The split's item list: a seeded sample of at most ``*_samples`` items, fixed per round."""
        if split not in self.samples:
            raise ConfigError(f"toy_ja_math has splits 'fitness' and 'heldout', not '{split}'")
        if split not in self._records:
            records = self.design.target_items(split)
            n = self.samples[split]
            if n < len(records):
                records = random.Random(self.sample_seed(split)).sample(records, n)
            self._records[split] = records
        return self._records[split]

    def num_items(self, split: str) -> int:
        return len(self.records(split))

    def forget(self, split: str) -> None:
        self._records.pop(split, None)

    def validate(self) -> None:
        fit, held = (self.design.split_facts(s) for s in ("fitness", "heldout"))
        if {f.pair for f in fit} & {f.pair for f in held}:
            raise ConfigError("toy_ja_math: the fitness and held-out items share an operand pair")

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        records = self.records(split)
        if items is not None:
            bad = [i for i in items if not 0 <= i < len(records)]
            if bad:
                raise ConfigError(f"toy_ja_math: item indices {bad[:3]} are outside 0..{len(records) - 1}")
            records = [records[i] for i in items]
        prompts = [self.design.ja_prompt(r["question"]) for r in records]
        outs = generate_texts(handle.model, handle.tokenizer, prompts,
                              max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        numbers = [japanese_form_number(o) for o in outs]
        scores = [float(n is not None and n == int(r["answer"])) for n, r in zip(numbers, records)]
        # the number alone, in any form: tells "wrong number" from "right number, not in Japanese"
        bare = [normalise(o).split(" ", 1)[0] == r["answer"] for o, r in zip(outs, records)]
        n = max(1, len(records))
        accuracy = sum(scores) / n
        metrics = {"fitness": accuracy, "accuracy": accuracy,
                   "japanese_rate": sum(x is not None for x in numbers) / n,
                   "number_rate": sum(bare) / n, "n": float(len(records))}
        for op, word in OP_NAMES.items():  # where composition happens: per operation
            of_op = [x for x, r in zip(scores, records) if r["op"] == op]
            if of_op:
                metrics[f"accuracy_{word}"] = sum(of_op) / len(of_op)
        return {**metrics, "item_scores": scores}
