"""Script-based Japanese checks (kana and kanji shares), for quick looks at text.

Not the scoring rule: the Japanese tasks decide "is this Japanese?" with fastText lid.176, as the
paper's evaluation does (``evomm.text.langid``); a script check disagrees with it on short or
half-width text (``ｶﾒﾗ`` is Japanese script but not Japanese to lid.176).
"""

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

    Pure kanji text is also Chinese; it counts here. Text with no letters (e.g. a bare number) is
    not Japanese.
    """
    return japanese_ratio(text) >= min_ratio


def has_kana(text: str) -> bool:
    return bool(_KANA.search(text))
