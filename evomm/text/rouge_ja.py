"""ROUGE-L for Japanese answers, scored as the paper's evaluation code scores them.

The rules come from SakanaAI/evolutionary-model-merge (``evomerge/eval/metrics.py``,
``utils.compute_score``). Scoring one (prediction, reference) pair:

1. Normalise each string (``normalize``), in this order:
   a. remove emoji: every character that ``emoji.is_emoji`` accepts, then every run of characters
      in U+1F600-1F64F, U+1F300-1F5FF, U+1F680-1F6FF, U+1F1E0-1F1FF (flags) and U+2702-27B0;
   b. ``neologdn.normalize`` with its defaults: full-width ASCII -> half-width, half-width katakana
      -> full-width, runs of long-vowel marks and tildes collapsed ("すごーーーい" -> "すごーい"),
      spaces between Japanese characters removed ("赤 い ボール" -> "赤いボール");
   c. whitespace runs -> one space, both ends stripped.
   No lower-casing and no punctuation removal: "赤です。" and "赤です" differ by the token "。".
2. Split into words with MeCab (fugashi + unidic-lite, ``-Owakati``) and split its output on
   whitespace.
3. ROUGE-L F-measure of the two token lists (``rouge-score``: LCS, F = 2PR / (P + R); 0 when
   either side has no token). Scores lie in [0, 1]; the paper prints them x100.
4. Japanese rule (``evomm.text.langid``): when the reference has fastText P(ja) >= 0.5 and the
   prediction has P(ja) < 0.5, the prediction is replaced by "" and the pair scores 0.

The paper's figure for a data set is rouge-score's ``BootstrapAggregator`` "mid" (the median of
1000 unseeded bootstrap means) of these pair scores; ours is their plain mean, the quantity that
median estimates (they differ by bootstrap noise only).

Exact match (reported beside ROUGE-L; not a paper metric) is 1 when the two normalised strings are
equal and the Japanese rule did not zero the pair.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Sequence

from evomm.text.langid import LanguageId, language_id

# The code-point ranges the paper's emoji removal strips after the per-character emoji check.
_EMOJI_RANGES = re.compile(
    "[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF\u2702-\u27B0]+"
)


def remove_emoji(text: str) -> str:
    import emoji  # imported here: only scoring needs it

    text = "".join(c for c in text if not emoji.is_emoji(c))
    return _EMOJI_RANGES.sub("", text)


def normalize(text: str) -> str:
    """Emoji removed, neologdn-normalised, whitespace collapsed (step 1 of the module docstring)."""
    import neologdn  # imported here: only scoring needs it

    return " ".join(neologdn.normalize(remove_emoji(text)).split())


class MecabTokenizer:
    """MeCab word segmentation (unidic-lite, wakati) of normalised text; the rouge-score API."""

    def __init__(self) -> None:
        import fugashi  # imported here: MeCab loads its dictionary (~50 MB) on first use

        self._tagger = fugashi.Tagger("-Owakati")

    def tokenize(self, text: str) -> list[str]:
        return self._tagger.parse(normalize(text)).split()


@dataclass(frozen=True)
class PairScore:
    rouge_l: float  # after the Japanese rule
    exact_match: float  # 1.0 or 0.0
    prediction_japanese: bool  # P(ja) >= 0.5
    zeroed: bool  # the Japanese rule set the score to 0


class JapaneseRouge:
    """Scores predictions against Japanese references (see the module docstring)."""

    def __init__(self, lang_id_model: str | None = None):
        from rouge_score import rouge_scorer

        self.lang: LanguageId = language_id(lang_id_model)
        self.tokenizer = MecabTokenizer()
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self.tokenizer)

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)

    def rouge_l(self, prediction: str, reference: str) -> float:
        """Plain ROUGE-L F-measure over MeCab tokens, without the Japanese rule."""
        # rouge-score takes (target, prediction)
        return float(self._scorer.score(reference, prediction)["rougeL"].fmeasure)

    def score(self, prediction: str, reference: str) -> PairScore:
        """One pair, Japanese rule applied: the per-item score of the ROUGE-L tasks."""
        pred_ja = self.lang.vqa_japanese(prediction)
        zeroed = not pred_ja and self.lang.vqa_japanese(reference)
        rouge = 0.0 if zeroed else self.rouge_l(prediction, reference)
        exact = float(not zeroed and normalize(prediction) == normalize(reference))
        return PairScore(rouge, exact, pred_ja, zeroed)

    def score_all(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """Means over the pairs: rouge_l, exact_match, japanese_rate (share of Japanese predictions), n."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            raise ValueError("no predictions to score")
        return summarize([self.score(p, r) for p, r in zip(predictions, references)])


def summarize(scores: Sequence[PairScore]) -> dict[str, float]:
    """Means over scored pairs: rouge_l, exact_match, japanese_rate, n."""
    n = len(scores)
    return {
        "rouge_l": sum(s.rouge_l for s in scores) / n,
        "exact_match": sum(s.exact_match for s in scores) / n,
        "japanese_rate": sum(s.prediction_japanese for s in scores) / n,
        "n": float(n),
    }


@functools.lru_cache(maxsize=None)
def japanese_rouge(lang_id_model: str | None = None) -> JapaneseRouge:
    """One scorer (MeCab tagger + language-id model) per language-id model, shared."""
    return JapaneseRouge(lang_id_model)
