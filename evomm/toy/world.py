"""The built-in toy text world: a small, fair analogue of EvoLLM-JP.

The paper merges a Japanese LLM with English math LLMs (all fine-tunes of one base) and scores
the merge on math asked and answered in Japanese, which no parent was trained on. Here:

* ``english_arith``   "q: what is 3 plus 4? a: 7"            (the math expert's data)
* ``english_text`` / ``english_qa``  everyday sentences, "q: what color is the sky? a: blue"
* ``japanese_text`` / ``japanese_qa``  "わたし は ぱん を たべます。", "問: そら の いろ は なに ですか? 答: あお です"
* ``bilingual``       parallel English/Japanese lines: sentences, questions, a word glossary and
                      arithmetic *expressions* without answers ("en: 3 plus 4 ja: 3 たす 4"),
                      the analogue of the base model's multilingual pre-training
* the TARGET          "問: 3 たす 4 は いくつ ですか? 答: 7 です" — Japanese question, Japanese
                      answer form. It needs both skills: the number, which only the English
                      arithmetic teaches, and the "N です" form, which only the Japanese Q/A
                      teaches ("問: いぬ の あし は いくつ ですか? 答: 4 です"). A bare "7" fails.

No training corpus contains a target-format item (a Japanese arithmetic question together with
its answer). The target items are split into a FITNESS and a HELD-OUT split by *unordered operand
pair*: "3 たす 4", "4 たす 3", "4 ひく 3", "3 かける 4" ... all land in the same split, so the splits
share no operand pair. Everything is deterministic; the only randomness is a seeded shuffle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

# ---------------------------------------------------------------------------------------------
# Arithmetic


@dataclass(frozen=True)
class Operator:
    en: str  # English word in the math data
    ja: str  # Japanese word in the target questions
    fn: Callable[[int, int], int]


OPERATORS: tuple[Operator, ...] = (
    Operator("plus", "たす", lambda a, b: a + b),
    Operator("minus", "ひく", lambda a, b: a - b),
    Operator("times", "かける", lambda a, b: a * b),
)
OPERANDS = range(10)  # single digits 0-9; results 0-81


@dataclass(frozen=True)
class Fact:
    a: int
    op: Operator
    b: int

    @property
    def result(self) -> int:
        return self.op.fn(self.a, self.b)

    @property
    def pair(self) -> tuple[int, int]:
        """The unordered operand pair the split is keyed on."""
        return (min(self.a, self.b), max(self.a, self.b))


def arith_facts() -> list[Fact]:
    """All 255 facts: a+b and a*b for every ordered pair, a-b only when a >= b (no negatives)."""
    facts = []
    for op in OPERATORS:
        for a in OPERANDS:
            for b in OPERANDS:
                if op.en == "minus" and a < b:
                    continue
                facts.append(Fact(a, op, b))
    return facts


def english_arith_question(fact: Fact) -> str:
    return f"q: what is {fact.a} {fact.op.en} {fact.b}?"


def english_arith_line(fact: Fact) -> str:
    return f"{english_arith_question(fact)} a: {fact.result}"


# --- the target format ------------------------------------------------------------------------

TARGET_ANSWER_PREFIX = "答:"
JA_ANSWER_SUFFIX = "です"


def target_question(fact: Fact) -> str:
    return f"問: {fact.a} {fact.op.ja} {fact.b} は いくつ ですか?"


def target_prompt(question: str) -> str:
    """What the model is given: the question followed by the answer cue."""
    return f"{question} {TARGET_ANSWER_PREFIX}"


def target_answer(result: int | str) -> str:
    """The expected response: the number in the Japanese answer form."""
    return f"{result} {JA_ANSWER_SUFFIX}"


TARGET_SPLITS = ("fitness", "heldout")


def split_pairs(seed: int = 0) -> dict[str, set[tuple[int, int]]]:
    """Assign each of the 55 unordered operand pairs to one split (seeded shuffle, 28 / 27)."""
    pairs = sorted({f.pair for f in arith_facts()})
    random.Random(seed).shuffle(pairs)
    half = (len(pairs) + 1) // 2
    return {"fitness": set(pairs[:half]), "heldout": set(pairs[half:])}


def target_split(split: str, seed: int = 0) -> list[dict[str, str]]:
    """Target items of one split as ``{"question", "answer"}`` records (answer = the number)."""
    if split not in TARGET_SPLITS:
        raise ValueError(f"unknown split '{split}'; known splits: {', '.join(TARGET_SPLITS)}")
    pairs = split_pairs(seed)[split]
    return [
        {"question": target_question(f), "answer": str(f.result)}
        for f in arith_facts()
        if f.pair in pairs
    ]


# ---------------------------------------------------------------------------------------------
# Everyday vocabulary, English and Japanese side by side.
# Words are separated by spaces in the Japanese too, so that a character-level model sees word
# boundaries in both languages (children's books write Japanese this way).

# (thing, colour) facts
COLOURS = [
    ("sky", "そら", "blue", "あお"),
    ("sea", "うみ", "blue", "あお"),
    ("grass", "くさ", "green", "みどり"),
    ("leaf", "はっぱ", "green", "みどり"),
    ("snow", "ゆき", "white", "しろ"),
    ("milk", "ぎゅうにゅう", "white", "しろ"),
    ("apple", "りんご", "red", "あか"),
    ("tomato", "とまと", "red", "あか"),
    ("banana", "ばなな", "yellow", "きいろ"),
    ("lemon", "れもん", "yellow", "きいろ"),
    ("crow", "からす", "black", "くろ"),
    ("night", "よる", "black", "くろ"),
]

# (animal, sound, legs)
ANIMALS = [
    ("dog", "いぬ", "woof", "わんわん", 4),
    ("cat", "ねこ", "meow", "にゃー", 4),
    ("cow", "うし", "moo", "もーもー", 4),
    ("pig", "ぶた", "oink", "ぶーぶー", 4),
    ("bird", "とり", "tweet", "ぴよぴよ", 2),
    ("frog", "かえる", "ribbit", "けろけろ", 4),
    ("duck", "あひる", "quack", "がーがー", 2),
    ("spider", "くも", "", "", 8),
    ("ant", "あり", "", "", 6),
    ("octopus", "たこ", "", "", 8),
]

DAYS = [
    ("monday", "月曜日"),
    ("tuesday", "火曜日"),
    ("wednesday", "水曜日"),
    ("thursday", "木曜日"),
    ("friday", "金曜日"),
    ("saturday", "土曜日"),
    ("sunday", "日曜日"),
]

# Counting facts with a numeric answer that is *remembered*, not computed.
COUNTS = [
    ("days in a week", "1 しゅうかん の ひ", 7),
    ("months in a year", "1 ねん の つき", 12),
    ("hours in a day", "1 にち の じかん", 24),
    ("fingers on a hand", "かたて の ゆび", 5),
    ("seasons in a year", "1 ねん の きせつ", 4),
]

PEOPLE = [("i", "わたし"), ("my friend", "ともだち"), ("my mother", "はは"),
          ("my father", "ちち"), ("the teacher", "せんせい")]
FOODS = [("bread", "ぱん"), ("rice", "ごはん"), ("fish", "さかな"),
         ("an apple", "りんご"), ("a banana", "ばなな"), ("an egg", "たまご")]
DRINKS = [("water", "みず"), ("tea", "おちゃ"), ("milk", "ぎゅうにゅう"), ("juice", "じゅーす")]
PLACES = [("school", "がっこう"), ("the park", "こうえん"), ("the station", "えき"),
          ("the shop", "みせ"), ("the river", "かわ"), ("home", "いえ")]
WEATHER = [("sunny", "はれ"), ("rainy", "あめ"), ("cloudy", "くもり"), ("snowy", "ゆき")]


def _en_verb(person: str, base: str) -> str:
    """'i eat' / 'my friend eats', 'i go' / 'my friend goes' (third person singular)."""
    if person == "i":
        return base
    return base + ("es" if base.endswith("o") else "s")


def _sentence_pairs() -> list[tuple[str, str]]:
    """Parallel everyday sentences (English, Japanese)."""
    pairs = []
    for p_en, p_ja in PEOPLE:
        for f_en, f_ja in FOODS:
            pairs.append((f"{p_en} {_en_verb(p_en, 'eat')} {f_en}.", f"{p_ja} は {f_ja} を たべます。"))
        for d_en, d_ja in DRINKS:
            pairs.append((f"{p_en} {_en_verb(p_en, 'drink')} {d_en}.", f"{p_ja} は {d_ja} を のみます。"))
        for l_en, l_ja in PLACES:
            pairs.append((f"{p_en} {_en_verb(p_en, 'go')} to {l_en}.",
                          f"{p_ja} は {l_ja} へ いきます。"))
    for a_en, a_ja, *_ in ANIMALS:
        for l_en, l_ja in PLACES:
            pairs.append((f"the {a_en} is at {l_en}.", f"{a_ja} は {l_ja} に います。"))
    for t_en, t_ja, c_en, c_ja in COLOURS:
        pairs.append((f"the {t_en} is {c_en}.", f"{t_ja} の いろ は {c_ja} です。"))
    for d_en, d_ja in DAYS:
        pairs.append((f"today is {d_en}.", f"きょう は {d_ja} です。"))
    for w_en, w_ja in WEATHER:
        pairs.append((f"today it is {w_en}.", f"きょう は {w_ja} です。"))
    for a_en, a_ja, s_en, s_ja, _ in ANIMALS:
        if s_en:
            pairs.append((f"the {a_en} says {s_en}.", f"{a_ja} は {s_ja} と なきます。"))
    return pairs


def _qa_pairs() -> list[tuple[str, str, str, str]]:
    """Parallel non-arithmetic questions: (en question, en answer, ja question, ja answer word)."""
    qa = []
    for t_en, t_ja, c_en, c_ja in COLOURS:
        qa.append((f"what color is the {t_en}?", c_en, f"{t_ja} の いろ は なに ですか?", c_ja))
    for a_en, a_ja, s_en, s_ja, legs in ANIMALS:
        if s_en:
            qa.append((f"which animal says {s_en}?", a_en, f"{s_ja} と なく どうぶつ は なに ですか?", a_ja))
        qa.append((f"how many legs does the {a_en} have?", str(legs),
                   f"{a_ja} の あし は いくつ ですか?", str(legs)))
    for c_en, c_ja, n in COUNTS:
        qa.append((f"how many {c_en}?", str(n), f"{c_ja} は いくつ ですか?", str(n)))
    for i, (d_en, d_ja) in enumerate(DAYS):
        nxt_en, nxt_ja = DAYS[(i + 1) % len(DAYS)]
        qa.append((f"today is {d_en}. what day is tomorrow?", nxt_en,
                   f"きょう は {d_ja} です。 あした は なんようび ですか?", nxt_ja))
    return qa


def english_text() -> list[str]:
    return [en for en, _ in _sentence_pairs()]


def english_qa() -> list[str]:
    return [f"q: {q} a: {a}" for q, a, _, _ in _qa_pairs()]


def english_arith() -> list[str]:
    return [english_arith_line(f) for f in arith_facts()]


def japanese_text() -> list[str]:
    return [ja for _, ja in _sentence_pairs()]


def japanese_qa() -> list[str]:
    return [f"問: {q} {TARGET_ANSWER_PREFIX} {target_answer(a)}" for _, _, q, a in _qa_pairs()]


def bilingual() -> list[str]:
    """Parallel lines: sentences, questions (no answers), a glossary, arithmetic expressions.

    The expressions teach that "3 たす 4" means "3 plus 4" without ever giving a result, so the
    target's answers appear nowhere in training.
    """
    lines = [f"en: {en} ja: {ja}" for en, ja in _sentence_pairs()]
    lines += [f"en: {q_en} ja: {q_ja}" for q_en, _, q_ja, _ in _qa_pairs()]
    glossary = [(op.en, op.ja) for op in OPERATORS] + [
        ("question", "問"), ("answer", "答"), ("what", "なに"), ("how many", "いくつ"),
        ("animal", "どうぶつ"), ("color", "いろ"), ("today", "きょう"), ("tomorrow", "あした"),
    ]
    glossary += [(t_en, t_ja) for t_en, t_ja, _, _ in COLOURS]
    glossary += [(c_en, c_ja) for _, _, c_en, c_ja in COLOURS]
    glossary += [(a_en, a_ja) for a_en, a_ja, *_ in ANIMALS]
    lines += [f"en: {en} ja: {ja}" for en, ja in sorted(set(glossary))]
    lines += [f"en: {f.a} {f.op.en} {f.b} ja: {f.a} {f.op.ja} {f.b}" for f in arith_facts()]
    return lines


CORPORA: dict[str, Callable[[], list[str]]] = {
    "english_text": english_text,
    "english_qa": english_qa,
    "english_arith": english_arith,
    "japanese_text": japanese_text,
    "japanese_qa": japanese_qa,
    "bilingual": bilingual,
}


def corpus_of(corpora: dict[str, Callable[[], list[str]]], name: str) -> list[str]:
    if name not in corpora:
        raise ValueError(f"unknown corpus '{name}'; known corpora: {', '.join(corpora)}")
    return corpora[name]()


def sample_from(corpora: dict[str, Callable[[], list[str]]], mix: dict[str, float], n: int,
                seed: int) -> list[str]:
    """``n`` training lines drawn (seeded, with replacement) from corpora weighted by ``mix``."""
    rng = random.Random(seed)
    names = [name for name, w in mix.items() if w > 0]
    weights = [mix[name] for name in names]
    pools = {name: corpus_of(corpora, name) for name in names}
    return [rng.choice(pools[name]) for name in rng.choices(names, weights=weights, k=n)]


def corpus(name: str) -> list[str]:
    return corpus_of(CORPORA, name)


def sample_mix(mix: dict[str, float], n: int, seed: int) -> list[str]:
    return sample_from(CORPORA, mix, n, seed)


# ---------------------------------------------------------------------------------------------
# Evaluation sets in each training format: (prompt, expected response) pairs.


def _split_qa_line(line: str, cue: str) -> tuple[str, str]:
    question, answer = line.rsplit(f" {cue} ", 1)
    return f"{question} {cue}", answer


def eval_sets(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Prompt / expected-response pairs for each skill; ``target`` is the held-out split."""
    return {
        "english_arith": [_split_qa_line(line, "a:") for line in english_arith()],
        "english_qa": [_split_qa_line(line, "a:") for line in english_qa()],
        "japanese_qa": [_split_qa_line(line, TARGET_ANSWER_PREFIX) for line in japanese_qa()],
        "target": [
            (target_prompt(r["question"]), target_answer(r["answer"]))
            for r in target_split("heldout", seed)
        ],
    }


def all_lines() -> list[str]:
    """Every line the world can produce: corpora and target items (for coverage checks)."""
    lines = [line for name in CORPORA for line in corpus(name)]
    for split in TARGET_SPLITS:
        lines += [target_prompt(r["question"]) + " " + target_answer(r["answer"])
                  for r in target_split(split)]
    return lines
