"""ROUGE-L over MeCab tokens: hand-checked pairs, normalisation, the Japanese-response rule."""

from __future__ import annotations

import sys

import pytest

from evomm.errors import ConfigError
from evomm.text.rouge_ja import JapaneseRouge, LanguageId, normalize


@pytest.fixture(scope="module")
def rouge():
    return JapaneseRouge()


def f1(lcs: int, n_pred: int, n_ref: int) -> float:
    p, r = lcs / n_pred, lcs / n_ref
    return 2 * p * r / (p + r)


# (prediction, reference, prediction tokens, reference tokens, LCS worked out by hand)
HAND_CHECKED = [
    # 赤い ボール です  vs  赤い ボール: LCS = 赤い ボール = 2; P = 2/3, R = 2/2 -> F = 0.8
    ("赤いボールです", "赤いボール", ["赤い", "ボール", "です"], ["赤い", "ボール"], 2),
    # 二人 の 男性 が [テニス を し て] い ます  vs  [テニス を し て] いる 男性:
    # 男性 comes before テニス in one and after it in the other, い != いる -> LCS = 4;
    # P = 4/10, R = 4/6 -> F = 0.5
    (
        "二人の男性がテニスをしています",
        "テニスをしている男性",
        ["二人", "の", "男性", "が", "テニス", "を", "し", "て", "い", "ます"],
        ["テニス", "を", "し", "て", "いる", "男性"],
        4,
    ),
    # 白 と 黒 の 猫  vs  黒 と 白 の 猫: white/black swap; LCS = (と の 猫) = 3 -> F = 0.6
    ("白と黒の猫", "黒と白の猫", ["白", "と", "黒", "の", "猫"], ["黒", "と", "白", "の", "猫"], 3),
    # これ は 、 赤 です  vs  赤: inner punctuation stays a token; LCS = 1; P = 1/5, R = 1 -> 1/3
    ("これは、赤です。", "赤", ["これ", "は", "、", "赤", "です"], ["赤"], 1),
]


@pytest.mark.parametrize("pred, ref, pred_tokens, ref_tokens, lcs", HAND_CHECKED)
def test_rouge_l_hand_checked(rouge, pred, ref, pred_tokens, ref_tokens, lcs):
    assert rouge.tokens(pred) == pred_tokens
    assert rouge.tokens(ref) == ref_tokens
    expected = f1(lcs, len(pred_tokens), len(ref_tokens))
    assert rouge.rouge_l(pred, ref) == pytest.approx(expected)
    assert rouge.score(pred, ref).rouge_l == pytest.approx(expected)  # both Japanese: no rule


def test_hand_checked_values():
    # the F values the comments above state, so the helper itself is checked
    assert f1(2, 3, 2) == pytest.approx(0.8)
    assert f1(4, 10, 6) == pytest.approx(0.5)
    assert f1(3, 5, 5) == pytest.approx(0.6)
    assert f1(1, 5, 1) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("「赤」。", "赤"),  # surrounding Japanese punctuation dropped
        ("  赤です！ ", "赤です"),  # full-width "！" -> "!" (NFKC), then dropped
        ("ＲＥＤ　Ｂａｌｌ", "red ball"),  # full-width letters and space -> ASCII, lower-cased
        ("ﾎﾞｰﾙ", "ボール"),  # half-width katakana -> full-width
        ("これは、赤です。", "これは、赤です"),  # inner punctuation kept
        ("a\n\n b", "a b"),  # whitespace runs collapsed
        ("...", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalised_strings_score_one_and_exact_match(rouge):
    s = rouge.score("「赤」。", "赤")
    assert (s.rouge_l, s.exact_match) == (1.0, 1.0)
    s = rouge.score("ＲＥＤ!", "red")
    assert (s.rouge_l, s.exact_match) == (1.0, 1.0)
    s = rouge.score("赤いボールです", "赤いボール")
    assert s.exact_match == 0.0 and s.rouge_l == pytest.approx(0.8)


def test_japanese_rule_zeroes_non_japanese_answers(rouge):
    # 赤い / ball vs 赤い / ボール share one token: ROUGE-L 0.5 without the rule ...
    assert rouge.rouge_l("赤い ball", "赤いボール") == pytest.approx(f1(1, 2, 2))
    # ... but 4 of its 6 letters are Latin, so the answer is not Japanese and scores 0.
    s = rouge.score("赤い ball", "赤いボール")
    assert s.zeroed and not s.prediction_japanese and s.rouge_l == 0.0
    # The rule applies only to Japanese references.
    s = rouge.score("red ball", "red")
    assert not s.zeroed and s.rouge_l == pytest.approx(f1(1, 2, 1))
    s = rouge.score("2", "2")  # no letters: not Japanese, the reference neither
    assert not s.zeroed and s.rouge_l == 1.0 and s.exact_match == 1.0


def test_score_all_means(rouge):
    preds = ["赤いボールです", "red", "「赤」。", ""]
    refs = ["赤いボール", "赤", "赤", "青"]
    m = rouge.score_all(preds, refs)
    # 0.8 (hand-checked) + 0 (English answer to a Japanese reference) + 1 + 0 (empty)
    assert m["rouge_l"] == pytest.approx((0.8 + 0 + 1 + 0) / 4)
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert m["japanese_rate"] == pytest.approx(2 / 4)
    assert m["n"] == 4
    with pytest.raises(ValueError):
        rouge.score_all(["a"], [])


def test_lang_id_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not a file"):
        LanguageId(str(tmp_path / "missing.ftz"))
    model = tmp_path / "lid.bin"
    model.write_bytes(b"not a model")
    monkeypatch.setitem(sys.modules, "fasttext", None)  # "not installed": import raises
    with pytest.raises(ConfigError, match="pip install fasttext"):
        LanguageId(str(model))


def test_fasttext_lang_id(tmp_path):
    fasttext = pytest.importorskip("fasttext")
    lines = []
    for _ in range(30):
        lines += [
            "__label__ja これは赤いボールです",
            "__label__ja 白と黒の猫がいます",
            "__label__en this is a red ball",
            "__label__en a black and white cat",
        ]
    data = tmp_path / "train.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(
        str(data), epoch=20, minn=1, maxn=2, dim=8, verbose=0, seed=0, thread=1
    )
    path = tmp_path / "lid.bin"
    model.save_model(str(path))
    lang = LanguageId(str(path))
    assert lang.is_japanese("赤いボールと猫")
    assert not lang.is_japanese("a red ball and a cat")
    rouge = JapaneseRouge(lang_id_model=str(path))
    assert rouge.score("a red ball", "赤いボール").zeroed
    assert rouge.score("赤いボールです", "赤いボール").rouge_l == pytest.approx(0.8)
