"""Scoring a predictions file (or two, side by side) into report dictionaries.

evaluate_file: load -> check each case with the benchmark's scorer -> score -> point
estimates and bootstrap intervals -> efficiency means -> a JSON-ready dict.
compare_files: the same for two runs on the cases they share, with a paired bootstrap of
every difference (run B minus run A).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from photon.core import plugins
from photon.core.errors import PhotonError
from photon.evaluation.bootstrap import bootstrap
from photon.evaluation.cases import EFFICIENCY_FIELDS, RUN_FIELDS, Case, Problems, load_predictions
from photon.evaluation.scoring import EvalOptions, Scorer, Scoring

LEVEL = 0.95
EXAMPLES = 20  # bad records / missing ids listed in the report


@dataclass
class Run:
    """One predictions file, checked and ready to score."""

    path: Path
    benchmark: str
    scorer: Scorer
    cases: list[Case]
    problems: list[str]
    missing: list[str]


def scorer_for(benchmark: str) -> Scorer:
    registered = plugins.metrics()
    if benchmark not in registered:
        raise PhotonError(f"no scorer for benchmark {benchmark!r}; registered: {', '.join(sorted(registered)) or 'none'}")
    return registered[benchmark].obj


def resolve_benchmark(benchmark: str | None, cases: Sequence[Case], path: Path) -> str:
    if benchmark:
        return benchmark
    named = sorted({c.benchmark for c in cases if c.benchmark})
    if len(named) != 1:
        found = ", ".join(named) if named else "no 'benchmark' field"
        raise PhotonError(f"{path}: cannot tell the benchmark ({found}); pass --benchmark")
    return named[0]


def load_run(path, benchmark: str | None = None, ref=None, *, strict: bool = False) -> Run:
    """Read predictions and keep the cases the benchmark's scorer can score."""
    path = Path(path)
    loaded = load_predictions(path, ref, strict=strict)
    benchmark = resolve_benchmark(benchmark, loaded.cases, path)
    scorer = scorer_for(benchmark)
    problems = Problems(strict, loaded.problems)
    cases = []
    for case in loaded.cases:
        reason = None
        if case.benchmark and case.benchmark != benchmark:
            reason = f"record is for benchmark {case.benchmark!r}, not {benchmark!r}"
        reason = reason or scorer.check(case)
        if reason:
            problems.add(f"{case.source}: {case.id}: {reason}")
        else:
            cases.append(case)
    if not cases:
        first = f" (first problem: {problems.items[0]})" if problems.items else ""
        raise PhotonError(f"{path}: no prediction could be scored as {benchmark}{first}")
    return Run(path, benchmark, scorer, cases, problems.items, loaded.missing)


# ---------------------------------------------------------------- report pieces

def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _interval(ci) -> list[float] | None:
    return None if ci is None else [round(ci[0], 6), round(ci[1], 6)]


def efficiency_means(cases: Sequence[Case], members: np.ndarray) -> dict[str, float | None]:
    """Mean of each efficiency field over the row's cases that report it (None: none do)."""
    out = {}
    for name in EFFICIENCY_FIELDS:
        values = [cases[i].efficiency[name] for i in members if name in cases[i].efficiency]
        out[name] = _number(sum(values) / len(values)) if values else None
    return out


def run_summary(run: Run) -> dict[str, Any]:
    described = {k: sorted({str(c.run[k]) for c in run.cases if k in c.run}) for k in RUN_FIELDS}
    return {
        "predictions": str(run.path),
        "n_cases": len(run.cases),
        "run": {k: v for k, v in described.items() if v},
        "bad_records": {"count": len(run.problems), "examples": run.problems[:EXAMPLES]},
        "missing_predictions": {"count": len(run.missing), "examples": run.missing[:EXAMPLES]},
    }


def failure_summary(scoring: Scoring) -> dict[str, Any]:
    reasons = Counter(f for f in scoring.failures if f)
    return {"count": sum(reasons.values()), "by_reason": dict(reasons.most_common())}


def _table_dicts(scoring: Scoring, entry, extras) -> list[dict[str, Any]]:
    """Tables as data: entry(cell) gives a metric's dict (None: no such cell), extras(row)
    the row's counts and efficiency."""
    tables = []
    for table in scoring.tables:
        rows = []
        for row in table.rows:
            metrics = {c.key: found for c in table.columns if (found := entry((table.name, row.key, c.key))) is not None}
            rows.append({"key": row.key, "label": row.label, "n": int(len(row.members)), "metrics": metrics, **extras(row)})
        columns = [{"key": c.key, "label": c.label} for c in table.columns if any(c.key in r["metrics"] for r in rows)]
        tables.append({"name": table.name, "title": table.title, "columns": columns, "rows": rows})
    return tables


