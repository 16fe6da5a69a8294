"""ROUGE-L for Japanese answers over MeCab tokens, with the paper's Japanese-response rule.

Scoring one (prediction, reference) pair:

1. Normalise both strings (``normalize``):
   a. Unicode NFKC (full-width "ＡＢ１？" -> "AB1?", half-width katakana -> full-width);
   b. lower-case ASCII letters A-Z only (other scripts have no case that matters here);
   c. collapse every run of whitespace to one space and strip both ends;
   d. drop leading and trailing characters whose Unicode category is punctuation (P*: "。",
      "、", "「", "」", "!", "?", ".", ...) or whitespace, repeatedly: "「赤です。」" -> "赤です".
      Punctuation inside the string is kept (and becomes tokens).
2. Tokenise with MeCab (fugashi + unidic-lite), keeping the surface forms (wakati):
   "赤いボールです" -> 赤い / ボール / です. Whitespace never becomes a token.
3. ROUGE-L F1 = 2PR / (P + R) with P = LCS / len(prediction tokens), R = LCS / len(reference
   tokens), computed by ``rouge-score`` with the MeCab tokenizer. Scores lie in [0, 1] (the paper
   reports them x100).
4. Japanese rule: when the reference is Japanese and the prediction is not, the pair scores 0.
   "Japanese" is decided by script (``evomm.text.japanese.is_japanese``: at least half of the
   letters are kana or kanji) unless a fastText language-id model is given (``lang_id_model``,
   e.g. lid.176.ftz), in which case a text is Japanese when P(__label__ja) >= 0.5, as in the
   paper's evaluation code.

Exact match (reported beside ROUGE-L) is 1 when the two normalised strings are equal.

The paper's own code normalised with neologdn and removed emoji but kept punctuation and case;
ours is close to it for answers in Japanese and differs on surrounding punctuation (ignored here).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from evomm.errors import ConfigError
from evomm.text.japanese import is_japanese

_WS = re.compile(r"\s+")
_ASCII_UPPER = str.maketrans({chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)})


def _is_edge_noise(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """NFKC, ASCII lower-case, whitespace collapsed, surrounding punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).translate(_ASCII_UPPER)
    text = _WS.sub(" ", text).strip()
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return text[start:end]


class MecabTokenizer:
    """MeCab word segmentation (unidic-lite dictionary) of normalised text; the rouge-score API."""

    def __init__(self) -> None:
        import fugashi  # imported here: MeCab loads its dictionary (~50 MB) on first use

        self._tagger = fugashi.Tagger()

    def tokenize(self, text: str) -> list[str]:
        norm = normalize(text)
        return [word.surface for word in self._tagger(norm) if word.surface.strip()]


class LanguageId:
    """Is a text Japanese? By script, or by a local fastText language-id model."""

    def __init__(self, lang_id_model: str | None = None, threshold: float = 0.5):
        self.threshold = threshold
        self._model = None
        if lang_id_model is not None:
            path = Path(lang_id_model).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"lang_id_model '{lang_id_model}' is not a file; give the path of a fastText "
                    "language-id model (e.g. lid.176.ftz) or set lang_id_model to null to use "
                    "the script-based check"
                )
            try:
                import fasttext
            except ImportError:
                raise ConfigError(
                    "lang_id_model needs the fasttext package: pip install fasttext "
                    "(or set lang_id_model to null to use the script-based check)"
                ) from None
            try:
                self._model = fasttext.load_model(str(path))
            except (ValueError, RuntimeError) as e:
                raise ConfigError(f"lang_id_model '{lang_id_model}' is not a fastText model: {e}") from None

    def is_japanese(self, text: str) -> bool:
        if self._model is None:
            return is_japanese(text)
        # fastText predicts one line at a time; k=-1 returns every label with its probability.
        line = text.replace("\n", " ")
        try:
            labels, probs = self._model.predict(line, k=-1)
        except ValueError:
            # fasttext 0.9.x's predict() breaks under NumPy 2 (np.array(copy=False)); its
            # low-level call returns the same (probability, label) pairs without NumPy.
            pairs = self._model.f.predict(line + "\n", -1, 0.0, "strict")
            labels, probs = [label for _, label in pairs], [p for p, _ in pairs]
        return dict(zip(labels, (float(p) for p in probs))).get("__label__ja", 0.0) >= self.threshold


@dataclass(frozen=True)
class PairScore:
    rouge_l: float  # after the Japanese rule
    exact_match: float  # 1.0 or 0.0
    prediction_japanese: bool
    zeroed: bool  # the Japanese rule set the score to 0


class JapaneseRouge:
    """Scores predictions against Japanese references (see the module docstring)."""

    def __init__(self, lang_id_model: str | None = None):
        from rouge_score import rouge_scorer

        self.lang = LanguageId(lang_id_model)
        self.tokenizer = MecabTokenizer()
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self.tokenizer)

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)

    def rouge_l(self, prediction: str, reference: str) -> float:
        """Plain ROUGE-L F1 over MeCab tokens, without the Japanese rule."""
        # rouge-score takes (target, prediction); an empty side scores 0.
        return float(self._scorer.score(reference, prediction)["rougeL"].fmeasure)

    def score(self, prediction: str, reference: str) -> PairScore:
        pred_ja = self.lang.is_japanese(prediction)
        zeroed = not pred_ja and self.lang.is_japanese(reference)
        rouge = 0.0 if zeroed else self.rouge_l(prediction, reference)
        exact = float(not zeroed and normalize(prediction) == normalize(reference))
        return PairScore(rouge, exact, pred_ja, zeroed)

    def score_all(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """Means over the pairs: rouge_l, exact_match, japanese_rate (share of Japanese predictions), n."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            raise ValueError("no predictions to score")
        scores = [self.score(p, r) for p, r in zip(predictions, references)]
        n = len(scores)
        return {
            "rouge_l": sum(s.rouge_l for s in scores) / n,
            "exact_match": sum(s.exact_match for s in scores) / n,
            "japanese_rate": sum(s.prediction_japanese for s in scores) / n,
            "n": float(n),
        }
