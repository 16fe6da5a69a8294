"""toy_vqa_skills and toy_ja_vqa: the toy VLM world's fitness and its Japanese-VQA target.

The toy VLM world (``evomm.toy.vlm_world``) is EvoVLM-JP in miniature: a tiny LLaVA answers
English questions about shape images, a Japanese LM fine-tuned from the same base answers Japanese
questions about things, and the paper's target is Japanese questions about the images.

``toy_vqa_skills`` (the fitness): keep both parents' skills in one VLM. It scores
  * ``english_vqa``: ``<image>\\nq: what colour is the shape? a:`` -> ``red`` on the world's English
    VQA folder (JA-VG-VQA-500 layout, first QA per image), and
  * ``japanese_qa``: ``問: りんご は 何色 ですか? 答:`` -> ``赤``, text only, through the VLM's
    language model;
both as ROUGE-L over MeCab tokens with the Japanese rule (``evomm.text.rouge_ja``), and
fitness = their mean. A tiny model does not compose the two skills (see ``toy_ja_vqa``), but a
merge can keep both, which is what this fitness rewards.

``toy_ja_vqa`` (evaluation only, for ``final_eval.extra_tasks``): the target, Japanese questions
about the same images (``<image>\\n問: これ は 何色 ですか? 答:`` -> ``赤``), scored exactly like
``ja_vg_vqa`` (it is ``ja_vg_vqa`` on the world's Japanese VQA folder with the world's prompt),
plus ``right_in_english``: the share of answers naming the right colour or shape in English.

Data: ``data_dir`` null means the built-in world, written once under
``$EVOMM_HOME/data/toy-vlm-world``; otherwise a folder laid out as ``vlm_world.write_world``
writes it (en_vqa/, ja_vqa/, ja_qa/, each with train.jsonl = fitness and test.jsonl = held-out).
Greedy generation, seeded samples: the same model always gets the same score.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from evomm.adapters.base import VLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.text.rouge_ja import normalize
from evomm.toy import vlm_world
from evomm.tasks.base import Resampling, balanced_weights
from evomm.tasks.ja_vg_vqa import JaVGVQATask, check_samples

SKILLS = ("english_vqa", "japanese_qa")
SPLIT_FILES = {"fitness": "train", "heldout": "test"}  # our split -> the folders' file stem


def world_path(data_dir: str | None) -> Path:
    """The world folder (not written yet when built-in: see ``ensure_world``)."""
    if data_dir is None:
        return vlm_world.builtin_world_path()
    return Path(data_dir).expanduser()


def ensure_world(data_dir: str | None, folder: str) -> Path:
    """``<world>/<folder>``, writing the built-in world first if needed; a user folder must exist."""
    root = vlm_world.world_dir() if data_dir is None else world_path(data_dir)
    path = root / folder
    if not path.is_dir():
        raise ConfigError(
            f"data_dir {root} has no {folder}/ folder; write one with "
            "evomm.toy.vlm_world.write_world(<dir>), or set data_dir to null for the built-in world"
        )
    return path


def _check_data_dir(task: str, data_dir) -> None:
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir):
        raise ConfigError(f"{task}: data_dir must be a folder path or null, got {data_dir!r}")


def _positive(task: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{task}: {key} must be a positive integer, got {value!r}")


class ToyVQASkillsTask(Resampling):
    """Mean of English VQA (on images) and Japanese text Q/A, both ROUGE-L (MeCab)."""

    name = "toy_vqa_skills"
    modality = "vlm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(
        self,
        data_dir: str | None = None,
        fitness_samples: int | None = None,
        heldout_samples: int | None = None,
        seed: int = 0,
        max_new_tokens: int = 10,
        batch_size: int = 64,
        fast_generation: bool = True,
    ):
        _check_data_dir(self.name, data_dir)
        check_samples(self.name, "fitness_samples", fitness_samples)
        check_samples(self.name, "heldout_samples", heldout_samples)
        _positive(self.name, "max_new_tokens", max_new_tokens)
        _positive(self.name, "batch_size", batch_size)
        self.data_dir = data_dir
        self.samples = {"fitness": fitness_samples, "heldout": heldout_samples}
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fast_generation = bool(fast_generation)  # False: plain model.generate
        # English VQA is ja_vg_vqa on the English folder, asked with the world's English prompt.
        self._vqa = JaVGVQATask(
            dataset=str(world_path(data_dir) / "en_vqa"),
            fitness_samples=fitness_samples,
            heldout_samples=heldout_samples,
            seed=seed,
            batch_size=batch_size,
            system_prompt=None,
            prompt=vlm_world.EN_VQA_PROMPT,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            repetition_penalty=1.0,
            fast_generation=fast_generation,
        )
        self._qa: dict[str, list[dict[str, str]]] = {}

    def resample(self, round_: int) -> None:
        super().resample(round_)
        self._vqa.resample(round_)  # its fitness split is the English VQA half of ours

    def forget(self, split: str) -> None:
        self._qa.pop(split, None)

    def _check_split(self, split: str) -> None:
        if split not in self.samples:
            raise ConfigError(f"{self.name} has splits 'fitness' and 'heldout', not '{split}'")

    def vqa_items(self, split: str):
        """English VQA items of ``split`` (a seeded sample when *_samples is set)."""
        self._check_split(split)
        ensure_world(self.data_dir, "en_vqa")
        return self._vqa.items(SPLIT_FILES[split])

    def qa_items(self, split: str) -> list[dict[str, str]]:
        """Japanese Q/A records ``{"question", "answer"}`` of ``split`` (seeded sample, data order)."""
        self._check_split(split)
        if split not in self._qa:
            path = ensure_world(self.data_dir, "ja_qa") / f"{SPLIT_FILES[split]}.jsonl"
            if not path.is_file():
                raise ConfigError(f"{self.name}: {path} does not exist; write the world with vlm_world.write_world")
            records = []
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
                if not isinstance(rec, dict) or not {"question", "answer"} <= set(rec):
                    raise ConfigError(f"{path}, line {lineno}: expected a record with question and answer")
                records.append({"question": str(rec["question"]), "answer": str(rec["answer"])})
            n = self.samples[split]
            if n is not None and n < len(records):
                keep = sorted(random.Random(self.sample_seed(split)).sample(range(len(records)), n))
                records = [records[i] for i in keep]
            self._qa[split] = records
        return self._qa[split]

    def validate(self) -> None:
        """Both splits of both skills load; the splits share no image and no question."""
        ensure_world(self.data_dir, "en_vqa")
        self._vqa.validate()  # loads en_vqa train/test and the scorer; refuses shared image ids
        fit, held = self.vqa_items("fitness"), self.vqa_items("heldout")
        shared_images = {it.load_image().tobytes() for it in fit} & {it.load_image().tobytes() for it in held}
        if shared_images:
            raise ConfigError(f"{self.name}: {len(shared_images)} images appear in both splits of en_vqa")
        qa_fit = {r["question"] for r in self.qa_items("fitness")}
        qa_held = {r["question"] for r in self.qa_items("heldout")}
        if qa_fit & qa_held:
            raise ConfigError(f"{self.name}: ja_qa questions appear in both splits, e.g. {sorted(qa_fit & qa_held)[0]}")

    def japanese_answers(self, handle: VLMHandle, split: str, records: list[dict[str, str]] | None = None) -> list[str]:
        """The VLM's answers to the Japanese text questions (no image), in order."""
        records = self.qa_items(split) if records is None else records
        prompts = [vlm_world.JA_QA_PROMPT.format(question=r["question"]) for r in records]
        return generate_texts(handle.model, handle.processor.tokenizer, prompts,
                              max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed,
                              fast=self.fast_generation)

    def num_items(self, split: str) -> int:
        """English VQA items first, then the Japanese Q/A items."""
        return len(self.vqa_items(split)) + len(self.qa_items(split))

    def evaluate(self, handle: VLMHandle, split: str, items: list[int] | None = None) -> dict:
        """Fitness = mean of the two skills' ROUGE-L. Items are the English VQA items, then the
        Japanese Q/A items; each item's ROUGE-L is weighted by ``balanced_weights`` so that the
        mean of ``item_scores`` over all items is the fitness (the skills differ in size)."""
        self._check_split(split)
        n_vqa, n_qa = len(self.vqa_items(split)), len(self.qa_items(split))
        chosen = list(range(n_vqa + n_qa)) if items is None else [int(i) for i in items]
        if any(not 0 <= i < n_vqa + n_qa for i in chosen):
            raise IndexError(f"{self.name}: item indices outside 0..{n_vqa + n_qa - 1}")
        vqa_at = [i for i in chosen if i < n_vqa]
        qa_at = [i - n_vqa for i in chosen if i >= n_vqa]
        per_item: dict[int, float] = {}
        metrics: dict = {}
        if vqa_at:
            vqa = self._vqa.evaluate(handle, SPLIT_FILES[split], vqa_at)
            metrics["english_vqa"] = vqa["rouge_l"]
            per_item.update(zip(vqa_at, vqa["item_scores"]))
        if qa_at:
            records = [self.qa_items(split)[i] for i in qa_at]
            answers = [a.strip() for a in self.japanese_answers(handle, split, records)]
            qa = self._vqa.scoring.score_pairs(answers, [r["answer"] for r in records])
            metrics["japanese_qa"] = qa["rouge_l"]
            per_item.update((n_vqa + i, v) for i, v in zip(qa_at, qa["item_scores"]))
        w_vqa, w_qa = balanced_weights([n_vqa, n_qa])
        item_scores = [per_item[i] * (w_vqa if i < n_vqa else w_qa) for i in chosen]
        if items is None:
            metrics["fitness"] = sum(metrics[s] for s in SKILLS) / len(SKILLS)
        else:
            metrics["fitness"] = sum(item_scores) / len(item_scores)
        return {**metrics, "item_scores": item_scores}


