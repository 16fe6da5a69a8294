"""Script-based language checks shared by the Japanese tasks."""

from __future__ import annotations

import re

# Hiragana, katakana (incl. half-width), CJK unified ideographs and the iteration mark.
_JA_CHAR = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\uff66-\uff9f\u4e00-\u9fff\u3005]")
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\uff66-\uff9f]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)


def japanese_ratio(text: str) -> float:
    """Share of the letters in ``text`` that are Japanese script (digits and punctuation ignored)."""
    letters = _LETTER.findall(text)
    if not letters:
        return 0.0
    return sum(1 for c in letters if _JA_CHAR.match(c)) / len(letters)


def is_japanese(text: str, min_ratio: float = 0.5) -> bool:
    """True when most letters are Japanese script.

    Pure kanji text is also Chinese; we accept it because the tasks only ask "is this Japanese
    rather than English", which is what the paper's rule guards against. Text with no letters
    (e.g. a bare number) is not Japanese.
    """
    return japanese_ratio(text) >= min_ratio


def has_kana(text: str) -> bool:
    return bool(_KANA.search(text))
