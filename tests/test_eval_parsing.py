"""Answer parsing on the kinds of output real models write, failures included."""

from fractions import Fraction

import pytest

from photon.evaluation.parsing import (
    EMPTY,
    NO_LETTER,
    NO_NUMBER,
    NO_YES_NO,
    UNFINISHED,
    final_answer,
    parse_choice,
    parse_number,
    parse_yes_no,
    strip_reasoning,
)

YES_NO = {"A": "Yes", "B": "No"}
TEMPORAL = {"A": "Refractory", "B": "Resolved", "C": "New", "D": "No Abnormality"}


@pytest.mark.parametrize(
    "text, choices, letter",
    [
        ("B", None, "B"),
        ("Answer: B.", None, "B"),
        ("(B)", None, "B"),
        ("B. Yes", None, "B"),
        ("B) two", None, "B"),
        ("**C**", None, "C"),
        ("\\boxed{B}", None, "B"),
        ("The options are close, so $\\boxed{C}$.", None, "C"),
        ("Final Answer: (C) New", None, "C"),
        ("<answer>D</answer>", None, "D"),
        ("answer: c", None, "C"),  # lower case where the model points at it
        ("b", None, "B"),  # or where it says nothing else
        ("<think>A or C? The mass suggests A.</think>The answer is D", None, "D"),
        ("I weighed A against C.</think>\nB", None, "B"),  # template opened <think> in the prompt
        ("I think B", None, "B"),
        ("Option B is the most likely, not C.", None, "B"),  # the first standalone letter
        ("Yes", YES_NO, "A"),  # the text of an option
        ("There is no nodule.", YES_NO, "B"),  # the only option it names
        ("The lesion is refractory.", TEMPORAL, "A"),
        ("Meniscal tear", {"A": "ACL tear", "B": "Effusion", "C": "Meniscal tear"}, "C"),
    ],
)
def test_parse_choice_finds_the_letter(text, choices, letter):
    parsed = parse_choice(text, choices)
    assert parsed.ok and parsed.value == letter, parsed


@pytest.mark.parametrize(
    "text, choices, failure",
    [
        ("", None, EMPTY),
        ("   \n", None, EMPTY),
        (None, None, EMPTY),
        ("<think>The first frame shows a mass, so", None, UNFINISHED),
        ("<think>all reasoning</think>", None, EMPTY),
        ("A nodule is present in the left lobe.", YES_NO, NO_LETTER),  # "A" is the article
        ("The answer is a nodule", None, NO_LETTER),
        ("Based on the image I cannot tell.", None, NO_LETTER),
        ("E", None, NO_LETTER),  # not one of A-D
        ("Yes and no", YES_NO, NO_LETTER),  # names both options
    ],
)
def test_parse_choice_reports_why_it_failed(text, choices, failure):
    parsed = parse_choice(text, choices)
    assert parsed.value is None and parsed.failure == failure


def test_letters_follow_the_number_of_choices():
    assert parse_choice("E", letters="ABCDE").value == "E"
    assert parse_choice("F", {k: k for k in "ABCDEF"}).value == "F"


@pytest.mark.parametrize(
    "text, value",
    [
        ("12.5 cm", Fraction(25, 2)),
        ("1,234 mL", 1234),
        ("3,4", 3),  # not a thousands separator
        ("about 3 (range 2-4)", 3),  # several numbers: the first
        ("10-14 mm", 10),  # a hyphen, not a minus
        ("-5 HU", -5),
        ("\u22125 HU", -5),
        (".5 cm", Fraction(1, 2)),
        ("1.5e3 voxels", 1500),
        ("T2 hyperintense lesion of 4 mm", 4),  # digits inside a word are not a number
        ("45%", 45),
        ("<think>I measured 10 and 14</think>Answer: 12", 12),
        ("Two lesions of 3 and 5 mm; answer: 2", 2),  # the answer marker wins
        ("\\boxed{42}", 42),
        ("three lesions", 3),  # number words only without digits
        ("none", 0),
    ],
)
def test_parse_number_is_exact_and_ignores_units(text, value):
    parsed = parse_number(text)
    assert parsed.ok and parsed.value == value and isinstance(parsed.value, Fraction)


@pytest.mark.parametrize("text, failure", [("no number here", NO_NUMBER), ("", EMPTY), ("<think>12", UNFINISHED)])
def test_parse_number_failures(text, failure):
    assert parse_number(text).failure == failure


@pytest.mark.parametrize(
    "text, value",
    [
        ("Yes.", "yes"),
        ("No, there is no lesion", "no"),
        ("There is a lesion, yes", "yes"),
        ("Yes and no", "yes"),  # the leading word decides
        ("Answer: no", "no"),
        ("<think>yes?</think>No", "no"),
    ],
)
def test_parse_yes_no(text, value):
    assert parse_yes_no(text).value == value


@pytest.mark.parametrize("text", ["maybe", "The nodule is not present.", "I don't know"])
def test_parse_yes_no_fails_without_either_word(text):
    assert parse_yes_no(text).failure == NO_YES_NO


def test_final_answer_and_strip_reasoning():
    assert final_answer("Answer: MRI").value == "MRI"
    assert final_answer("<think>x</think> Liver").value == "Liver"
    assert final_answer("Reasoning first.\nFinal answer: left kidney\nMore text").value == "left kidney"
    assert strip_reasoning("<THINK>a</THINK>b") == "b"
    assert strip_reasoning("head <think>never closed") == "head "
    assert strip_reasoning("<think>never closed") is None
