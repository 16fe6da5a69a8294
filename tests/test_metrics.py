"""evomm.metrics, the public per-item scores, against an independent literal re-implementation of
the paper's evaluation steps (SakanaAI/evolutionary-model-merge, evomerge/eval), on many pairs.

The re-implementation below is written from the reference's rules, not from evomm's code: emoji
removed (emoji.is_emoji per character, then the reference's code-point ranges), neologdn, split /
join whitespace, MeCab -Owakati split on whitespace, LCS by dynamic programming, F = 2PR/(P+R);
fastText lid.176 loaded directly, newlines deleted, P(__label__ja) >= 0.5 for references and
< 0.5 for predictions zeroes the pair; MGSM: last re.findall(r"\\d*\\.?\\d+"), float, ==, and
P(ja) > 0.5.
"""

from __future__ import annotations

import itertools
import random
import re
import subprocess
import sys

import pytest

from evomm.metrics import ja_probability, ja_rouge_l, mgsm_ja_correct, mgsm_ja_number
from evomm.text.langid import bundled_model_path


class PaperReference:
    """The paper's scoring steps, literally."""

    RANGES = re.compile(
        "[" "\U0001F600-\U0001F64F" "\U0001F300-\U0001F5FF" "\U0001F680-\U0001F6FF"
        "\U0001F1E0-\U0001F1FF" "\U00002702-\U000027B0" "]+"
    )

    def __init__(self):
        import fasttext
        import fugashi

        self.tagger = fugashi.Tagger("-Owakati")
        self.lid = fasttext.load_model(str(bundled_model_path()))

    def words(self, text: str) -> list[str]:
        import emoji
        import neologdn

        text = "".join("" if emoji.is_emoji(c) else c for c in text)
        text = self.RANGES.sub("", text)
        text = " ".join(neologdn.normalize(text).split())
        return self.tagger.parse(text).split()

    def p_ja(self, text: str) -> float:
        labels, probs = self.lid.predict(text.replace("\n", ""), k=-1)
        return dict(zip(labels, probs)).get("__label__ja", 0.0)

    @staticmethod
    def lcs(a: list[str], b: list[str]) -> int:
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    def rouge_l(self, pred: str, ref: str) -> float:
        if self.p_ja(ref) >= 0.5 and self.p_ja(pred) < 0.5:
            pred = ""
        p_words, r_words = self.words(pred), self.words(ref)
        if not p_words or not r_words:
            return 0.0
        lcs = self.lcs(r_words, p_words)
        precision, recall = lcs / len(p_words), lcs / len(r_words)
        return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0

    @staticmethod
    def number(response: str):
        found = re.findall(r"\d*\.?\d+", response)
        return float(found[-1]) if found else None

    def mgsm_correct(self, response: str, answer) -> bool:
        return answer == self.number(response) and self.p_ja(response) > 0.5


@pytest.fixture(scope="module")
def paper():
    return PaperReference()


# Answers and references of every kind the rules treat differently.
TEXTS = [
    "赤いボール", "赤 い ボール", "赤いボールです", "赤いボールです。", "「赤いボール」", "赤です",
    "赤です😊", "赤です。", "赤", "すごーい", "すごーーーい", "すご〜〜い", "ｶﾒﾗ", "カメラ", "カメラです",
    "ＲＥＤ　ＢＡＬＬ", "RED BALL", "red ball", "Red", "red", "a red ball", "The ball is red.",
    "It is a camera and a photo カメラ", "二人の男性がテニスをしています", "テニスをしている男性",
    "白と黒の猫", "黒と白の猫", "猫が2匹います", "猫が２匹います", "✨キラキラ✨", "日本🇯🇵です",
    "いいね👍🏻", "1️⃣番目です", "赤い\nボール\nです", "  空白  が  多い  ", "Tシャツを着た男性",
    "ｔシャツを着た男性", "THIS IS A PEN", "これはペンです。", "", "😊",
    "an English start that runs on for well over eighty characters before any Japanese begins: "
    "ここからは日本語の文章です。",
]


def test_ja_rouge_l_equals_the_reference_on_every_pair(paper):
    pairs = list(itertools.product(TEXTS, TEXTS))
    mismatches = [(p, r, ja_rouge_l(p, r), paper.rouge_l(p, r)) for p, r in pairs
                  if ja_rouge_l(p, r) != pytest.approx(paper.rouge_l(p, r), abs=1e-12)]
    assert not mismatches, mismatches[:5]
    # the pairs are not trivial: the rule zeroes some and partial overlaps exist
    values = [paper.rouge_l(p, r) for p, r in pairs]
    assert any(0 < v < 1 for v in values) and sum(v == 1 for v in values) > len(TEXTS)
    assert any(paper.rouge_l(p, r) == 0 and paper.lcs(paper.words(p), paper.words(r)) > 0 for p, r in pairs)


