"""MedFrameQA: accuracy of the chosen letter, overall and by modality, system, organ and
number of frames."""

from __future__ import annotations

import numpy as np

from photon.core.hookspecs import hookimpl
from photon.evaluation.choice import gold_letter, score_choices
from photon.evaluation.scoring import Column, Scoring, Table, all_row, group_rows, mean_estimate, meta_text

BREAKDOWNS = (("modality", "By modality"), ("system", "By system"), ("organ", "By organ"))


def frame_count(case) -> int | None:
    value = case.meta.get("n_frames")
    if value is None:
        value = len(case.meta["images"]) if isinstance(case.meta.get("images"), list) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class MedFrameQAScorer:
    name = "medframeqa"
    description = "MedFrameQA multiple choice: accuracy overall and by modality, system, organ, frame count"

    def check(self, case):
        if gold_letter(case, "answer_letter") is None:
            return "meta lacks 'answer_letter' (the correct option letter)"
        return None

    def score(self, cases, options):
        golds = [gold_letter(c, "answer_letter") for c in cases]
        correct, per_case, failures = score_choices(cases, golds, letters="ABCDEF")
        accuracy = [Column("accuracy", "accuracy")]
        tables = [Table("overall", "Overall", accuracy, [all_row(len(cases))])]
        for key, title in BREAKDOWNS:
            tables.append(Table(key, title, accuracy, group_rows([meta_text(c, key, "unknown") for c in cases])))
        frames = [frame_count(c) for c in cases]
        rows = group_rows(
            [-1 if f is None else f for f in frames],
            order=sorted(set(f for f in frames if f is not None)),
            label=lambda f: "unknown" if f == -1 else f"{f} frames",
        )
        tables.append(Table("frames", "By number of frames", accuracy, rows))
        estimate = mean_estimate(tables, {"accuracy": (100 * correct, np.ones(len(cases), bool))})
        return Scoring(tables, estimate, per_case, failures)


@hookimpl
def register_metrics(register):
    register("medframeqa", MedFrameQAScorer())
