"""toy_skill: one skill of the toy world (English arithmetic or Japanese Q/A) as its own task.

``toy_skills`` averages the two skills into one number; this task scores one of them, so that a
multi-objective run (``task=multi``) can keep them as separate objectives. With the same
``seed`` and ``fitness_samples`` it scores exactly the items ``toy_skills`` scores for that skill,
so the mean of the two ``toy_skill`` objectives is ``toy_skills``' fitness.
"""

from __future__ import annotations

import random

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.tasks.base import Resampling
from evomm.tasks.toy_arith import normalise
from evomm.tasks.toy_skills import SKILLS, skill_split


class ToySkillTask(Resampling):
    name = "toy_skill"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(self, skill: str = "english_arith", fitness_samples: int = 32, heldout_samples: int = 1000,
                 seed: int = 0, max_new_tokens: int = 8, batch_size: int = 64):
        if skill not in SKILLS:
            raise ConfigError(f"toy_skill: skill must be one of {', '.join(SKILLS)}, got {skill!r}")
        for key, value in (("fitness_samples", fitness_samples), ("heldout_samples", heldout_samples),
                           ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"toy_skill: {key} must be a positive integer, got {value!r}")
        self.skill = skill
        self.samples = {"fitness": fitness_samples, "heldout": heldout_samples}
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def items(self, split: str) -> list[tuple[str, str]]:
        """(prompt, expected) pairs: a seeded sample of the skill's half, as ``toy_skills`` draws it."""
        if split not in self.samples:
            raise ConfigError(f"toy_skill has splits 'fitness' and 'heldout', not '{split}'")
        pairs = skill_split(self.skill, split)
        n = self.samples[split]
        return random.Random(self.sample_seed(split)).sample(pairs, n) if n < len(pairs) else pairs

    def num_items(self, split: str) -> int:
        return len(self.items(split))

    def validate(self) -> None:
        if set(skill_split(self.skill, "fitness")) & set(skill_split(self.skill, "heldout")):
            raise ConfigError(f"toy_skill: {self.skill} items appear in both splits")

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        pairs = self.items(split)
        if items is not None:
            pairs = [pairs[i] for i in items]
        outs = generate_texts(handle.model, handle.tokenizer, [p for p, _ in pairs],
                              max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        scores = [float(normalise(o) == normalise(e)) for o, (_, e) in zip(outs, pairs)]
        accuracy = sum(scores) / len(scores)
        return {"fitness": accuracy, "accuracy": accuracy, "n": float(len(scores)), "item_scores": scores}
