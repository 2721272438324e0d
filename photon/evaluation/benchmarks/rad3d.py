"""3D-RAD: open questions by BLEU-1, ROUGE-1 F1 and BERTScore F1; close questions by the
accuracy of the chosen option letter. Every metric is computed per subtask file, averaged
over the subtasks of a task, then over the open (or close) tasks. Empty answers count: as
wrong letters, as zero ROUGE/BERTScore, and as zero-length hypotheses in corpus BLEU."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from photon.core.hookspecs import hookimpl
from photon.evaluation.bertscore import BERTScoreUnavailable, bertscore_f1, load_encoder
from photon.evaluation.choice import gold_letter
from photon.evaluation.metrics import bleu1_from_stats, bleu1_stats, rouge1_f1
from photon.evaluation.parsing import EMPTY, UNFINISHED, parse_choice, strip_reasoning
from photon.evaluation.scoring import Column, Row, Scoring, Table, group_rows, letter_options, mean_of, meta_text, require, weighted_mean

# The paper's task order (the shipped directories number tasks 1 and 2 the other way round).
TASKS = (
    "anomaly_detection",
    "image_observation",
    "medical_computation",
    "existence_detection",
    "static_temporal_diagnosis",
    "longitudinal_temporal_diagnosis",
)
COLUMNS = [
    Column("bleu1", "BLEU-1"),
    Column("rouge1", "ROUGE-1"),
    Column("bertscore", "BERTScore"),
    Column("accuracy", "accuracy"),
]
OPEN_METRICS = ("bleu1", "rouge1", "bertscore")


def task_key(case) -> str:
    return "_".join(meta_text(case, "task").lower().replace("-", " ").split())


def question_type(case) -> str:
    return meta_text(case, "question_type").lower()


def reference_text(case) -> str:
    answer = case.meta.get("answer")
    return str(answer if answer is not None else case.reference or "")


def close_gold(case) -> str | None:
    letter = gold_letter(case, "answer_letter")
    if letter is None and case.reference:  # the assistant message says the letter
        parsed = parse_choice(case.reference, letter_options(case.meta.get("choices")))
        letter = parsed.value
    return letter


def _label(task: str) -> str:
    return task.replace("_", " ").capitalize()


class Rad3DScorer:
    name = "3d-rad"
    description = "3D-RAD: open BLEU-1/ROUGE-1/BERTScore, close accuracy; per subtask, then per task"

    def check(self, case):
        problem = require(case, "task", "subtask", "question_type")
        if problem:
            return problem
        kind = question_type(case)
        if kind == "open":
            return None if reference_text(case).strip() else "open question without a reference answer"
        if kind == "close":
            return None if close_gold(case) else "close question without 'answer_letter'"
        return f"meta 'question_type' should be open or close, got {case.meta.get('question_type')!r}"

    def score(self, cases, options):
        n = len(cases)
        is_open = np.array([question_type(c) == "open" for c in cases], bool)
        stats = np.zeros((n, 3))  # BLEU-1 sufficient statistics
        sentence_bleu, rouge, bert, correct = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        per_case: list[dict] = []
        failures: list[str | None] = []
        hypotheses: dict[int, str] = {}
        for i, case in enumerate(tqdm(cases, desc="3d-rad: parsing and text metrics", unit="case", disable=None)):
            if is_open[i]:
                text = strip_reasoning(case.answer)
                failures.append(UNFINISHED if text is None else (EMPTY if not text else None))
                text, gold = text or "", reference_text(case)
                stats[i] = bleu1_stats(text, gold)
                sentence_bleu[i] = bleu1_from_stats(*stats[i])
                rouge[i] = rouge1_f1(text, gold) if text else 0.0
                if text:
                    hypotheses[i] = text
                per_case.append({"hypothesis": text, "bleu1": sentence_bleu[i], "rouge1": rouge[i]})
            else:
                gold = close_gold(case)
                parsed = parse_choice(case.answer, letter_options(case.meta.get("choices")))
                correct[i] = 100.0 * (parsed.value == gold)
                failures.append(parsed.failure)
                per_case.append({"gold": gold, "parsed": parsed.value, "rule": parsed.rule, "correct": bool(correct[i])})

        notes = [f"BLEU-1: {'corpus BLEU per subtask' if options.bleu == 'corpus' else 'mean of per-case BLEU-1 (release script)'}"]
        have_bert = self._bertscore(cases, hypotheses, bert, options, notes)
        for i in hypotheses:
            per_case[i]["bertscore"] = bert[i] if have_bert else None

        subtasks = group_rows(
            [f"{task_key(c)}/{meta_text(c, 'subtask')}" for c in cases],
            label=lambda key: "{} / {}".format(_label(key.split("/", 1)[0]), key.split("/", 1)[1]),
        )
        rank = {t: k for k, t in enumerate(TASKS)}
        subtasks.sort(key=lambda r: (rank.get(r.key.split("/", 1)[0], len(rank)), r.key))
        tasks = group_rows([task_key(c) for c in cases], order=TASKS, label=_label)
        open_tasks = [t.key for t in tasks if is_open[t.members].any()]
        close_tasks = [t.key for t in tasks if (~is_open[t.members]).any()]
        summary = [
            Row("open", "open tasks (mean)", np.flatnonzero(is_open)),
            Row("close", "close tasks (mean)", np.flatnonzero(~is_open)),
        ]
        tables = [
            Table("task", "By task (mean of its subtasks)", COLUMNS, tasks + summary),
            Table("subtask", "By subtask", COLUMNS, subtasks),
        ]
        metrics = [c.key for c in COLUMNS if c.key != "bertscore" or have_bert]
        # Per subtask: which cases feed the open metrics and which the accuracy.
        parts = [(r.key, r.key.split("/", 1)[0], r.members[is_open[r.members]], r.members[~is_open[r.members]]) for r in subtasks]
        use_corpus = options.bleu == "corpus"

        def estimate(w):
            out = {}
            for key, _, opened, closed in parts:
                ww_open, ww_close = w[opened], w[closed]
                values = {"accuracy": weighted_mean(correct[closed], ww_close)}
                if use_corpus:
                    values["bleu1"] = bleu1_from_stats(*(ww_open @ stats[opened])) if ww_open.sum() > 0 else np.nan
                else:
                    values["bleu1"] = weighted_mean(sentence_bleu[opened], ww_open)
                values["rouge1"] = weighted_mean(rouge[opened], ww_open)
                values["bertscore"] = weighted_mean(bert[opened], ww_open)
                for metric in metrics:
                    out[("subtask", key, metric)] = values[metric]
            for task in tasks:
                for metric in metrics:
                    out[("task", task.key, metric)] = mean_of(
                        out[("subtask", key, metric)] for key, owner, _, _ in parts if owner == task.key
                    )
            for metric in metrics:
                chosen = open_tasks if metric in OPEN_METRICS else close_tasks
                out[("task", "open" if metric in OPEN_METRICS else "close", metric)] = mean_of(
                    out[("task", t, metric)] for t in chosen
                )
            return out

        return Scoring(tables, estimate, per_case, failures, notes)

    @staticmethod
    def _bertscore(cases, hypotheses, bert, options, notes) -> bool:
        """Fill BERTScore F1 of the open answers; False (with a note saying why) when skipped."""
        if options.bertscore_model is None:
            notes.append("BERTScore skipped: turned off (--no-bertscore)")
            return False
        if not hypotheses:
            return True
        try:
            encoder = load_encoder(
                options.bertscore_model, options.bertscore_layer, download=options.bertscore_download, device=options.device
            )
        except BERTScoreUnavailable as exc:
            if options.bertscore_required:
                raise
            notes.append(f"BERTScore skipped: {exc}")
            return False
        order = sorted(hypotheses)
        with tqdm(total=len(order), desc="3d-rad: BERTScore", unit="case", disable=None) as progress:
            scores = bertscore_f1(
                [hypotheses[i] for i in order], [reference_text(cases[i]) for i in order], encoder,
                batch_size=options.bertscore_batch_size, progress=progress,
            )
        bert[order] = scores
        notes.append(f"BERTScore: {encoder.name}, layer {encoder.layer}, no idf, no baseline rescaling")
        return True


@hookimpl
def register_metrics(register):
    register("3d-rad", Rad3DScorer())
