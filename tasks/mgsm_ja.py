"""mgsm_ja: Japanese grade-school math, answered in Japanese (EvoLLM-JP's fitness and benchmark).

The model gets the paper's code's zero-shot prompt holding the question (``ja-alpaca-cot`` in
SakanaAI/evolutionary-model-merge: a Japanese Alpaca-style instruction asking for a step-by-step
answer in Japanese) and writes a solution greedily, at most 1,024 new tokens, cut where it writes
one of that code's stop strings (``Instruction:``, ``Instruction``, ``Response:``, ``Response``).
A response counts when the number read from it equals the answer AND the response is Japanese
by fastText lid.176 (P(ja) > 0.5), the paper's rule against models that solve the problem in
English. ``reader`` picks how the number is read: ``paper`` (default: the last ``\\d*\\.?\\d+``, as
the paper's code reads it) or ``strict`` (signs and thousands commas read); the rules are in
``evomm.text.mgsm``, and ``evomm.metrics.mgsm_ja_correct`` is the same per-item score.

Data:
  * held-out split ``test``: MGSM's Japanese test set (hub ``juletxara/mgsm``, config ``ja``,
    250 items, fields ``question`` and ``answer_number``), or a local JSONL file;
  * fitness split ``fitness``: the paper used its Japanese translation of the other 1069 GSM8K
    test problems (hub ``SakanaAI/gsm8k-ja-test_250-1319``, split ``test``), or a local JSONL file.
Local JSONL records are ``{"question": ..., "answer": ...}`` (``answer_number`` is accepted too;
a GSM8K-style answer "... #### 72" is read after the ``####``). The two splits must not share a
question (compared after NFKC, lower-casing and removing whitespace): the task refuses to run
otherwise. Hub datasets are loaded lazily, on first use.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.stops import cut_at_stop
from evomm.text.mgsm import READERS, Judgement, judge, read_number_strict
from evomm.tasks.base import Resampling, pick

# The paper's evaluation prompt (its "ja-alpaca-cot" template), with {question} for its {input};
# the tokenizer adds the BOS token, as the paper's vLLM runs did.
DEFAULT_TEMPLATE = (
    "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
    "一歩一歩考えましょう。\n\n### 指示:\n{question}\n\n### 応答:"
)
# The paper's code stops generation at these (vLLM: the text is cut before the first one).
DEFAULT_STOPS = ("Instruction:", "Instruction", "Response:", "Response")


def question_key(question: str) -> str:
    """What two questions must differ in to count as different (overlap check)."""
    return "".join(unicodedata.normalize("NFKC", question).lower().split())


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Cut a response where the model starts a new prompt section (e.g. '### 問題')."""
    return cut_at_stop(text, stop_strings)


