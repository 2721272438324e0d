"""Scoring multiple-choice answers: the gold letter from meta, the parsed letter, right or wrong."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from photon.evaluation.cases import Case
from photon.evaluation.parsing import parse_choice
from photon.evaluation.scoring import letter_options


def gold_letter(case: Case, letter_key: str, index_key: str | None = None) -> str | None:
    """The correct option letter from meta[letter_key], or from a 0-based meta[index_key]."""
    letter = case.meta.get(letter_key)
    if isinstance(letter, str) and len(letter.strip()) == 1 and letter.strip().isalpha():
        return letter.strip().upper()
    index = case.meta.get(index_key) if index_key else None
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index.strip())
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 26:
        return chr(ord("A") + index)
    return None


def score_choices(
    cases: Sequence[Case], golds: Sequence[str], choices_key: str = "choices", letters: str = "ABCD"
) -> tuple[np.ndarray, list[dict[str, Any]], list[str | None]]:
    """(correct 0/1 per case, per-case records, parse failures). An unparsed answer is wrong."""
    correct = np.zeros(len(cases))
    per_case, failures = [], []
    for i, (case, gold) in enumerate(zip(cases, golds)):
        choices = letter_options(case.meta.get(choices_key))
        parsed = parse_choice(case.answer, choices, None if choices else letters)
        correct[i] = float(parsed.value == gold)
        failures.append(parsed.failure)
        per_case.append({"gold": gold, "parsed": parsed.value, "rule": parsed.rule, "correct": bool(correct[i])})
    return correct, per_case, failures
