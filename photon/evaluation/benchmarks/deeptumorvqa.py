"""DeepTumorVQA: multiple-choice accuracy; free text scored by answer kind (numeric: both
MRA variants; binary: accuracy, sensitivity, specificity; categorical: exact and partial
match). Subtype means, then question-count-weighted type and overall means (the release's
aggregation, which equals the mean of per-question scores over the type)."""

from __future__ import annotations

import numpy as np

from photon.core.hookspecs import hookimpl
from photon.evaluation.choice import score_choices
from photon.evaluation.metrics import mra_continuous, mra_thresholded
from photon.evaluation.parsing import final_answer, normalize_text, parse_number, parse_yes_no
from photon.evaluation.scoring import Column, Scoring, Table, all_row, group_rows, mean_estimate, meta_text

TYPES = ("recognition", "measurement", "visual reasoning", "medical reasoning")
KINDS = ("mc", "numeric", "binary", "categorical")
COLUMNS = [
    Column("score", "score"),
    Column("accuracy", "accuracy"),
    Column("mra_vsi", "MRA (VSI)"),
    Column("mra_continuous", "MRA (cont.)"),
    Column("sensitivity", "sensitivity"),
    Column("specificity", "specificity"),
    Column("partial", "partial match"),
]


def answer_kind(case) -> str:
    """mc for multiple-choice records, else the free-text kind (numeric/binary/categorical)."""
    if meta_text(case, "format").lower() == "mc":
        return "mc"
    return meta_text(case, "answer_kind").lower()


def reference_text(case) -> str:
    answer = case.meta.get("answer")
    return str(answer if answer is not None else case.reference or "")


def as_json_number(value):
    """A parsed Fraction for cases.jsonl; text when a float cannot hold it ("1e999")."""
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return str(value)


def subtype(case) -> str:
    return " ".join(meta_text(case, "question_subtype", "unknown").replace("_", " ").lower().split())


class DeepTumorVQAScorer:
    name = "deeptumorvqa"
    description = "DeepTumorVQA: MC accuracy; free-text MRA, sensitivity/specificity, exact match; by type and subtype"

    def check(self, case):
        kind = answer_kind(case)
        if kind not in KINDS:
            return f"meta 'answer_kind' should be one of {', '.join(KINDS)} (or 'format' mc), got {kind!r}"
        if kind == "mc":
            option = meta_text(case, "correct_option").upper()
            return None if len(option) == 1 and option.isalpha() else "meta lacks 'correct_option' (A-D)"
        if kind == "numeric" and not parse_number(reference_text(case)).ok:
            return f"numeric reference {reference_text(case)!r} holds no number"
        if kind == "binary" and not parse_yes_no(reference_text(case)).ok:
            return f"binary reference {reference_text(case)!r} is not yes/no"
        if kind == "categorical" and not normalize_text(reference_text(case)):
            return "no reference answer (meta 'answer' or the prediction's 'reference')"
        return None

    def score(self, cases, options):
        n = len(cases)
        kinds = np.array([answer_kind(c) for c in cases])
        values = {key: np.zeros(n) for key in ("correct", "mra_vsi", "mra_continuous", "partial")}
        positive = np.zeros(n, bool)
        per_case: list[dict] = [{} for _ in cases]
        failures: list[str | None] = [None] * n

        mc = np.flatnonzero(kinds == "mc")
        correct, mc_cases, mc_failures = score_choices(
            [cases[i] for i in mc], [meta_text(cases[i], "correct_option").upper() for i in mc]
        )
        for j, i in enumerate(mc):
            values["correct"][i] = correct[j]
            per_case[i], failures[i] = mc_cases[j], mc_failures[j]

        for i in np.flatnonzero(kinds != "mc"):
            case, gold = cases[i], reference_text(cases[i])
            if kinds[i] == "numeric":
                truth, parsed = parse_number(gold).value, parse_number(case.answer)
                if parsed.ok:
                    values["mra_vsi"][i] = mra_thresholded(parsed.value, truth)
                    values["mra_continuous"][i] = mra_continuous(parsed.value, truth)
                record = {"gold": as_json_number(truth), "parsed": as_json_number(parsed.value)}
            elif kinds[i] == "binary":
                truth, parsed = parse_yes_no(gold).value, parse_yes_no(case.answer)
                values["correct"][i] = parsed.value == truth
                positive[i] = truth == "yes"
                record = {"gold": truth, "parsed": parsed.value}
            else:
                truth, parsed = normalize_text(gold), final_answer(case.answer)
                said = normalize_text(parsed.value) if parsed.ok else ""
                values["correct"][i] = said == truth
                values["partial"][i] = bool(said) and (said in truth or truth in said)
                record = {"gold": truth, "parsed": said or None}
            failures[i] = parsed.failure
            per_case[i] = {**record, "rule": parsed.rule}

        mra = values["mra_vsi"] if options.mra == "vsi" else values["mra_continuous"]
        numeric = kinds == "numeric"
        values["score"] = np.where(numeric, mra, values["correct"])
        for i, record in enumerate(per_case):
            record.update(kind=kinds[i], score=float(values["score"][i]))

        binary = kinds == "binary"
        tables = self._tables(cases, kinds)
        estimate = mean_estimate(
            tables,
            {
                "score": (100 * values["score"], np.ones(n, bool)),
                "accuracy": (100 * values["correct"], ~numeric),
                "mra_vsi": (100 * values["mra_vsi"], numeric),
                "mra_continuous": (100 * values["mra_continuous"], numeric),
                "sensitivity": (100 * values["correct"], binary & positive),
                "specificity": (100 * values["correct"], binary & ~positive),
                "partial": (100 * values["partial"], kinds == "categorical"),
            },
        )
        notes = [f"score column: accuracy, and MRA ({options.mra}) for numeric answers"]
        return Scoring(tables, estimate, per_case, failures, notes)

    @staticmethod
    def _tables(cases, kinds):
        formats = ["mc" if k == "mc" else "free" for k in kinds]
        mixed = len(set(formats)) > 1  # both formats: keep their rows apart

        def keyed(values):
            return [f"{f}/{v}" if mixed else v for f, v in zip(formats, values)]

        def label(key):
            return "{1} ({0})".format(*key.split("/", 1)) if mixed else key

        types = keyed([meta_text(c, "question_type", "unknown").lower() for c in cases])
        type_order = [f"{f}/{t}" for f in ("mc", "free") for t in TYPES] if mixed else TYPES
        subtypes = keyed([subtype(c) for c in cases])
        return [
            Table("format", "By format", COLUMNS, group_rows(formats, order=("mc", "free")) + [all_row(len(cases))]),
            Table("type", "By question type", COLUMNS, group_rows(types, order=type_order, label=label)),
            Table("subtype", "By question subtype", COLUMNS, group_rows(subtypes, label=label)),
            Table("kind", "By answer kind", COLUMNS, group_rows(list(kinds), order=KINDS)),
        ]


@hookimpl
def register_metrics(register):
    register("deeptumorvqa", DeepTumorVQAScorer())
