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
from evomm.tasks.base import Resampling, balanced_weights, pick
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

    def item_list(self, split: str) -> list[tuple[str, str, str]]:
        """Every scored item of ``split`` as (skill, prompt, expected): each skill's sample in turn."""
        return [(skill, p, e) for skill in SKILLS for p, e in self.items(skill, split)]

    def num_items(self, split: str) -> int:
        return len(self.item_list(split))

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        """Fitness = mean of the skills' accuracies. Item k of skill s scores ``correct * w_s``
        (``balanced_weights``): the skills' samples differ in size, and this way the mean of the
        item scores over the whole sample is the fitness, and over a subset an estimate of it."""
        everything = self.item_list(split)
        weight = dict(zip(SKILLS, balanced_weights([sum(it[0] == s for it in everything) for s in SKILLS])))
        chosen = pick(everything, items, self.name)
        correct = [0.0] * len(chosen)
        metrics: dict = {}
        for skill in SKILLS:
            where = [i for i, it in enumerate(chosen) if it[0] == skill]
            if not where:
                continue
            outs = generate_texts(handle.model, handle.tokenizer, [chosen[i][1] for i in where],
                                  max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                  fast=self.fast_generation)
            for i, out in zip(where, outs):
                correct[i] = float(normalise(out) == normalise(chosen[i][2]))
            metrics[skill] = sum(correct[i] for i in where) / len(where)
        item_scores = [c * weight[it[0]] for c, it in zip(correct, chosen)]
        if items is None:  # exactly the mean of the skills, as before (no float drift)
            metrics["fitness"] = sum(metrics[s] for s in SKILLS) / len(SKILLS)
        else:
            metrics["fitness"] = sum(item_scores) / len(item_scores)
        return {**metrics, "item_scores": item_scores}
