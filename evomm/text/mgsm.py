"""MGSM-JA scoring: read the number a response ends with, and require a Japanese response.

A response is correct when the number read from it equals the answer exactly AND the response is
Japanese by fastText lid.176 (P(ja) > 0.5 on the response with its newlines deleted;
``evomm.text.langid``), as in the paper's evaluation (SakanaAI/evolutionary-model-merge,
``evomerge/eval/ja_mgsm.py``). Two number readers:

``paper`` (the default; the paper's): the LAST match of ``\\d*\\.?\\d+`` in the raw response, read
    with ``float``. ``\\d`` is any Unicode decimal digit, so full-width "１２" reads 12; there are no
    thousands separators ("1,234" reads 234), no signs ("-5" reads 5), ".5" reads 0.5, and
    superscripts are no digits ("10⁵" reads 10).
``strict``: the last number, where a number is an optional minus sign (a "-" right after a digit
    is a dash, "3-5", not a sign; "−", "－", "‒", "–" count as "-"), digits with optional comma
    groups of 3 or 4 digits (western "12,345" and Japanese 万-grouping "12,5000" -> 125000; a comma
    not followed by exactly 3 or 4 digits ends the number: "1,2,3" reads 3), optional decimals,
    or a bare ".5". Full-width commas and points count ("１２，０００" -> 12000); superscripts
    and circled digits are not digits here either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evomm.text.langid import LanguageId, language_id

_PAPER_NUMBER = re.compile(r"\d*\.?\d+")

_STRICT_MARKS = str.maketrans({"，": ",", "．": ".", "－": "-", "\u2212": "-", "\u2012": "-", "\u2013": "-"})
_STRICT_NUMBER = re.compile(
    r"(?:(?<!\d)-)?"  # a sign, unless it follows a digit (a range dash)
    r"(?:\d+(?:,\d{3,4}(?!\d))*(?:\.\d+)?|\.\d+)"
)


def _to_float(text: str) -> float | None:
    try:
        return float(text)  # float() reads every Unicode decimal digit, as \d matches them
    except ValueError:
        return None


def read_number_paper(response: str) -> float | None:
    """The paper's reader: the last ``\\d*\\.?\\d+`` of the response, or None."""
    matches = _PAPER_NUMBER.findall(response)
    return _to_float(matches[-1]) if matches else None


def read_number_strict(response: str) -> float | None:
    """The strict reader: the last signed, comma-grouped, decimal number, or None."""
    matches = _STRICT_NUMBER.findall(response.translate(_STRICT_MARKS))
    return _to_float(matches[-1].replace(",", "")) if matches else None


READERS = {"paper": read_number_paper, "strict": read_number_strict}


def check_reader(reader: str) -> None:
    if reader not in READERS:
        raise ValueError(f"unknown number reader {reader!r}; use one of {sorted(READERS)}")


def read_number(response: str, reader: str = "paper") -> float | None:
    check_reader(reader)
    return READERS[reader](response)


@dataclass(frozen=True)
class Judgement:
    number: float | None  # what the reader read
    right_number: bool  # number == answer
    japanese: bool  # P(ja) > 0.5

    @property
    def correct(self) -> bool:
        return self.right_number and self.japanese


def judge(response: str, answer: float, reader: str = "paper", lang: LanguageId | None = None) -> Judgement:
    """One response against its answer: the per-item score of MGSM-JA is ``correct``."""
    number = read_number(response, reader)
    lang = language_id() if lang is None else lang
    return Judgement(number, number is not None and number == float(answer), lang.mgsm_japanese(response))
