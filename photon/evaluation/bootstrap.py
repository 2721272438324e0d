"""Percentile bootstrap over cases: each resample draws n cases with replacement from the
whole set and recomputes every aggregate from scratch (macro means, corpus BLEU included)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from photon.evaluation.scoring import Cell, Estimate

Interval = tuple[float, float] | None


def resample_weights(n: int, resamples: int, seed: int):
    """Per-case draw counts of each resample (seeded, so runs repeat exactly)."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, n, size=n), minlength=n).astype(float)


def _intervals(samples: dict[Cell, list[float]], level: float) -> dict[Cell, Interval]:
    tail = 100 * (1 - level) / 2
    out: dict[Cell, Interval] = {}
    for cell, values in samples.items():
        finite = np.array([v for v in values if not math.isnan(v)])
        out[cell] = (float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))) if len(finite) else None
    return out


def bootstrap(
    estimates: Sequence[Estimate],
    n: int,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    combine: Callable[[list[dict[Cell, float]]], dict[Cell, float]] | None = None,
    desc: str = "bootstrap",
) -> dict[Cell, Interval]:
    """Confidence intervals of every cell. Several estimates over the same n cases share each
    resample (a paired bootstrap); `combine` turns their values into the reported cells (a
    difference, for comparisons). A cell absent from some resamples (a row none of whose
    cases was drawn) uses the resamples where it exists."""
    combine = combine or (lambda values: values[0])
    samples: dict[Cell, list[float]] = {}
    if n == 0:
        return {}
    for weights in tqdm(resample_weights(n, resamples, seed), total=resamples, desc=desc, unit="resample", disable=None):
        for cell, value in combine([estimate(weights) for estimate in estimates]).items():
            samples.setdefault(cell, []).append(value)
    return _intervals(samples, level)