def test_reference_lcs_matches_rouge_score(paper):
    """The test's own LCS F-measure agrees with rouge-score's, the library the paper used."""
    from rouge_score import rouge_scorer

    class Words:
        def tokenize(self, text):
            return paper.words(text)

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Words())
    for p, r in itertools.product(TEXTS[:20], TEXTS[:20]):
        words_p, words_r = paper.words(p), paper.words(r)
        lcs = paper.lcs(words_r, words_p)
        expected = 0.0 if not lcs else 2 * (lcs / len(words_p)) * (lcs / len(words_r)) / (
            lcs / len(words_p) + lcs / len(words_r))
        assert scorer.score(r, p)["rougeL"].fmeasure == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("pred, ref, expected", [
    ("赤 い ボール", "赤いボール", 1.0),  # spacing
    ("すごーーーい", "すごーい", 1.0),  # long vowels
    ("赤です😊", "赤です", 1.0),  # emoji
    ("赤です。", "赤です", 0.8),  # punctuation is a word: P 2/3, R 1
    ("Red", "red", 0.0),  # case kept; English reference: no Japanese rule
    ("ｶﾒﾗ", "カメラ", 0.0),  # same words after neologdn, but lid.176 says not Japanese
    ("It is a camera and a photo カメラ", "カメラです", 0.0),  # non-Japanese answer, Japanese reference
    ("a red ball", "a red", 0.8),  # English reference, English answer
    ("", "赤です", 0.0), ("赤です", "", 0.0), ("", "", 0.0),  # empty strings
])
def test_ja_rouge_l_literal_cases(pred, ref, expected):
    assert ja_rouge_l(pred, ref) == pytest.approx(expected, abs=1e-12)


# ---- MGSM-JA -----------------------------------------------------------------------------------

RESPONSES = [
    "答えは 12,5000 です", "答えは 1,2345 です", "答えは.5です", "答えは 10⁵ です", "10⁵",
    "答え: 1234.5", "答えは 1234.5 です。", "答えは -5 です", "答えは−3です", "3-5 ページ",
    "１２，０００円になります", "合計は 1,234 円です", "最初は 10 こ、次に 3 こ、答え 13。",
    "The answer is 13", "答えは 13 です。\n\n以上です", "わかりません", "", "1", "答えは 3.50 ドルです",
]


def test_mgsm_paper_reader_equals_the_reference(paper):
    rng = random.Random(0)
    alphabet = "0123456789.,-−１２⁵ あa　"
    texts = RESPONSES + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(500)]
    for text in texts:
        assert mgsm_ja_number(text) == paper.number(text), text
    for response in RESPONSES:
        for answer in (5, 13, 12000, 1234.5, 0.5, 10, 125000):
            assert mgsm_ja_correct(response, answer) == paper.mgsm_correct(response, answer), (response, answer)


@pytest.mark.parametrize("response, paper_number, strict_number", [
    ("答えは 12,5000 です", 5000.0, 125000.0),  # 万-grouping: strict joins it
    ("答えは 1,2345 です", 2345.0, 12345.0),
    ("合計は 1,234 円です", 234.0, 1234.0),  # thousands commas: only strict reads them
    ("１２，０００円", 0.0, 12000.0),  # full-width digits and comma
    ("1,2,3 と数える", 3.0, 3.0),  # commas not before 3-4 digits separate numbers
    ("1,234.5", 234.5, 1234.5),
    ("答えは.5です", 0.5, 0.5),  # a bare decimal
    ("答えは -5 です", 5.0, -5.0),  # signs: only strict reads them
    ("答えは−3です", 3.0, -3.0),  # U+2212 minus sign
    ("-.5", 0.5, -0.5),
    ("3-5", 5.0, 5.0),  # a dash after a digit is no sign
    ("10⁵", 10.0, 10.0),  # superscripts are no digits
    ("3.50 ドル", 3.5, 3.5),
    ("最初は 10 こ、次に 3 こ、答え 13。", 13.0, 13.0),  # the last number
    ("わかりません", None, None),
])
def test_number_readers(response, paper_number, strict_number):
    assert mgsm_ja_number(response) == paper_number
    assert mgsm_ja_number(response, reader="paper") == paper_number
    assert mgsm_ja_number(response, reader="strict") == strict_number


def test_mgsm_ja_correct():
    assert mgsm_ja_correct("答えは 12 です。", 12)
    assert mgsm_ja_correct("答えは 12 です。", 12.0)
    assert not mgsm_ja_correct("答えは 13 です。", 12)  # wrong number
    assert not mgsm_ja_correct("The answer is 12.", 12)  # right number, English
    assert not mgsm_ja_correct("12", 12)  # a bare number is not Japanese
    assert ja_probability("答え: 1234.5") < 0.5  # looks Japanese, lid.176 disagrees ...
    assert not mgsm_ja_correct("答え: 1234.5", 1234.5)  # ... so it does not count
    assert not mgsm_ja_correct("合計は 1,234 円です", 1234)  # the paper reads 234
    assert mgsm_ja_correct("合計は 1,234 円です", 1234, reader="strict")
    assert mgsm_ja_correct("気温は -5 度です", 5)  # the paper drops the sign
    assert mgsm_ja_correct("気温は -5 度です", -5, reader="strict")
    with pytest.raises(ValueError, match="unknown number reader"):
        mgsm_ja_correct("答えは 12 です。", 12, reader="loose")


def test_importing_metrics_loads_neither_torch_nor_models():
    code = ("import sys, evomm.metrics; "
            "print(sorted(m for m in ('torch', 'fugashi', 'fasttext', 'neologdn', 'rouge_score') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_docstring_and_readme_examples():
    import doctest

    import evomm.metrics

    assert doctest.testmod(evomm.metrics).failed == 0
    assert ja_rouge_l("赤 い ボール", "赤いボール") == 1.0
    assert mgsm_ja_correct("答えは 1,234 円です", 1234, reader="strict")
    assert mgsm_ja_number("答えは 1,234 円です", reader="paper") == 234
