"""lmms-eval hooks for Photon's task files: the records' question, media and reference, and the
scores of each benchmark's published protocol (photon.evaluation), computed once over the whole
set however many metrics a task reports."""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path


def doc_to_visual(doc):
    return list(doc["media"])


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"].replace("<image>", "").replace("<video>", "")


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    """Every metric gets the same item; the aggregations score them together."""
    item = {"id": doc["id"], "benchmark": doc["benchmark"], "meta": json.loads(doc["meta_json"]),
            "reference": doc["answer"], "answer": results[0] if results else ""}
    return {metric: item for metric in METRICS[doc["benchmark"]]}


@lru_cache(maxsize=8)
def _report(items_json: str) -> dict:
    from photon.evaluation.evaluate import evaluate_file
    from photon.evaluation.scoring import EvalOptions

    with tempfile.TemporaryDirectory(prefix="photon-lmms-") as folder:
        path = Path(folder) / "predictions.jsonl"
        path.write_text(items_json)
        report, _ = evaluate_file(path, None, None, options=EvalOptions(resamples=1, bertscore_model=None))
    return report


def _score(items, table: str, row: str, column: str) -> float:
    report = _report("".join(json.dumps(item, sort_keys=True) + "\n" for item in items))
    for t in report["tables"]:
        if t["name"] == table:
            for r in t["rows"]:
                if r["key"] == row and column in r["metrics"]:
                    value = r["metrics"][column]["value"]
                    return float("nan") if value is None else float(value)
    return float("nan")  # no case of that kind in this run


# 3D-RAD: close questions by accuracy, open ones by BLEU-1 and ROUGE-1 (the paper's; BERTScore needs
# a local roberta-large: run photon eval on the predictions for it).
def rad3d_close_accuracy(items):
    return _score(items, "task", "close", "accuracy")


def rad3d_open_bleu1(items):
    return _score(items, "task", "open", "bleu1")


def rad3d_open_rouge1(items):
    return _score(items, "task", "open", "rouge1")


# DeepTumorVQA: the mean over every question (multiple choice: accuracy; free text: by kind).
def deeptumorvqa_score(items):
    return _score(items, "format", "all", "score")


def deeptumorvqa_mc_accuracy(items):
    return _score(items, "format", "mc", "accuracy")


def medframeqa_accuracy(items):
    return _score(items, "overall", "all", "accuracy")


METRICS = {
    "3d-rad": ("close_accuracy", "open_bleu1", "open_rouge1"),
    "deeptumorvqa": ("score", "mc_accuracy"),
    "medframeqa": ("accuracy",),
}
