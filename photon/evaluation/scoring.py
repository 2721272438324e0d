"""What a benchmark scorer returns, and helpers to build it.

A scorer turns cases into tables (rows of cases, columns of metrics) and one function,
`estimate(weights)`, that computes every table cell from per-case weights. Weights of 1
give the point estimate; a bootstrap resample is the same call with weights counting how
often each case was drawn. Scorers precompute per-case values once (parsing, BERTScore) so
that each call is only weighted sums, which keeps 1000 resamples of a 34k-case benchmark
cheap and lets every aggregate (macro means, corpus BLEU) be recomputed in full on each
resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from photon.evaluation.bertscore import DEFAULT_LAYER, DEFAULT_MODEL
from photon.evaluation.cases import Case

Cell = tuple[str, str, str]  # (table, row, column)
Estimate = Callable[[np.ndarray], dict[Cell, float]]


@dataclass
class EvalOptions:
    """Choices `photon eval` passes to every scorer (its command-line options)."""

    resamples: int = 1000
    seed: int = 0
    bertscore_model: str | None = DEFAULT_MODEL  # None: BERTScore off
    bertscore_layer: int = DEFAULT_LAYER
    bertscore_required: bool = False  # True when the user named the model: failing to load is an error
    bertscore_download: bool = False
    bertscore_batch_size: int = 32
    device: str = "auto"
    bleu: str = "corpus"  # corpus (paper) | sentence (3D-RAD release script: mean of per-case BLEU-1)
    mra: str = "continuous"  # which MRA the DeepTumorVQA score column uses: continuous | vsi


@dataclass(frozen=True)
class Column:
    key: str
    label: str


@dataclass
class Row:
    key: str
    label: str
    members: np.ndarray  # indices of the row's cases


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]


@dataclass
class Scoring:
    tables: list[Table]
    estimate: Estimate
    per_case: list[dict[str, Any]]  # what was parsed and scored, one dict per case, in case order
    failures: list[str | None]  # parse failure per case (None: parsed); failures score as wrong
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Scorer(Protocol):
    name: str
    description: str

    def check(self, case: Case) -> str | None:
        """Why this case cannot be scored (a missing meta field, ...), or None."""

    def score(self, cases: Sequence[Case], options: EvalOptions) -> Scoring: ...


# ---------------------------------------------------------------- building blocks

def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    return float(weights @ values / total) if total > 0 else math.nan


def mean_of(values: Iterable[float]) -> float:
    """Unweighted mean of the values that exist (NaN: a group absent from a resample)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def group_rows(keys: Sequence[Hashable], order: Sequence[Hashable] = (), label=str) -> list[Row]:
    """One row per distinct key: keys named in `order` first, in that order, then the rest sorted."""
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    rank = {key: n for n, key in enumerate(order)}
    ordered = sorted(members, key=lambda k: (rank.get(k, len(rank)), str(k)))
    return [Row(str(k), label(k), np.array(members[k], dtype=int)) for k in ordered]


def union_row(key: str, label: str, rows: Sequence[Row]) -> Row:
    parts = [r.members for r in rows]
    return Row(key, label, np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=int))


def all_row(n: int, label: str = "all") -> Row:
    return Row("all", label, np.arange(n))


def mean_estimate(tables: Sequence[Table], values: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Estimate:
    """Cells that are plain means: column key -> (per-case value, per-case applies mask); a
    cell is the weighted mean of the value over the row's cases where it applies."""
    cells = []
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                if column.key in values:
                    value, applies = values[column.key]
                    idx = row.members[applies[row.members]]
                    cells.append(((table.name, row.key, column.key), value[idx], idx))

    def estimate(weights: np.ndarray) -> dict[Cell, float]:
        return {cell: weighted_mean(value, weights[idx]) for cell, value, idx in cells}

    return estimate


def meta_text(case: Case, key: str, default: str = "") -> str:
    value = case.meta.get(key)
    return default if value is None else str(value).strip()


def require(case: Case, *keys: str) -> str | None:
    """The problem with a case lacking one of the meta keys, or None."""
    missing = [k for k in keys if case.meta.get(k) in (None, "")]
    return f"meta lacks {', '.join(repr(k) for k in missing)}" if missing else None


def letter_options(choices: Any) -> dict[str, str] | None:
    """Choices as letter -> text, from a {"A": ...} mapping or a list in letter order."""
    if isinstance(choices, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in choices.items()}
    if isinstance(choices, (list, tuple)) and choices:
        return {chr(ord("A") + i): str(v) for i, v in enumerate(choices)}
    return None
