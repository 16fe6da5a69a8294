"""toy_arith: arithmetic asked and answered in Japanese, the toy analogue of MGSM-JA.

Each item is a Japanese question ("問: 3 たす 4 は いくつ ですか?") and its number ("7"). The model
gets the question followed by "答:" and must answer in the Japanese form "7 です": a response
counts only when, after normalisation, it is exactly ``<number> です`` with the right number (the
paper's rule "right number AND in Japanese", made exact for a world with one answer form).

Data comes from ``evomm.toy.world`` (fitness and held-out splits share no operand pair), or from
a folder holding ``fitness.jsonl`` and ``heldout.jsonl`` with ``{"question", "answer"}`` records
(``answer`` an integer; the prompt is the question followed by " 答:"). ``seed`` picks the
``*_samples`` items scored from each split; the built-in split itself is fixed.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.toy import world
from evomm.tasks.base import Resampling, pick

_JA_FORM = re.compile(r"^(-?\d+) です$")


def normalise(text: str) -> str:
    """NFKC, first line only, whitespace collapsed, trailing "。" / "." dropped."""
    text = unicodedata.normalize("NFKC", text).strip().split("\n", 1)[0]
    text = " ".join(text.split())
    return text.rstrip("。.").rstrip()


def japanese_form_number(response: str) -> int | None:
    """The number of a response written as ``<number> です``, else None."""
    match = _JA_FORM.match(normalise(response))
    return int(match.group(1)) if match else None


def is_correct(response: str, answer: int | str) -> bool:
    return japanese_form_number(response) == int(answer)


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(
            f"toy_arith data_dir needs {path.name}: {path} does not exist "
            "(put fitness.jsonl and heldout.jsonl there, or set data_dir to null)"
        )
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{where}: expected a JSON object with 'question' and 'answer'")
        for field in ("question", "answer"):
            if field not in rec:
                raise ConfigError(f"{where}: missing field '{field}'")
        answer = str(rec["answer"]).strip()
        if not re.fullmatch(r"-?\d+", answer):
            raise ConfigError(f"{where}: field 'answer' must be an integer, got {rec['answer']!r}")
        records.append({"question": str(rec["question"]).strip(), "answer": answer})
    if not records:
        raise ConfigError(f"{path} holds no records")
    return records


class ToyArithTask(Resampling):
    """Japanese arithmetic on the toy world's models; fitness = exact-match accuracy."""

    name = "toy_arith"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(
        self,
        fitness_samples: int = 64,
        heldout_samples: int = 1000,
        seed: int = 0,
        max_new_tokens: int = 8,
        batch_size: int = 64,
        data_dir: str | None = None,
        fast_generation: bool = True,
    ):
        for key, value in (("fitness_samples", fitness_samples),
                           ("heldout_samples", heldout_samples),
                           ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"toy_arith: {key} must be a positive integer, got {value!r}")
        self.fitness_samples = fitness_samples
        self.heldout_samples = heldout_samples
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.fast_generation = bool(fast_generation)  # False: plain model.generate
        self.data_dir = None if data_dir is None else Path(data_dir)
        self._items: dict[str, list[dict[str, str]]] = {}

    # -- data ---------------------------------------------------------------------------------

    def _load(self, split: str) -> list[dict[str, str]]:
        if split not in (self.fitness_split, self.heldout_split):
            raise ConfigError(
                f"toy_arith has splits '{self.fitness_split}' and '{self.heldout_split}', "
                f"not '{split}'"
            )
        if self.data_dir is None:
            return world.target_split(split)
        if not self.data_dir.is_dir():
            raise ConfigError(f"toy_arith data_dir {self.data_dir} is not a folder")
        return _read_jsonl(self.data_dir / f"{split}.jsonl")

    def items(self, split: str) -> list[dict[str, str]]:
        """The scored items of ``split``: a seeded sample of at most ``*_samples`` records."""
        if split not in self._items:
            records = self._load(split)
            n = self.fitness_samples if split == self.fitness_split else self.heldout_samples
            if n < len(records):
                records = random.Random(self.sample_seed(split)).sample(records, n)
            self._items[split] = records
        return self._items[split]

    def forget(self, split: str) -> None:
        self._items.pop(split, None)

    def validate(self) -> None:
        fit = self._load(self.fitness_split)
        held = self._load(self.heldout_split)
        shared = {r["question"] for r in fit} & {r["question"] for r in held}
        if shared:
            example = next(iter(sorted(shared)))
            raise ConfigError(
                f"toy_arith: {len(shared)} questions are in both the fitness and the held-out "
                f"split (e.g. {example!r}); make the splits disjoint"
            )

    # -- scoring ------------------------------------------------------------------------------

    def num_items(self, split: str) -> int:
        return len(self.items(split))

    def responses(self, handle: LLMHandle, split: str, records: list[dict[str, str]] | None = None) -> list[str]:
        records = self.items(split) if records is None else records
        prompts = [world.target_prompt(r["question"]) for r in records]
        return generate_texts(handle.model, handle.tokenizer, prompts,
                              max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                              fast=self.fast_generation)

    def score(self, responses: list[str], records: list[dict[str, str]]) -> dict[str, float]:
        correct = sum(is_correct(r, rec["answer"]) for r, rec in zip(responses, records))
        ja_form = sum(japanese_form_number(r) is not None for r in responses)
        n = len(records)
        accuracy = correct / n
        return {"fitness": accuracy, "accuracy": accuracy, "japanese_rate": ja_form / n,
                "n": float(n)}

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        records = pick(self.items(split), items, self.name)
        responses = self.responses(handle, split, records)
        item_scores = [float(is_correct(r, rec["answer"])) for r, rec in zip(responses, records)]
        return {**self.score(responses, records), "item_scores": item_scores}
