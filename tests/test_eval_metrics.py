"""BLEU-1 / ROUGE-1 against sacrebleu and rouge-score, MRA on worked examples, the bootstrap."""

import importlib.util
from fractions import Fraction

import numpy as np
import pytest

from photon.evaluation.bootstrap import bootstrap
from photon.evaluation.metrics import (
    bleu1_from_stats,
    bleu1_stats,
    corpus_bleu1,
    mra_continuous,
    mra_thresholded,
    rouge1_f1,
    token_recall,
)

# Only the comparisons with the reference implementations need them; the rest runs without.
needs_sacrebleu = pytest.mark.skipif(importlib.util.find_spec("sacrebleu") is None, reason="needs sacrebleu (the eval extra)")
needs_rouge = pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="needs rouge-score (the eval extra)")

HYPOTHESES = [
    "The nodule is 5 mm.",  # punctuation split by 13a; "The" vs "the" is case-sensitive
    "No pleural effusion",  # shorter than its reference: brevity penalty
    "",  # empty: adds reference length only
    "left upper lobe, right lobe lobe lobe",  # clipped repeats, longer than its reference
    "Cardiomegaly with pericardial effusion (small).",
]
REFERENCES = [
    "A 5 mm nodule is seen in the lung.",
    "There is no pleural effusion.",
    "Cardiomegaly.",
    "Left upper lobe",
    "cardiomegaly, small pericardial effusion",
]


def _sacrebleu_bleu1():
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=1, smooth_method="none", tokenize="13a", lowercase=False)


@needs_sacrebleu
def test_corpus_bleu1_equals_sacrebleu():
    expected = _sacrebleu_bleu1().corpus_score(HYPOTHESES, [REFERENCES]).score
    assert corpus_bleu1(HYPOTHESES, REFERENCES) == pytest.approx(expected, abs=1e-9)
    assert 0 < expected < 100


@needs_sacrebleu
@pytest.mark.parametrize("hyp, ref", list(zip(HYPOTHESES, REFERENCES)))
def test_per_case_bleu1_equals_sacrebleu_on_one_sentence(hyp, ref):
    expected = _sacrebleu_bleu1().corpus_score([hyp], [[ref]]).score
    assert bleu1_from_stats(*bleu1_stats(hyp, ref)) == pytest.approx(expected, abs=1e-9)


def test_bleu1_by_hand():
    # hyp "pleural effusion" vs ref "pleural effusion on the right": 2 matches of 2 tokens,
    # BP = exp(1 - 5/2); BLEU-1 = 100 * exp(-1.5) * 2/2 = 22.313...
    assert bleu1_stats("pleural effusion", "pleural effusion on the right") == (2, 2, 5)
    assert bleu1_from_stats(2, 2, 5) == pytest.approx(100 * np.exp(-1.5))
    assert bleu1_from_stats(0, 3, 3) == 0.0 and bleu1_from_stats(0, 0, 3) == 0.0


@needs_rouge
@pytest.mark.parametrize("hyp, ref", list(zip(HYPOTHESES, REFERENCES)) + [("a small nodule", "nodule")])
def test_rouge1_f1_equals_rouge_score_without_stemmer(hyp, ref):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    assert rouge1_f1(hyp, ref) == pytest.approx(100 * scorer.score(ref, hyp)["rouge1"].fmeasure)


def test_rouge1_uses_no_stemmer():
    # With a stemmer "nodules" would match "nodule"; the published setting has none.
    assert rouge1_f1("nodules", "nodule") == 0.0


def test_token_recall():
    # reference words {left, lung x2, right}; the hypothesis has right and one lung: 2 of 4
    assert token_recall("right lung", "left lung right lung") == 50.0
    assert token_recall("edema of the brain", "brain edema") == 100.0
    assert token_recall("", "liver") == 0.0


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        (10, 10, 1.0),
        (12, 10, 0.7),  # error 0.2 <= 1 - t for t = 0.50 .. 0.80: 7 of 10
        (15, 10, 0.1),  # error 0.5: boundary, counts for t = 0.50 only
        (5, 10, 0.1),
        (16, 10, 0.0),  # error 0.6 beyond every threshold
        (2.1, 2.0, 1.0),  # error 0.05: boundary of t = 0.95, decided exactly
        (1.1, 1, 0.9),  # error 0.1 counts for t <= 0.90 (float arithmetic would say 0.8)
        (-12, -10, 0.7),  # negative references use |gt|
        (0, 0, 1.0),  # gt = 0: right only when pred = 0
        (0.1, 0, 0.0),
        (Fraction(21, 2), 10, 1.0),  # error 0.05
    ],
)
def test_mra_thresholded_worked_examples(pred, gt, expected):
    assert mra_thresholded(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [(12, 10, 0.8), (15, 10, 0.5), (25, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (0, 0, 1.0), (1, 0, 0.0), (-8, -10, 0.8)],
)
def test_mra_continuous_worked_examples(pred, gt, expected):
    assert mra_continuous(pred, gt) == pytest.approx(expected)


def test_bootstrap_resamples_cases_with_the_seeded_generator():
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    n, resamples = len(values), 200

    def estimate(w):
        return {("t", "all", "acc"): float(w @ values / w.sum())}

    intervals = bootstrap([estimate], n, resamples=resamples, seed=3)
    rng = np.random.default_rng(3)  # the same draws, done by hand
    means = [values[rng.integers(0, n, size=n)].mean() for _ in range(resamples)]
    assert intervals[("t", "all", "acc")] == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)))
    assert bootstrap([estimate], n, resamples=resamples, seed=3) == intervals
    assert bootstrap([estimate], n, resamples=resamples, seed=4) != intervals


def test_paired_bootstrap_of_a_difference():
    a = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    b = a.copy()

    def mean(values):
        return lambda w: {("t", "all", "acc"): float(w @ values / w.sum())}

    def difference(results):
        return {cell: results[1][cell] - value for cell, value in results[0].items()}

    # Identical runs differ by exactly 0 on every paired resample.
    assert bootstrap([mean(a), mean(b)], 5, resamples=50, combine=difference)[("t", "all", "acc")] == (0.0, 0.0)
    b[1] = 1.0  # B fixes one case: every resample's difference is >= 0
    low, high = bootstrap([mean(a), mean(b)], 5, resamples=200, combine=difference)[("t", "all", "acc")]
    assert low >= 0.0 and 0.0 < high <= 1.0


def test_mra_of_a_number_no_float_can_hold():
    from photon.evaluation.benchmarks.deeptumorvqa import as_json_number
    from photon.evaluation.parsing import parse_number

    huge = parse_number("1e999 mL").value  # garbage a model may write
    assert mra_continuous(huge, 10) == 0.0 and mra_thresholded(huge, 10) == 0.0
    assert as_json_number(huge).startswith("1000") and as_json_number(Fraction(5, 2)) == 2.5
