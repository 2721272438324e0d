"""SLAKE (English): closed questions by normalised exact match, open questions by exact match
and by recall of the reference's words, reported separately."""

from __future__ import annotations

import re

import numpy as np

from photon.core.hookspecs import hookimpl
from photon.evaluation.metrics import token_recall
from photon.evaluation.parsing import final_answer, normalize_text, parse_yes_no
from photon.evaluation.scoring import Column, Row, Scoring, Table, group_rows, mean_estimate, meta_text

COLUMNS = [
    Column("closed_accuracy", "closed acc."),
    Column("open_exact", "open exact"),
    Column("open_recall", "open recall"),
]
BREAKDOWNS = (("modality", "By modality"), ("location", "By body location"), ("content_type", "By content type"))


def normalize(text: str) -> str:
    """normalize_text, then a leading article dropped ("The left lung." == "left lung")."""
    return re.sub(r"^(?:the|a|an) ", "", normalize_text(text))


def reference_text(case) -> str:
    answer = case.meta.get("answer")
    return str(answer if answer is not None else case.reference or "")


def is_english(case) -> bool:
    lang = case.meta.get("lang", case.meta.get("q_lang", "en"))
    return str(lang).strip().lower() in ("en", "english")


class SlakeScorer:
    name = "slake"
    description = "SLAKE English: closed accuracy, open exact match and recall"

    def check(self, case):
        if str(case.meta.get("answer_type", "")).strip().upper() not in ("OPEN", "CLOSED"):
            return f"meta 'answer_type' should be OPEN or CLOSED, got {case.meta.get('answer_type')!r}"
        if not normalize(reference_text(case)):
            return "no reference answer (meta 'answer' or the prediction's 'reference')"
        return None

    def score(self, cases, options):
        n = len(cases)
        closed = np.zeros(n, bool)
        english = np.array([is_english(c) for c in cases], bool)
        exact, recall = np.zeros(n), np.zeros(n)
        per_case, failures = [], []
        for i, case in enumerate(cases):
            closed[i] = str(case.meta["answer_type"]).strip().upper() == "CLOSED"
            gold = normalize(reference_text(case))
            if closed[i] and gold in ("yes", "no"):
                parsed = parse_yes_no(case.answer)
                said = parsed.value
            else:
                parsed = final_answer(case.answer)
                said = normalize(parsed.value) if parsed.ok else None
            exact[i] = 100.0 * (said == gold)
            if not closed[i] and said is not None:
                recall[i] = token_recall(said, gold)
            failures.append(parsed.failure if english[i] else None)  # not scored at all
            per_case.append({"gold": gold, "parsed": said, "exact": bool(exact[i]), "recall": recall[i],
                             "closed": bool(closed[i]), "english": bool(english[i])})
        kept = np.flatnonzero(english)
        tables = [Table("overall", "Overall (English)", COLUMNS, [Row("all", "all", kept)])]
        for key, title in BREAKDOWNS:
            rows = group_rows([meta_text(cases[i], key, "unknown") for i in kept])
            for row in rows:
                row.members = kept[row.members]
            tables.append(Table(key, title, COLUMNS, rows))
        estimate = mean_estimate(
            tables,
            {"closed_accuracy": (exact, closed), "open_exact": (exact, ~closed), "open_recall": (recall, ~closed)},
        )
        notes = [f"left out {n - len(kept)} non-English questions"] if len(kept) < n else []
        return Scoring(tables, estimate, per_case, failures, notes)


@hookimpl
def register_metrics(register):
    register("slake", SlakeScorer())
