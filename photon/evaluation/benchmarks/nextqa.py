"""NExT-QA: accuracy per question type and Acc@C / Acc@T / Acc@D, as the release's eval_mc.py
computes them (TP counted with TN; group and overall accuracies pooled over questions)."""

from __future__ import annotations

import numpy as np

from photon.core.hookspecs import hookimpl
from photon.evaluation.choice import gold_letter, score_choices
from photon.evaluation.scoring import Column, Scoring, Table, all_row, group_rows, mean_estimate, require, union_row

TYPES = {
    "CW": "CW (why)",
    "CH": "CH (how)",
    "TN": "TN+TP (before/after)",
    "TC": "TC (when)",
    "DC": "DC (count)",
    "DL": "DL (location)",
    "DO": "DO (other)",
}
GROUPS = (("C", "Acc@C (causal)", ("CW", "CH")), ("T", "Acc@T (temporal)", ("TN", "TC")), ("D", "Acc@D (descriptive)", ("DC", "DL", "DO")))


def question_type(case) -> str:
    kind = str(case.meta.get("type", "")).strip().upper()
    return "TN" if kind == "TP" else kind  # the release merges previous/next into one type


class NextQAScorer:
    name = "nextqa"
    description = "NExT-QA multiple choice: accuracy per type, Acc@C/T/D, overall"

    def check(self, case):
        problem = require(case, "type")
        if problem:
            return problem
        if gold_letter(case, "answer_letter", "answer_index") is None:
            return "meta has neither 'answer_letter' (A-E) nor 'answer_index' (0-4)"
        return None

    def score(self, cases, options):
        golds = [gold_letter(c, "answer_letter", "answer_index") for c in cases]
        correct, per_case, failures = score_choices(cases, golds, letters="ABCDE")
        types = [question_type(c) for c in cases]
        rows = group_rows(types, order=list(TYPES), label=lambda t: TYPES.get(t, t))
        groups = [union_row(key, label, [r for r in rows if r.key in members]) for key, label, members in GROUPS]
        table = Table("type", "By question type", [Column("accuracy", "accuracy")], rows + groups + [all_row(len(cases))])
        estimate = mean_estimate([table], {"accuracy": (100 * correct, np.ones(len(cases), bool))})
        return Scoring([table], estimate, per_case, failures)


@hookimpl
def register_metrics(register):
    register("nextqa", NextQAScorer())
