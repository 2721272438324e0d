"""Text and number metrics with the published settings.

BLEU-1 is computed from per-case sufficient statistics (clipped unigram matches, hypothesis
and reference lengths) so that corpus BLEU can be recomputed on every bootstrap resample by
summing them. Tokenisation is sacrebleu's 13a, case-sensitive; no smoothing; brevity penalty
exp(1 - r / h) when h < r (0 when h = 0), as sacrebleu computes it.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from functools import lru_cache
from numbers import Number

import numpy as np

from photon.core.errors import PhotonError


@lru_cache(maxsize=1)
def _tokenizer_13a():
    try:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    except ImportError as exc:  # pragma: no cover - the eval extra ships it
        raise PhotonError("BLEU needs sacrebleu: pip install 'photon[eval]'") from exc
    return Tokenizer13a()


def bleu1_stats(hypothesis: str, reference: str) -> tuple[int, int, int]:
    """(clipped unigram matches, hypothesis length, reference length) after 13a tokenisation."""
    tokenize = _tokenizer_13a()
    hyp = tokenize(hypothesis.strip()).split()
    ref = tokenize(reference.strip()).split()
    ref_counts = Counter(ref)
    matches = sum(min(n, ref_counts[tok]) for tok, n in Counter(hyp).items())
    return matches, len(hyp), len(ref)


def bleu1_from_stats(matches: float, hyp_len: float, ref_len: float) -> float:
    """BLEU-1 x 100 from summed statistics (corpus BLEU when the sums run over a corpus)."""
    if hyp_len <= 0 or matches <= 0:
        return 0.0
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * brevity * matches / hyp_len


def corpus_bleu1(hypotheses: list[str], references: list[str]) -> float:
    stats = np.array([bleu1_stats(h, r) for h, r in zip(hypotheses, references)], dtype=float).reshape(-1, 3)
    return bleu1_from_stats(*stats.sum(axis=0))


@lru_cache(maxsize=1)
def _rouge1_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover
        raise PhotonError("ROUGE needs rouge-score: pip install 'photon[eval]'") from exc
    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def rouge1_f1(hypothesis: str, reference: str) -> float:
    """ROUGE-1 F1 x 100, rouge-score's tokeniser, no stemmer."""
    return 100.0 * _rouge1_scorer().score(reference, hypothesis)["rouge1"].fmeasure


def token_recall(hypothesis: str, reference: str) -> float:
    """Share of the reference's words (with multiplicity) found in the hypothesis, x 100.

    Both sides are already normalised text (parsing.normalize_text)."""
    ref = Counter(reference.split())
    if not ref:
        return 0.0
    hyp = Counter(hypothesis.split())
    return 100.0 * sum(min(n, hyp[w]) for w, n in ref.items()) / sum(ref.values())


# ---------------------------------------------------------------- MRA

def _exact(x: Number) -> Fraction:
    # Floats go through their shortest repr so 1.1 means 11/10, as written; boundaries such
    # as |1.1 - 1| / 1 <= 0.10 are then decided exactly.
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"MRA needs finite numbers, got {x}")
        return Fraction(repr(x))
    return Fraction(x)


def mra_thresholded(pred: Number, gt: Number) -> float:
    """VSI-Bench MRA: the share of thresholds t in {0.50, 0.55, ..., 0.95} with
    |pred - gt| / |gt| <= 1 - t (the release's <=; |gt| so negative references work).
    gt = 0: 1 when pred = 0, else 0."""
    p, g = _exact(pred), _exact(gt)
    if g == 0:
        return 1.0 if p == 0 else 0.0
    err = abs(p - g) / abs(g)
    return sum(err <= 1 - Fraction(k, 20) for k in range(10, 20)) / 10


def mra_continuous(pred: Number, gt: Number) -> float:
    """DeepTumorVQA v2 MRA: max(0, 1 - |pred - gt| / |gt|); gt = 0: 1 when pred = 0, else 0."""
    p, g = _exact(pred), _exact(gt)
    if g == 0:
        return 1.0 if p == 0 else 0.0
    return float(max(Fraction(0), 1 - abs(p - g) / abs(g)))
