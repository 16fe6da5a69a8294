"""ja_vlm_bench: JA-VLM-Bench-In-the-Wild, an evaluation-only Japanese VQA benchmark.

42 images and 50 free-form Japanese questions about Japanese scenes (test split only). Scored
exactly like ``ja_vg_vqa`` (the paper's rules, ``evomm.text.rouge_ja``): ROUGE-L over MeCab words
of the neologdn-normalised, emoji-free texts, 0 for an answer fastText lid.176 does not find
Japanese when it finds the reference Japanese. The benchmark has no training split, so it reports
on a model and must never be the search's fitness: ``validate()`` refuses that unless
``allow_heldout_fitness`` is set.
"""

from __future__ import annotations

from evomm.adapters.base import VLMHandle
from evomm.data.vqa import JA_SYSTEM_PROMPT, VQAItem, load_vqa
from evomm.errors import ConfigError
from evomm.tasks.base import pick
from evomm.tasks.ja_vg_vqa import (
    GenerationSettings,
    VQAScoring,
    check_prompt,
    check_samples,
    generate_answers,
)


class JaVLMBenchTask:
    """JA-VLM-Bench-In-the-Wild (test only); fitness = mean ROUGE-L (MeCab)."""

    name = "ja_vlm_bench"
    modality = "vlm"
    fitness_split = "test"  # the only split; using it for fitness needs allow_heldout_fitness
    heldout_split = "test"
    layout = "ja_vlm_bench"

    def __init__(
        self,
        dataset: str = "SakanaAI/JA-VLM-Bench-In-the-Wild",
        heldout_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 4,
        system_prompt: str | None = JA_SYSTEM_PROMPT,
        prompt: str | None = None,
        max_new_tokens: int = 512,
        num_beams: int = 5,
        repetition_penalty: float = 1.5,
        do_sample: bool = False,
        lang_id_model: str | None = None,
        allow_heldout_fitness: bool = False,
    ):
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError(f"{self.name}: dataset must be a hub id or a local folder, got {dataset!r}")
        check_samples(self.name, "heldout_samples", heldout_samples)
        check_prompt(self.name, prompt)
        self.dataset = dataset
        self.heldout_samples = heldout_samples
        self.seed = seed
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.settings = GenerationSettings(max_new_tokens, num_beams, repetition_penalty, do_sample, seed, batch_size)
        self.settings.check(self.name)
        self.allow_heldout_fitness = bool(allow_heldout_fitness)
        self.scoring = VQAScoring(lang_id_model)
        self._items: list[VQAItem] | None = None

    def items(self, split: str = "test") -> list[VQAItem]:
        if split != self.heldout_split:
            raise ConfigError(f"{self.name} has only the '{self.heldout_split}' split, not '{split}'")
        if self._items is None:
            self._items = load_vqa(self.dataset, split, self.layout, self.heldout_samples, self.seed)
        return self._items

    def validate(self, fitness: bool = True) -> None:
        """Check the data and the scorer; as a fitness task (the default) refuse unless allowed.

        Call ``validate(fitness=False)`` when the task only reports on a finished model.
        """
        if fitness and not self.allow_heldout_fitness:
            raise ConfigError(
                f"{self.name} has only a test split: it evaluates models and must not be the search's "
                "fitness. Use ja_vg_vqa as the fitness task and this one for evaluation, or set "
                "allow_heldout_fitness=true to evolve on the benchmark anyway"
            )
        self.scoring.scorer()
        self.items(self.heldout_split)

    def num_items(self, split: str = "test") -> int:
        return len(self.items(split))

    def evaluate(self, handle: VLMHandle, split: str = "test", items: list[int] | None = None) -> dict:
        items = pick(self.items(split), items, self.name)
        answers = generate_answers(handle, items, self.settings, self.system_prompt, self.prompt)
        return self.scoring.score(items, answers)
