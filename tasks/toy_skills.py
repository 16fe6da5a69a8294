"""toy_skills: keep both parents' skills in one model — English arithmetic and Japanese Q/A.

The toy world's math expert answers "q: what is 3 plus 4? a:" and its Japanese expert answers
"問: いぬ の あし は いくつ ですか? 答:"; each is poor at the other's skill. Fitness is the mean
exact-match accuracy over the two skills, so a model scores well only when it keeps both — the
multi-skill merge the paper's EvoLLM-JP is after, on a scale where it can happen. Each skill's items
are split once, by a seeded shuffle, into a fitness half and a held-out half that share no item.

(Arithmetic asked in Japanese, which needs the two skills to *compose*, is ``toy_arith``; add it
to a run's final evaluation with ``final_eval.extra_tasks``.)
"""

from __future__ import annotations

import random

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.toy import world
from evomm.tasks.base import Resampling
from evomm.tasks.toy_arith import normalise

SKILLS = ("english_arith", "japanese_qa")


def skill_split(skill: str, split: str, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, expected response) pairs of one skill's half: even positions of a seeded shuffle
    are the fitness half, odd positions the held-out half."""
    pairs = sorted(world.eval_sets()[skill])
    random.Random(seed).shuffle(pairs)
    return pairs[0::2] if split == "fitness" else pairs[1::2]


class ToySkillsTask(Resampling):
    name = "toy_skills"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(self, fitness_samples: int = 32, heldout_samples: int = 1000, seed: int = 0,
                 max_new_tokens: int = 8, batch_size: int = 64, fast_generation: bool = True):
        for key, value in (("fitness_samples", fitness_samples), ("heldout_samples", heldout_samples),
                           ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"toy_skills: {key} must be a positive integer, got {value!r}")
        self.samples = {"fitness": fitness_samples, "heldout": heldout_samples}
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fast_generation = bool(fast_generation)  # False: plain model.generate

    def items(self, skill: str, split: str) -> list[tuple[str, str]]:
        """A seeded sample of at most ``*_samples`` items per skill (the split itself is fixed)."""
        if split not in self.samples:
            raise ConfigError(f"toy_skills has splits 'fitness' and 'heldout', not '{split}'")
        pairs = skill_split(skill, split)
        n = self.samples[split]
        return random.Random(self.sample_seed(split)).sample(pairs, n) if n < len(pairs) else pairs

    def validate(self) -> None:
        for skill in SKILLS:
            fit, held = set(skill_split(skill, "fitness")), set(skill_split(skill, "heldout"))
            if fit & held:
                raise ConfigError(f"toy_skills: {skill} items appear in both splits")

    def evaluate(self, handle: LLMHandle, split: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for skill in SKILLS:
            pairs = self.items(skill, split)
            outs = generate_texts(handle.model, handle.tokenizer, [p for p, _ in pairs],
                                  max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                  fast=self.fast_generation)
            metrics[skill] = sum(normalise(o) == normalise(e) for o, (_, e) in zip(outs, pairs)) / len(pairs)
        metrics["fitness"] = sum(metrics[s] for s in SKILLS) / len(SKILLS)
        return metrics