def _parse_answer(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: the answer must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    if "####" in text:  # GSM8K-style worked answer
        text = text.rsplit("####", 1)[1]
    number = read_number_strict(text)  # the data's own answer: signs and thousands commas count
    if number is None:
        raise ConfigError(f"{where}: the answer {value!r} holds no number")
    return number


def _record(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object with 'question' and 'answer'")
    if not isinstance(raw.get("question"), str) or not raw["question"].strip():
        raise ConfigError(f"{where}: missing or empty field 'question'")
    if raw.get("answer_number") is not None:
        answer = _parse_answer(raw["answer_number"], where)
    elif raw.get("answer") is not None:
        answer = _parse_answer(raw["answer"], where)
    else:
        raise ConfigError(f"{where}: missing field 'answer' (or 'answer_number')")
    return {"question": raw["question"].strip(), "answer": answer}


def _looks_local(source: str) -> bool:
    return (source.endswith((".jsonl", ".json")) or source.startswith(("/", ".", "~"))
            or Path(source).expanduser().exists())


def load_records(source: str, *, config: str | None, split: str, what: str) -> list[dict[str, Any]]:
    """Records {question, answer: float} from a local JSONL file or a hub dataset."""
    if not isinstance(source, str) or not source:
        raise ConfigError(f"mgsm_ja: {what}_dataset must be a hub id or a JSONL path, got {source!r}")
    if _looks_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"mgsm_ja: {what}_dataset {path} is not a file (give a JSONL file "
                              "of {\"question\", \"answer\"} records or a hub dataset id)")
        records = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
            records.append(_record(raw, f"{path}, line {lineno}"))
    else:
        import datasets  # imported here: loading it is slow and only hub data needs it

        try:
            data = datasets.load_dataset(source, name=config, split=split)
        except Exception as err:  # offline, unknown id, unknown config/split: all user-fixable
            raise ConfigError(
                f"mgsm_ja: could not load the {what} dataset {source!r} (config {config!r}, split "
                f"{split!r}) from the Hugging Face hub ({type(err).__name__}: {err}); check the id "
                "and the network, or give a local JSONL file of {\"question\", \"answer\"} records"
            ) from None
        records = [_record(dict(row), f"{source} row {i}") for i, row in enumerate(data)]
    if not records:
        raise ConfigError(f"mgsm_ja: the {what} dataset {source!r} holds no records")
    return records


class MGSMJaTask(Resampling):
    """Japanese math word problems; fitness = accuracy (right number and Japanese)."""

    name = "mgsm_ja"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "test"

    def __init__(
        self,
        heldout_dataset: str = "juletxara/mgsm",
        heldout_config: str | None = "ja",
        heldout_hub_split: str = "test",
        fitness_dataset: str = "SakanaAI/gsm8k-ja-test_250-1319",
        fitness_config: str | None = None,
        fitness_hub_split: str = "test",
        fitness_samples: int | None = None,
        heldout_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        max_new_tokens: int = 1024,
        num_beams: int = 1,
        prompt_template: str | None = None,
        stop_strings: Sequence[str] | None = DEFAULT_STOPS,
        reader: str = "paper",
        fast_generation: bool = True,
    ):
        if reader not in READERS:
            raise ConfigError(f"mgsm_ja: reader must be one of {sorted(READERS)} (paper: the paper's "
                              f"number reading; strict: signs and thousands commas read), got {reader!r}")
        for key, value in (("fitness_samples", fitness_samples), ("heldout_samples", heldout_samples)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"mgsm_ja: {key} must be a positive integer or null (all), got {value!r}")
        for key, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                           ("num_beams", num_beams)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"mgsm_ja: {key} must be a positive integer, got {value!r}")
        prompt_template = DEFAULT_TEMPLATE if prompt_template is None else prompt_template
        if not isinstance(prompt_template, str) or "{question}" not in prompt_template:
            raise ConfigError("mgsm_ja: prompt_template must contain '{question}' where the question goes")
        self.sources = {
            self.fitness_split: (fitness_dataset, fitness_config, fitness_hub_split, fitness_samples),
            self.heldout_split: (heldout_dataset, heldout_config, heldout_hub_split, heldout_samples),
        }
        self.seed = seed
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.prompt_template = prompt_template
        self.stop_strings = list(stop_strings or [])
        self.reader = reader
        self.fast_generation = bool(fast_generation)  # False: plain model.generate
        self._all: dict[str, list[dict[str, Any]]] = {}
        self._items: dict[str, list[dict[str, Any]]] = {}
        self.last_responses: list[str] = []

    # -- data ---------------------------------------------------------------------------------

    def _check_split(self, split: str) -> None:
        if split not in self.sources:
            raise ConfigError(
                f"mgsm_ja has splits '{self.fitness_split}' and '{self.heldout_split}', not '{split}'"
            )

    def _records(self, split: str) -> list[dict[str, Any]]:
        if split not in self._all:
            source, config, hub_split, _ = self.sources[split]
            what = "fitness" if split == self.fitness_split else "heldout"
            self._all[split] = load_records(source, config=config, split=hub_split, what=what)
        return self._all[split]

    def validate(self) -> None:
        """Load both splits and refuse questions that appear in both."""
        fit = {question_key(r["question"]): r["question"] for r in self._records(self.fitness_split)}
        held = {question_key(r["question"]) for r in self._records(self.heldout_split)}
        shared = sorted(k for k in fit if k in held)
        if shared:
            raise ConfigError(
                f"mgsm_ja: {len(shared)} question(s) of the fitness data are also in the held-out "
                f"data (e.g. {fit[shared[0]]!r}); give a fitness_dataset disjoint from the held-out set"
            )

    def items(self, split: str) -> list[dict[str, Any]]:
        """The scored items of ``split``: a seeded sample (in dataset order) of at most *_samples."""
        self._check_split(split)
        if split not in self._items:
            self.validate()  # never score anything while the splits overlap
            records = self._records(split)
            n = self.sources[split][3]
            if n is not None and n < len(records):
                keep = sorted(random.Random(self.sample_seed(split)).sample(range(len(records)), n))
                records = [records[i] for i in keep]
            self._items[split] = records
        return self._items[split]

    def forget(self, split: str) -> None:
        self._items.pop(split, None)

    def prompt(self, question: str) -> str:
        return self.prompt_template.replace("{question}", question)

    # -- scoring ------------------------------------------------------------------------------

    def num_items(self, split: str) -> int:
        return len(self.items(split))

    def responses(self, handle: LLMHandle, split: str, records: list[dict[str, Any]] | None = None) -> list[str]:
        records = self.items(split) if records is None else records
        prompts = [self.prompt(r["question"]) for r in records]
        texts = generate_texts(handle.model, handle.tokenizer, prompts,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                               num_beams=self.num_beams, stop_strings=self.stop_strings,
                               fast=self.fast_generation)
        return texts  # already cut at the stop strings (and the fast path stops there)

    def score_item(self, response: str, record: dict[str, Any]) -> Judgement:
        """One response: ``.correct`` (right number and Japanese) is the item's score."""
        return judge(response, record["answer"], self.reader)

    def score(self, responses: list[str], records: list[dict[str, Any]]) -> dict:
        if len(responses) != len(records):
            raise ValueError(f"{len(responses)} responses for {len(records)} records")
        n = len(records)
        judged = [self.score_item(r, rec) for r, rec in zip(responses, records)]
        item_scores = [float(j.correct) for j in judged]
        accuracy = sum(j.correct for j in judged) / n
        return {
            "fitness": accuracy,
            "accuracy": accuracy,
            "answer_accuracy": sum(j.right_number for j in judged) / n,  # right number, any language
            "japanese_rate": sum(j.japanese for j in judged) / n,
            "n": float(n),
            "item_scores": item_scores,
        }

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        records = pick(self.items(split), items, self.name)
        self.last_responses = self.responses(handle, split, records)
        return self.score(self.last_responses, records)
