"""The composition toy world: Japanese arithmetic that no source model is trained on.

EvoLLM-JP merged a Japanese model with English math models, all fine-tunes of one base, and got
Japanese math that none of them had (MGSM-JA 52.0 against 30.0 for the best source). That can
only happen when the base already holds the bridge between the two skills: the base here is
pre-trained on a bilingual corpus where the languages share what the target needs (the digits,
the operator symbols, parallel sentences and questions) and does a little arithmetic in both
languages, at low skill. Then:

* the **Japanese expert** is fine-tuned on Japanese text, Japanese Q/A ("問: ... 答: 4 です") and
  the base's own Japanese arithmetic: better Japanese, no new arithmetic;
* the **math expert** is fine-tuned on English arithmetic with more operations than the base
  knows ("q: 3 * 4 = 12" in the shipped design): better arithmetic, in English only;
* the **target** asks and answers arithmetic in Japanese ("問: 3 * 4 =" -> "12 です").

How the questions are phrased, how big the bridge is and what each corpus holds are the knobs of
:class:`Design`; ``results/composition_log.md`` records what each setting gave. ``DEFAULT`` is
the shipped design.

Target items are split by *unordered operand pair* into three disjoint sets: ``bridge`` pairs
(their Japanese ``base_ops`` items are in the base's corpus: the little Japanese arithmetic it
knows), ``fitness`` pairs and ``heldout`` pairs (never in any corpus, question or answer).
Everything is deterministic; the only randomness is seeded shuffles.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from evomm.toy import world

# ---------------------------------------------------------------------------------------------
# Arithmetic


@dataclass(frozen=True)
class Op:
    symbol: str  # shared by both languages, like the digits
    en: str      # English word (used when a design spells operators out)
    ja: str      # Japanese word
    fn: Callable[[int, int], int]


OPS: dict[str, Op] = {
    "+": Op("+", "plus", "たす", lambda a, b: a + b),
    "-": Op("-", "minus", "ひく", lambda a, b: a - b),
    "*": Op("*", "times", "かける", lambda a, b: a * b),
}

SPLITS = ("bridge", "fitness", "heldout")
TARGET_SPLITS = ("fitness", "heldout")
ANSWER_CUE = "答:"
JA_SUFFIX = "です"


@dataclass(frozen=True)
class Fact:
    a: int
    op: str
    b: int

    @property
    def result(self) -> int:
        return OPS[self.op].fn(self.a, self.b)

    @property
    def pair(self) -> tuple[int, int]:
        return (min(self.a, self.b), max(self.a, self.b))


def facts(ops: tuple[str, ...], operands: int) -> list[Fact]:
    """Every ``a op b`` with ``0 <= a, b < operands``; subtraction only when a >= b."""
    return [Fact(a, op, b) for op in ops for a in range(operands) for b in range(operands)
            if not (op == "-" and a < b)]


@dataclass(frozen=True)
class Design:
    """One composition world. The fields are the knobs the variants in the log turn."""

    name: str = "shared_symbols"
    operands: int = 10                    # target and base arithmetic: digits 0-9
    math_operands: int = 10               # the math expert's range (>= operands)
    base_ops: tuple[str, ...] = ("+", "-")          # what the base knows, in both languages
    math_ops: tuple[str, ...] = ("+", "-", "*")     # what the math expert adds
    target_ops: tuple[str, ...] = ("+", "-", "*")
    spelled_ops: bool = False             # True: "3 plus 4" / "3 たす 4" instead of "3 + 4"
    aligned: bool = False                 # True: "q: 3 + 4 = ? a:" / "問: 3 + 4 = ? 答:" (same shape)
    inline: bool = False                  # True: "q: 3 + 4 = 7" / "問: 3 + 4 = 7 です" (answer after "=")
    bridge_pairs: int = 15                # operand pairs whose Japanese items the base sees
    target_min_operand: int = 0           # 2: no "x 0" / "x 1" items in the target (trivial answers)
    split_seed: int = 0

    # -- phrasing -------------------------------------------------------------------------------

    def expr(self, f: Fact, lang: str) -> str:
        if not self.spelled_ops:
            return f"{f.a} {f.op} {f.b}"
        return f"{f.a} {getattr(OPS[f.op], lang)} {f.b}"

    def en_question(self, f: Fact) -> str:
        if self.inline:
            return f"q: {self.expr(f, 'en')} ="
        if self.aligned:
            return f"q: {self.expr(f, 'en')} = ?"
        return f"q: what is {self.expr(f, 'en')}?"

    def ja_question(self, f: Fact) -> str:
        if self.inline:
            return f"問: {self.expr(f, 'ja')} ="
        if self.aligned:
            return f"問: {self.expr(f, 'ja')} = ?"
        return f"問: {self.expr(f, 'ja')} は いくつ ですか?"

    def en_prompt(self, question: str) -> str:
        return question if self.inline else f"{question} a:"

    def ja_prompt(self, question: str) -> str:
        """What the model is given for a target question: the question and the answer cue."""
        return question if self.inline else f"{question} {ANSWER_CUE}"

    def en_line(self, f: Fact) -> str:
        return f"{self.en_prompt(self.en_question(f))} {f.result}"

    def ja_line(self, f: Fact) -> str:
        return f"{self.ja_prompt(self.ja_question(f))} {target_answer(f.result)}"

    # -- splits ---------------------------------------------------------------------------------

    def pair_splits(self) -> dict[str, list[tuple[int, int]]]:
        """Unordered operand pairs -> split: ``bridge_pairs`` to the bridge, the rest halved."""
        pairs = sorted({f.pair for f in facts(("+",), self.operands)})
        random.Random(self.split_seed).shuffle(pairs)
        rest = pairs[self.bridge_pairs:]
        half = (len(rest) + 1) // 2
        return {"bridge": sorted(pairs[: self.bridge_pairs]), "fitness": sorted(rest[:half]),
                "heldout": sorted(rest[half:])}

    def split_facts(self, split: str, ops: tuple[str, ...] | None = None) -> list[Fact]:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; known splits: {', '.join(SPLITS)}")
        pairs = set(self.pair_splits()[split])
        return [f for f in facts(ops or self.target_ops, self.operands) if f.pair in pairs]

    def target_facts(self, split: str) -> list[Fact]:
        return [f for f in self.split_facts(split) if f.pair[0] >= self.target_min_operand]

    def target_items(self, split: str) -> list[dict[str, str]]:
        """Target items of ``fitness`` or ``heldout``: ``{"question", "answer", "op"}`` (answer: the number)."""
        if split not in TARGET_SPLITS:
            raise ValueError(f"unknown split '{split}'; known splits: {', '.join(TARGET_SPLITS)}")
        return [{"question": self.ja_question(f), "answer": str(f.result), "op": f.op}
                for f in self.target_facts(split)]

    # -- corpora --------------------------------------------------------------------------------

    def corpora(self) -> dict[str, Callable[[], list[str]]]:
        bridge_facts = self.split_facts("bridge", self.base_ops)
        return {
            "english_text": world.english_text,
            "english_qa": world.english_qa,
            "japanese_text": world.japanese_text,
            "japanese_qa": world.japanese_qa,
            # parallel sentences, questions and a glossary; arithmetic only for bridge pairs
            "parallel": lambda: _parallel_lines() + [
                f"en: {self.en_question(f)} ja: {self.ja_question(f)}" for f in bridge_facts],
            "english_arith_base": lambda: [self.en_line(f) for f in facts(self.base_ops, self.operands)],
            "japanese_arith_bridge": lambda: [self.ja_line(f) for f in bridge_facts],
            # code-switched lines (question in one language, answer in the other), bridge pairs only
            "mixed_arith_bridge": lambda: [line for f in bridge_facts for line in (
                f"{self.ja_prompt(self.en_question(f))} {target_answer(f.result)}",
                f"{self.en_prompt(self.ja_question(f))} {f.result}")],
            "english_arith_math": lambda: [self.en_line(f)
                                           for f in facts(self.math_ops, self.math_operands)],
        }

    def sample(self, mix: dict[str, float], n: int, seed: int) -> list[str]:
        return world.sample_from(self.corpora(), mix, n, seed)

    # -- evaluation sets ------------------------------------------------------------------------

    def eval_sets(self) -> dict[str, list[tuple[str, str]]]:
        """(prompt, expected response) per skill; ``target`` is the held-out split."""
        qa = world.eval_sets()
        return {
            "english_arith": [(self.en_prompt(self.en_question(f)), str(f.result))
                              for f in facts(self.math_ops, self.math_operands)],
            "japanese_qa": qa["japanese_qa"],
            "english_qa": qa["english_qa"],
            "target_fitness": [(self.ja_prompt(r["question"]), target_answer(r["answer"]))
                               for r in self.target_items("fitness")],
            "target": [(self.ja_prompt(r["question"]), target_answer(r["answer"]))
                       for r in self.target_items("heldout")],
        }

    def training_lines(self) -> set[str]:
        return {line for make in self.corpora().values() for line in make()}


def _parallel_lines() -> list[str]:
    """The old world's parallel lines without its arithmetic expressions."""
    return [line for line in world.bilingual()
            if not any(f" {op.en} " in line for op in world.OPERATORS)]


def target_answer(result: int | str) -> str:
    return f"{result} {JA_SUFFIX}"


def majority_rate(design: Design, split: str = "heldout") -> float:
    """Accuracy of always answering the fitness split's most common number, on ``split``."""
    common = Counter(r["answer"] for r in design.target_items("fitness")).most_common(1)[0][0]
    items = design.target_items(split)
    return sum(r["answer"] == common for r in items) / len(items)


# The shipped world (scripts/train_compose_llm.py, variant v7; results/composition_log.md says why)
DEFAULT = Design(name="v7", inline=True)
