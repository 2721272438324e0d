"""Each benchmark scored from a small hand-made predictions file (tests/fixtures/eval), with
the expected numbers worked out by hand in the comments; then --ref, bad records, the
bootstrap's full recomputation, --compare and the command line."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from photon.cli import main
from photon.core.errors import PhotonError
from photon.evaluation import EvalOptions, compare_files, evaluate_file
from photon.evaluation.evaluate import load_run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
FAST = EvalOptions(resamples=50, bertscore_model=None)
needs_text_metrics = pytest.mark.skipif(
    not (importlib.util.find_spec("sacrebleu") and importlib.util.find_spec("rouge_score")),
    reason="3D-RAD needs sacrebleu and rouge-score (the eval extra)",
)


def cells(report, table):
    """{row key: row} of one table."""
    return {row["key"]: row for row in next(t for t in report["tables"] if t["name"] == table)["rows"]}


def value(row, metric):
    return row["metrics"][metric]["value"]


def check_intervals(report):
    """Every interval brackets its point estimate."""
    for table in report["tables"]:
        for row in table["rows"]:
            for entry in row["metrics"].values():
                if entry["value"] is not None and entry["ci"] is not None:
                    low, high = entry["ci"]
                    assert low - 1e-9 <= entry["value"] <= high + 1e-9, (table["name"], row["key"], entry)


def test_nextqa():
    report, per_case = evaluate_file(FIXTURES / "nextqa.jsonl", "nextqa", options=FAST)
    rows = cells(report, "type")
    # CW: lines 1, 2 right ("A", "Answer: B."), 3 wrong ("(D)" for C): 2/3.
    assert value(rows["CW"], "accuracy") == pytest.approx(200 / 3)
    # CH: 4 right (boxed D), 5 empty: 1/2. TN+TP: 6 (A after a think block) and 7 ("answer is b"): 2/2.
    assert value(rows["CH"], "accuracy") == 50 and value(rows["TN"], "accuracy") == 100
    assert rows["TN"]["n"] == 2  # TP counted with TN, as the release does
    # TC: 8 has no letter, 9 says option A's text: 1/2. DC 1/1, DL 1/1, DO 0/1.
    assert value(rows["TC"], "accuracy") == 50
    assert [value(rows[k], "accuracy") for k in ("DC", "DL", "DO")] == [100, 100, 0]
    # Acc@C = 3/5, Acc@T = 3/4, Acc@D = 2/3, overall 8/12: pooled over questions.
    assert value(rows["C"], "accuracy") == pytest.approx(60)
    assert value(rows["T"], "accuracy") == pytest.approx(75)
    assert value(rows["D"], "accuracy") == pytest.approx(200 / 3)
    assert value(rows["all"], "accuracy") == pytest.approx(200 / 3)
    assert report["parse_failures"] == {"count": 2, "by_reason": {"empty answer": 1, "no option letter": 1}}
    assert rows["all"]["unparsed"] == 2 and rows["CH"]["unparsed"] == 1
    # Efficiency: n_kept on lines 1-4 (100, 200, 300, 400), total_s on lines 1-3 (1, 2, 3).
    assert rows["all"]["efficiency"]["n_kept"] == 250 and rows["all"]["efficiency"]["total_s"] == 2
    assert rows["CW"]["efficiency"]["keep_ratio"] == pytest.approx(0.2)
    assert rows["DO"]["efficiency"]["n_kept"] is None  # shown as "-"
    assert [c["parsed"] for c in per_case[:4]] == ["A", "B", "D", "D"]
    check_intervals(report)


def test_medframeqa():
    report, _ = evaluate_file(FIXTURES / "medframeqa.jsonl", options=FAST)  # benchmark from the file
    assert report["benchmark"] == "medframeqa"
    # Right: 1 ("Answer: A"), 2 ("**B**"), 3 ("C. ..."), 6 ("F" of six), 7 (first standalone B),
    # 8 (option C's text). Wrong: 4 ("answer is (E)"), 5 (unfinished <think>). 6/8.
    assert value(cells(report, "overall")["all"], "accuracy") == 75
    modality = cells(report, "modality")
    assert {k: value(r, "accuracy") for k, r in modality.items()} == pytest.approx({"CT": 100, "MRI": 100 / 3, "Ultrasound": 100})
    system = cells(report, "system")
    assert value(system["Nervous"], "accuracy") == 0 and value(system["Digestive"], "accuracy") == 100
    assert value(cells(report, "organ")["brain"], "accuracy") == 0
    frames = cells(report, "frames")  # 2 frames: 1, 3, 7, 8 all right; 4 and 5 frames: one wrong each
    assert {k: (r["label"], value(r, "accuracy")) for k, r in frames.items()} == {
        "2": ("2 frames", 100), "3": ("3 frames", 100), "4": ("4 frames", 0), "5": ("5 frames", 0)
    }
    assert report["parse_failures"]["count"] == 1
    check_intervals(report)


def test_slake():
    report, _ = evaluate_file(FIXTURES / "slake.jsonl", "slake", options=FAST)
    overall = cells(report, "overall")["all"]
    assert overall["n"] == 9  # the Chinese question is left out
    assert any("1 non-English" in note for note in report["notes"])
    # Closed 1-4: yes/yes, no/"No, ...", yes/no (wrong), "The left lung." = "Left Lung": 3/4.
    assert value(overall, "closed_accuracy") == 75
    # Open 5, 6, 7, 8, 10: exact only on 5 ("Heart"): 1/5. Recall: 5 -> 100, 6 -> 2 of the 4
    # words of "left lung right lung" = 50, 7 ("MRI" for CT) 0, 8 (empty) 0, 10 -> 100: 250/5.
    assert value(overall, "open_exact") == 20 and value(overall, "open_recall") == 50
    modality = cells(report, "modality")
    # CT (English): closed 1, 2 right; open 6 (recall 50) and 8 (0).
    assert value(modality["CT"], "closed_accuracy") == 100 and value(modality["CT"], "open_recall") == 25
    assert value(modality["MRI"], "closed_accuracy") == 0 and value(modality["MRI"], "open_recall") == 50
    assert cells(report, "location")["Abdomen"]["metrics"]["closed_accuracy"]["value"] is None
    assert report["parse_failures"] == {"count": 1, "by_reason": {"empty answer": 1}}
    check_intervals(report)


def test_deeptumorvqa():
    report, per_case = evaluate_file(FIXTURES / "deeptumorvqa.jsonl", "deeptumorvqa", options=FAST)
    # Per-case scores. Numeric (continuous MRA): 12 vs 10 -> 0.8; 15 vs 10 -> 0.5; 0 vs 0 -> 1;
    # "none" (0) vs 3 -> 0; 2.1 vs 2.0 -> 0.95; empty -> 0. Binary: 7 right, 8 wrong, 9 right,
    # 10 unparsed (wrong). Categorical: 11 right, 12 and 13 wrong. MC: 14 right, 15 wrong, 16 right.
    fmt = cells(report, "format")
    assert value(fmt["free"], "score") == pytest.approx(100 * 6.25 / 13)
    assert value(fmt["mc"], "score") == pytest.approx(200 / 3)
    assert value(fmt["all"], "score") == pytest.approx(100 * 8.25 / 16)  # count-weighted
    assert value(fmt["all"], "accuracy") == 50  # non-numeric: 7, 9, 11, 14, 16 of 10
    types = cells(report, "type")  # both formats present: rows keyed by format
    measurement = types["free/measurement"]
    assert measurement["label"] == "measurement (free)"
    assert value(measurement, "mra_continuous") == pytest.approx(100 * 3.25 / 6)
    # VSI thresholded: 0.7, 0.1 (error 0.5 on the boundary), 1, 0, 1 (error 0.05 on the boundary), 0.
    assert value(measurement, "mra_vsi") == pytest.approx(100 * 2.8 / 6)
    recognition = types["free/recognition"]
    assert value(recognition, "sensitivity") == 50 and value(recognition, "specificity") == 50
    assert value(types["free/visual reasoning"], "partial") == pytest.approx(200 / 3)
    assert value(types["mc/medical reasoning"], "accuracy") == 50
    subtypes = cells(report, "subtype")
    assert value(subtypes["free/lesion volume measurement"], "mra_vsi") == pytest.approx(40)
    assert value(subtypes["free/largest lesion diameter"], "score") == pytest.approx(47.5)
    assert value(subtypes["free/liver lesion existence"], "specificity") == 100
    assert report["parse_failures"] == {"count": 2, "by_reason": {"empty answer": 1, "no yes/no": 1}}
    assert per_case[3]["parsed"] == 0.0 and per_case[4]["score"] == pytest.approx(0.95)
    # The VSI variant as the score column: numeric scores 0.7, 0.1, 1, 0, 1, 0.
    vsi, _ = evaluate_file(FIXTURES / "deeptumorvqa.jsonl", options=EvalOptions(resamples=10, mra="vsi"))
    assert value(cells(vsi, "format")["free"], "score") == pytest.approx(100 * 5.8 / 13)
    check_intervals(report)


@needs_text_metrics
def test_3d_rad():
    report, per_case = evaluate_file(FIXTURES / "3d-rad.jsonl", "3d-rad", options=FAST)
    sub = cells(report, "subtask")
    # Abnormality_type, corpus BLEU-1: "pleural effusion" vs "pleural effusion on the right"
    # (2 matches, 2 tokens, ref 5) + "a small nodule" vs "nodule" (1, 3, 1): 3 matches, h 5,
    # r 6; BP exp(1 - 6/5); BLEU = 100 * exp(-0.2) * 3/5 = 49.12.
    assert value(sub["anomaly_detection/Abnormality_type"], "bleu1") == pytest.approx(100 * np.exp(-0.2) * 0.6, abs=1e-5)
    # ROUGE-1 F1: 2*1*(2/5)/(1+2/5) = 57.14 and 2*(1/3)*1/(4/3) = 50: mean 53.57.
    assert value(sub["anomaly_detection/Abnormality_type"], "rouge1") == pytest.approx((400 / 7 + 50) / 2, abs=1e-5)
    # Diagnosis: empty (0, 0, r 1) + "lung cancer" after the think block (2, 2, 2): BLEU =
    # 100 * exp(1 - 3/2) * 2/2 = 60.65; ROUGE (0 + 100) / 2.
    assert value(sub["anomaly_detection/Diagnosis"], "bleu1") == pytest.approx(100 * np.exp(-0.5), abs=1e-5)
    assert value(sub["anomaly_detection/Diagnosis"], "rouge1") == 50
    # Size: "5 mm" (2, 2, 2) + "10 mm" vs "12 mm" (1, 2, 2): 3/4, no penalty.
    assert value(sub["medical_computation/Size"], "bleu1") == pytest.approx(75)
    task = cells(report, "task")
    anomaly_bleu = (100 * np.exp(-0.2) * 0.6 + 100 * np.exp(-0.5)) / 2  # mean of its two subtasks
    assert value(task["anomaly_detection"], "bleu1") == pytest.approx(anomaly_bleu, abs=1e-5)
    assert value(task["open"], "bleu1") == pytest.approx((anomaly_bleu + 75) / 2, abs=1e-5)
    anomaly_rouge = ((400 / 7 + 50) / 2 + 50) / 2  # Abnormality_type 53.57, Diagnosis 50
    assert value(task["open"], "rouge1") == pytest.approx((anomaly_rouge + 75) / 2, abs=1e-5)
    # Close: Lung nodule "Yes" (= A) right, "A" for B wrong: 50; Atelectasis 100 -> task 75.
    # Static: b: boxed C right, empty wrong: 50; c: names "refractory" (A): 100 -> 75.
    assert value(sub["existence_detection/Lung nodule"], "accuracy") == 50
    assert value(task["existence_detection"], "accuracy") == 75
    assert value(task["static_temporal_diagnosis"], "accuracy") == 75 and value(task["close"], "accuracy") == 75
    assert [r["key"] for r in next(t for t in report["tables"] if t["name"] == "task")["rows"]] == [
        "anomaly_detection", "medical_computation", "existence_detection", "static_temporal_diagnosis", "open", "close"
    ]
    assert "bertscore" not in task["open"]["metrics"]
    assert any("BERTScore skipped" in note for note in report["notes"])
    assert report["parse_failures"] == {"count": 2, "by_reason": {"empty answer": 2}}
    # Efficiency on the first two lines only: kept 390 and 410, prefill 0.2 and 0.2, total 0.6 and 0.8.
    eff = task["anomaly_detection"]["efficiency"]
    assert (eff["n_kept"], eff["keep_ratio"], eff["total_s"], eff["n_visual"]) == pytest.approx((400, 0.4, 0.7, 1000))
    assert per_case[3]["hypothesis"] == "lung cancer"
    check_intervals(report)


@needs_text_metrics
def test_3d_rad_sentence_bleu_follows_the_release_script():
    report, _ = evaluate_file(FIXTURES / "3d-rad.jsonl", options=EvalOptions(resamples=10, bleu="sentence", bertscore_model=None))
    # Per case: 100 * exp(1 - 5/2) * 1 and 100 * 1/3 (no penalty): mean 27.82.
    expected = (100 * np.exp(-1.5) + 100 / 3) / 2
    assert value(cells(report, "subtask")["anomaly_detection/Abnormality_type"], "bleu1") == pytest.approx(expected, abs=1e-5)


@needs_text_metrics
def test_every_resample_recomputes_the_full_aggregate():
    """estimate(weights) equals scoring a case list that repeats each case weight times,
    corpus BLEU and the subtask -> task -> open/close means included."""
    run = load_run(FIXTURES / "3d-rad.jsonl")
    scoring = run.scorer.score(run.cases, FAST)
    weights = np.array([2, 0, 1, 3, 1, 0, 1, 2, 0, 1, 1, 2], float)
    repeated = [case for case, w in zip(run.cases, weights) for _ in range(int(w))]
    fresh = run.scorer.score(repeated, FAST).estimate(np.ones(len(repeated)))
    resampled = scoring.estimate(weights)
    for cell in ("task", "open", "bleu1"), ("task", "close", "accuracy"), ("subtask", "anomaly_detection/Abnormality_type", "bleu1"):
        assert resampled[cell] == pytest.approx(fresh[cell]), cell
    # Medical computation/Size lost one of its two cases: its BLEU is that case's alone.
    assert resampled[("subtask", "medical_computation/Size", "bleu1")] == pytest.approx(100)


def _as_records_and_bare_predictions(fixture, tmp_path):
    records, preds = tmp_path / "records.jsonl", tmp_path / "preds.jsonl"
    lines = [json.loads(line) for line in fixture.read_text().splitlines()]
    records.write_text("".join(json.dumps({
        "id": p["id"], "benchmark": p["benchmark"], "meta": p["meta"],
        "messages": [{"role": "user", "content": "<video>question"}, {"role": "assistant", "content": p["reference"]}],
        "videos": ["ct.nii.gz"],
    }) + "\n" for p in lines))
    preds.write_text("".join(json.dumps({"id": p["id"], "answer": p["answer"]}) + "\n" for p in lines[1:]))
    return records, preds


def test_ref_fills_meta_and_reference_by_id(tmp_path):
    records, preds = _as_records_and_bare_predictions(FIXTURES / "nextqa.jsonl", tmp_path)
    report, _ = evaluate_file(preds, "nextqa", records, options=FAST)
    # Line 1 (a right CW answer) has no prediction: CW drops to 1/2 and it is reported missing.
    assert value(cells(report, "type")["CW"], "accuracy") == 50
    assert report["missing_predictions"] == {"count": 1, "examples": ["nextqa/1"]}
    with pytest.raises(PhotonError, match="1 records of .* have no prediction"):
        evaluate_file(preds, "nextqa", records, options=FAST, strict=True)


def test_bad_records_are_reported_and_skipped_or_stop_with_strict(tmp_path):
    good = (FIXTURES / "nextqa.jsonl").read_text().splitlines()
    bad = tmp_path / "preds.jsonl"
    bad.write_text("\n".join([
        good[0],
        "{not json",
        json.dumps({"id": "x", "benchmark": "nextqa", "meta": {"type": "CW", "answer_letter": "A"}}),  # no answer
        good[0],  # repeated id
        json.dumps({"id": "y", "benchmark": "slake", "meta": {"type": "CW", "answer_letter": "A"}, "answer": "A"}),
        json.dumps({"id": "z", "benchmark": "nextqa", "meta": {"type": "CW"}, "answer": "A"}),  # no gold letter
    ]) + "\n")
    report, _ = evaluate_file(bad, "nextqa", options=FAST)
    assert report["n_cases"] == 1 and report["bad_records"]["count"] == 5
    messages = report["bad_records"]["examples"]
    assert messages[0].startswith(f"{bad}:2: not valid JSON")
    assert any(f"{bad}:3" in m and "no 'answer'" in m for m in messages)
    assert any(f"{bad}:4" in m and "repeats" in m for m in messages)
    assert any(f"{bad}:5" in m and "benchmark 'slake'" in m for m in messages)
    assert any(f"{bad}:6" in m and "answer_letter" in m for m in messages)
    with pytest.raises(PhotonError, match=rf"{bad.name}:2: not valid JSON.*--strict"):
        evaluate_file(bad, "nextqa", options=FAST, strict=True)


def test_unknown_benchmark_and_unscorable_files_are_clear_errors(tmp_path):
    with pytest.raises(PhotonError, match="no scorer for benchmark 'vqa-rad'; registered: 3d-rad"):
        evaluate_file(FIXTURES / "nextqa.jsonl", "vqa-rad", options=FAST)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "1", "answer": "A", "meta": {}}) + "\n")
    with pytest.raises(PhotonError, match="cannot tell the benchmark"):
        evaluate_file(empty, options=FAST)
    with pytest.raises(PhotonError, match="no prediction could be scored as nextqa.*meta lacks 'type'"):
        evaluate_file(empty, "nextqa", options=FAST)


def test_compare_two_runs_with_paired_intervals(tmp_path):
    lines = [json.loads(line) for line in (FIXTURES / "nextqa.jsonl").read_text().splitlines()]
    lines[2]["answer"], lines[4]["answer"] = "C", "E"  # B fixes a CW and a CH question
    for line in lines:
        line["n_kept"] = 50
    better = tmp_path / "pruned.jsonl"
    better.write_text("".join(json.dumps(line) + "\n" for line in lines[1:]))  # and lacks line 1
    report = compare_files(FIXTURES / "nextqa.jsonl", better, options=FAST)
    assert report["n_shared"] == 11 and report["only_in_a"] == 1 and report["only_in_b"] == 0
    rows = cells(report, "type")
    cw = rows["CW"]["metrics"]["accuracy"]  # shared CW: lines 2, 3: A 1/2, B 2/2
    assert (cw["a"]["value"], cw["b"]["value"], cw["diff"]["value"]) == (50, 100, 50)
    overall = rows["all"]["metrics"]["accuracy"]  # A 7/11, B 9/11
    assert overall["diff"]["value"] == pytest.approx(200 / 11)
    low, high = overall["diff"]["ci"]
    assert 0 <= low <= overall["diff"]["value"] <= high  # B is never worse on a paired resample
    assert rows["all"]["unparsed"] == {"a": 2, "b": 1}
    assert rows["CW"]["efficiency"]["b"]["n_kept"] == 50 and rows["CW"]["efficiency"]["a"]["n_kept"] == 250
    same = compare_files(FIXTURES / "nextqa.jsonl", FIXTURES / "nextqa.jsonl", options=FAST)
    assert cells(same, "type")["all"]["metrics"]["accuracy"]["diff"]["ci"] == [0.0, 0.0]


def test_cli_writes_markdown_json_and_per_case_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", "nextqa", "--pred", str(FIXTURES / "nextqa.jsonl"), "--out", str(out), "--resamples", "20"]) == 0
    printed = capsys.readouterr()
    assert "| Acc@C (causal) | 5 | 60.00 [" in printed.out
    assert "parse failures (scored as wrong): 2" in printed.out and "wrote" in printed.err
    assert (out / "report.md").read_text() == printed.out
    report = json.loads((out / "report.json").read_text())
    assert report["bootstrap"]["resamples"] == 20 and report["benchmark"] == "nextqa"
    per_case = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(per_case) == 12 and per_case[4] == {"id": "nextqa/5", "failure": "empty answer", "gold": "E",
                                                   "parsed": None, "rule": None, "correct": False}
    assert sorted(p.name for p in out.iterdir()) == ["cases.jsonl", "report.json", "report.md"]  # no temp files left


def test_cli_compare_and_bad_input(tmp_path, capsys):
    fixture = str(FIXTURES / "medframeqa.jsonl")
    assert main(["eval", "--compare", fixture, fixture, "--out", str(tmp_path / "cmp"), "--resamples", "10"]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| all | 8 | accuracy | 75.00 [" in text and "| 0.00 [0.00, 0.00] |" in text
    assert main(["eval", "--pred", str(tmp_path / "missing.jsonl"), "--benchmark", "nextqa"]) == 2
    assert "predictions file" in capsys.readouterr().err
    assert main(["eval", "--pred", fixture, "--resamples", "0", "--out", str(tmp_path / "x")]) == 2