def _failed(scoring: Scoring) -> np.ndarray:
    return np.array([f is not None for f in scoring.failures], dtype=bool)


def _bootstrap_info(options: EvalOptions) -> dict[str, Any]:
    return {
        "method": "percentile bootstrap; cases resampled with replacement from the whole set; every aggregate recomputed",
        "resamples": options.resamples,
        "seed": options.seed,
        "level": LEVEL,
    }


def evaluate_file(pred, benchmark: str | None = None, ref=None, *, options: EvalOptions | None = None, strict: bool = False):
    """Score one predictions file: (report dict, per-case records)."""
    options = options or EvalOptions()
    run = load_run(pred, benchmark, ref, strict=strict)
    scoring = run.scorer.score(run.cases, options)
    point = scoring.estimate(np.ones(len(run.cases)))
    intervals = bootstrap([scoring.estimate], len(run.cases), resamples=options.resamples, seed=options.seed, level=LEVEL)
    failed = _failed(scoring)

    def entry(cell):
        return {"value": _number(point[cell]), "ci": _interval(intervals.get(cell))} if cell in point else None

    def extras(row):
        return {"unparsed": int(failed[row.members].sum()), "efficiency": efficiency_means(run.cases, row.members)}

    tables = _table_dicts(scoring, entry, extras)
    report = {
        "benchmark": run.benchmark,
        "references": None if ref is None else str(ref),
        **run_summary(run),
        "bootstrap": _bootstrap_info(options),
        "parse_failures": failure_summary(scoring),
        "notes": scoring.notes,
        "tables": tables,
    }
    per_case = [
        {"id": case.id, "failure": failure, **record}
        for case, failure, record in zip(run.cases, scoring.failures, scoring.per_case)
    ]
    return report, per_case


def compare_files(
    pred_a, pred_b, benchmark: str | None = None, ref=None, *, options: EvalOptions | None = None, strict: bool = False
) -> dict[str, Any]:
    """Two runs on the cases both scored, side by side, with paired-bootstrap intervals of
    each run and of the difference B - A."""
    options = options or EvalOptions()
    run_a = load_run(pred_a, benchmark, ref, strict=strict)
    run_b = load_run(pred_b, benchmark or run_a.benchmark, ref, strict=strict)
    if run_a.benchmark != run_b.benchmark:
        raise PhotonError(f"{pred_a} is {run_a.benchmark} but {pred_b} is {run_b.benchmark}")
    by_id = {c.id: c for c in run_b.cases}
    shared = [c.id for c in run_a.cases if c.id in by_id]
    if not shared:
        raise PhotonError(f"{pred_a} and {pred_b} share no prediction id")
    only_a, only_b = len(run_a.cases) - len(shared), len(run_b.cases) - len(shared)
    keep = set(shared)
    run_a.cases = [c for c in run_a.cases if c.id in keep]
    run_b.cases = [by_id[i] for i in shared]  # the same order: one weight vector fits both
    scoring_a = run_a.scorer.score(run_a.cases, options)
    scoring_b = run_b.scorer.score(run_b.cases, options)
    n = len(shared)

    def sides(values):
        a, b = values
        out = {("a",) + cell: v for cell, v in a.items()}
        out.update({("b",) + cell: v for cell, v in b.items()})
        out.update({("diff",) + cell: b[cell] - v for cell, v in a.items() if cell in b})
        return out

    point = sides([scoring_a.estimate(np.ones(n)), scoring_b.estimate(np.ones(n))])
    intervals = bootstrap(
        [scoring_a.estimate, scoring_b.estimate], n, resamples=options.resamples, seed=options.seed,
        level=LEVEL, combine=sides, desc="paired bootstrap",
    )
    failed = {"a": _failed(scoring_a), "b": _failed(scoring_b)}

    def entry(cell):
        if ("a",) + cell not in point:
            return None
        return {
            side: {"value": _number(point.get((side,) + cell, math.nan)), "ci": _interval(intervals.get((side,) + cell))}
            for side in ("a", "b", "diff")
        }

    def extras(row):
        return {
            "unparsed": {side: int(failed[side][row.members].sum()) for side in ("a", "b")},
            "efficiency": {"a": efficiency_means(run_a.cases, row.members), "b": efficiency_means(run_b.cases, row.members)},
        }

    tables = _table_dicts(scoring_a, entry, extras)
    return {
        "benchmark": run_a.benchmark,
        "references": None if ref is None else str(ref),
        "a": {**run_summary(run_a), "parse_failures": failure_summary(scoring_a), "notes": scoring_a.notes},
        "b": {**run_summary(run_b), "parse_failures": failure_summary(scoring_b), "notes": scoring_b.notes},
        "n_shared": n,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "bootstrap": {**_bootstrap_info(options), "paired": True},
        "tables": tables,
    }
