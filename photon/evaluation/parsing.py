"""Turning raw model output into the value a benchmark scores: an option letter, a number,
yes/no, or normalised text.

Every parser returns a Parsed: the value, or None with the reason it failed, so scorers can
count and show parse failures instead of silently scoring them as some default answer. A
failure always scores as wrong. The rules are listed in docs/evaluation.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Mapping

EMPTY = "empty answer"
UNFINISHED = "reasoning never finished (<think> without </think>)"
NO_LETTER = "no option letter"
NO_NUMBER = "no number"
NO_YES_NO = "no yes/no"


@dataclass(frozen=True)
class Parsed:
    value: object | None
    failure: str | None = None
    rule: str | None = None  # which rule found the value, for the per-case output

    @property
    def ok(self) -> bool:
        return self.failure is None


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
# "Answer: X", "The answer is X", "Final answer = X", "correct option is X". A bare "answer"
# is not a marker: "I will answer ..." must not cut the text.
_MARKER = re.compile(
    r"\b(?:final\s+answer|answer|correct\s+(?:option|choice))\s*(?:is\b\s*[:：]?|[:：=])\s*", re.I
)


def strip_reasoning(text: str | None) -> str | None:
    """Drop <think>...</think> blocks; None when the reasoning was never closed.

    A lone </think> (chat templates that open the block in the prompt) drops everything
    before it.
    """
    text = "" if text is None else str(text)
    text = _THINK_BLOCK.sub(" ", text)
    if "</think>" in text.lower():
        text = text[text.lower().rindex("</think>") + len("</think>"):]
    if "<think>" in text.lower():
        head = text[: text.lower().index("<think>")]
        return head if head.strip() else None
    return text.strip()


def answer_segments(text: str) -> Iterator[tuple[str, str]]:
    """Where an answer may be stated, most explicit first: <answer> tags, \\boxed{}, the
    line after the last answer marker, then the whole text."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        yield "answer tag", tags[-1].strip()
    boxed = _BOXED.findall(text)
    if boxed:
        yield "boxed", boxed[-1].strip()
    markers = list(_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():].strip()
        yield "answer marker", tail.splitlines()[0] if tail else ""
    yield "text", text


def final_answer(text: str | None) -> Parsed:
    """The most explicit statement of the answer, as text (reasoning removed)."""
    body = strip_reasoning(text)
    if body is None:
        return Parsed(None, UNFINISHED)
    if not body:
        return Parsed(None, EMPTY)
    rule, segment = next(answer_segments(body))
    return Parsed(segment, None if segment else EMPTY, rule)


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", str(text).lower()).split())


# ---------------------------------------------------------------- option letters

def choice_letters(choices: Mapping[str, str] | None, default: str = "ABCD") -> str:
    return "".join(sorted(choices)) if choices else default


def _clean(segment: str) -> str:
    return segment.strip().strip("*_`\"'“”").strip()


def _is_article(segment: str, end: int) -> bool:
    """'A nodule ...': the article, not option A."""
    return re.match(r"\s+[a-z]", segment[end:]) is not None


def _letter_in(segment: str, letters: str, choices: Mapping[str, str] | None, explicit: bool):
    """One segment's letter by the documented rules, or (None, None)."""
    s = _clean(segment)
    lead = re.match(r"[\(\[]?([A-Za-z])(?:[\)\]]|(?=[.:,;!]|\s|$))", s)
    # Lower case counts only where the model pointed at it or said nothing else ("b").
    alone = re.fullmatch(r"[\(\[]?[A-Za-z][\)\].]?", s) is not None
    if lead and lead.group(1).upper() in letters and (explicit or alone or lead.group(1).isupper()):
        if not (lead.group(1) in "Aa" and _is_article(s, lead.end())):
            return lead.group(1).upper(), "leading letter"
    if choices:
        wanted = normalize_text(s)
        exact = [k for k, v in choices.items() if wanted and normalize_text(v) == wanted]
        if len(exact) == 1:
            return exact[0], "choice text"
    for m in re.finditer(r"[\(\[]([A-Z])[\)\]]", s):
        if m.group(1) in letters:
            return m.group(1), "parenthesised letter"
    for m in re.finditer(r"\b([A-Z])\b", s):
        if m.group(1) in letters and not (m.group(1) == "A" and _is_article(s, m.end())):
            return m.group(1), "standalone letter"
    if choices:
        words = f" {normalize_text(s)} "
        named = [k for k, v in choices.items() if normalize_text(v) and f" {normalize_text(v)} " in words]
        if len(named) == 1:
            return named[0], "choice named"
    return None, None


def parse_choice(text: str | None, choices: Mapping[str, str] | None = None, letters: str | None = None) -> Parsed:
    """The option letter an answer picks: "Answer: B.", "(B)", "B. Yes", "\\boxed{B}", "Yes"
    (the text of option A), ... Letters come from `choices` (letter -> option text) or
    `letters`."""
    letters = letters or choice_letters(choices)
    body = strip_reasoning(text)
    if body is None:
        return Parsed(None, UNFINISHED)
    if not body:
        return Parsed(None, EMPTY)
    for where, segment in answer_segments(body):
        letter, rule = _letter_in(segment, letters, choices, explicit=where != "text")
        if letter is not None:
            return Parsed(letter, None, f"{where}: {rule}")
    return Parsed(None, NO_LETTER)


# ---------------------------------------------------------------- numbers

# A sign only where it cannot be a hyphen ("10-14" is 10 then 14); thousands separators
# only in groups of three ("1,234" is 1234, "3,4" is 3).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
        " fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS["none"] = 0


def _first_number(segment: str) -> Fraction | None:
    m = _NUMBER.search(segment)
    if m:
        value = Fraction(m.group("num").replace(",", ""))
        if m.group("exp"):
            value *= Fraction(10) ** int(m.group("exp"))
        return -value if m.group("sign") in ("-", "\u2212") else value
    words = re.findall(r"[a-z]+", segment.lower())
    for word in words:
        if word in _NUMBER_WORDS:
            return Fraction(_NUMBER_WORDS[word])
    return None


def parse_number(text: str | None) -> Parsed:
    """The first number of the most explicit answer segment, exactly (a Fraction), units
    ignored: "12.5 cm" -> 12.5, "1,234 mL" -> 1234, "about 3 (range 2-4)" -> 3. Number words
    zero..twenty and "none" count only when no digits appear."""
    body = strip_reasoning(text)
    if body is None:
        return Parsed(None, UNFINISHED)
    if not body:
        return Parsed(None, EMPTY)
    for where, segment in answer_segments(body):
        value = _first_number(segment)
        if value is not None:
            return Parsed(value, None, where)
    return Parsed(None, NO_NUMBER)


# ---------------------------------------------------------------- yes / no

def parse_yes_no(text: str | None) -> Parsed:
    """'yes' or 'no': a leading yes/no word, else the only one of the two the answer uses."""
    body = strip_reasoning(text)
    if body is None:
        return Parsed(None, UNFINISHED)
    if not body:
        return Parsed(None, EMPTY)
    for where, segment in answer_segments(body):
        words = normalize_text(segment).split()
        if words and words[0] in ("yes", "no"):
            return Parsed(words[0], None, f"{where}: leading word")
        said = {w for w in words if w in ("yes", "no")}
        if len(said) == 1:
            return Parsed(said.pop(), None, f"{where}: only yes/no word")
    return Parsed(None, NO_YES_NO)