class ToyJaVQATask(JaVGVQATask):
    """The target: ja_vg_vqa on the toy world's Japanese VQA folder, asked with its prompt."""

    name = "toy_ja_vqa"

    def __init__(
        self,
        data_dir: str | None = None,
        fitness_samples: int | None = None,
        heldout_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        max_new_tokens: int = 10,
        fast_generation: bool = True,
    ):
        _check_data_dir(self.name, data_dir)
        self.data_dir = data_dir
        super().__init__(
            dataset=str(world_path(data_dir) / "ja_vqa"),
            fitness_samples=fitness_samples,
            heldout_samples=heldout_samples,
            seed=seed,
            batch_size=batch_size,
            system_prompt=None,
            prompt=vlm_world.JA_VQA_PROMPT,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            repetition_penalty=1.0,
            fast_generation=fast_generation,
        )

    def items(self, split: str):
        ensure_world(self.data_dir, "ja_vqa")
        return super().items(split)

    def evaluate(self, handle: VLMHandle, split: str, items: list[int] | None = None) -> dict:
        """ja_vg_vqa's metrics plus ``right_in_english``: the share of answers that name the right
        colour or shape in English (the model sees, but answers in the wrong language; the
        Japanese rule scores those 0)."""
        metrics = super().evaluate(handle, split, items)
        english = {c.ja: c.en for c in vlm_world.COLOURS} | {s.ja: s.en for s in vlm_world.SHAPES}
        records = self.scoring.last_records
        metrics["right_in_english"] = sum(
            normalize(r["prediction"]) == english.get(r["answer"]) for r in records
        ) / len(records)
        return metrics
