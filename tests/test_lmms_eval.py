"""Photon under lmms-eval: the task files for 3D-RAD, DeepTumorVQA and MedFrameQA over records
from `photon convert`, scored by Photon's scorers, and one offline lmms-eval run end to end on
the tiny backbone (the `lmms-eval` extra; CI installs it)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


def _rad3d_records(folder: Path, n: int = 4) -> Path:
    """3D-RAD records as `photon convert 3d-rad` writes them (volumes beside the records)."""
    rows = []
    for i in range(n):
        volume = np.random.default_rng(i).normal(-500, 100, (24, 40, 40)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"ct{i}.nii.gz"))
        close = i % 2 == 0
        meta = {"task": "existence_detection" if close else "image_observation", "task_dir": "Task4_Existence_Detection",
                "subtask": f"sub{i % 2}", "question_type": "close" if close else "open", "volume": f"test_{i}_a_1.nii.gz",
                "answer": "Yes" if close else "a nodule in the left lung"}
        if close:
            meta.update(choices={"A": "Yes", "B": "No"}, answer_letter="A")
        question = "Is a nodule present?\nOptions:\nA. Yes\nB. No" if close else "Describe the lungs."
        rows.append({"id": f"3d-rad/test/x/{i:06d}", "benchmark": "3d-rad", "videos": [f"ct{i}.nii.gz"], "meta": meta,
                     "messages": [{"role": "user", "content": "<video>" + question},
                                  {"role": "assistant", "content": "A" if close else meta["answer"]}]})
    path = folder / "3drad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_files_hold_flat_records_with_absolute_media(tmp_path):
    from photon.integrations.lmms_tasks.__main__ import main

    records = _rad3d_records(tmp_path)
    out = tmp_path / "tasks"
    assert main([str(out), "--records", f"3d-rad={records}"]) == 0
    yaml_text = (out / "photon_3drad.yaml").read_text()
    flat = out / "photon_3drad.jsonl"
    assert f"test: {flat.resolve()}" in yaml_text and "RECORDS_FILE" not in yaml_text
    rows = [json.loads(line) for line in flat.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"3d-rad/test/x/{i:06d}" for i in range(4)]
    assert rows[0]["media"] == [str((tmp_path / "ct0.nii.gz").resolve())] and rows[0]["answer"] == "A"
    assert json.loads(rows[0]["meta_json"])["choices"] == {"A": "Yes", "B": "No"}
    assert (out / "utils.py").is_file()
    assert main([str(out), "--records", "slake=x.jsonl"]) == 2  # lmms-eval has its own SLAKE task


def test_the_task_metrics_are_photons_published_protocol_scores(tmp_path):
    """The aggregations give what `photon eval` gives for the same predictions."""
    sys.path.insert(0, str(ROOT / "photon" / "integrations" / "lmms_tasks"))
    try:
        import utils
    finally:
        sys.path.pop(0)
    from photon.evaluation.evaluate import evaluate_file
    from photon.evaluation.scoring import EvalOptions

    for name, checks in (
        ("3d-rad", {utils.rad3d_close_accuracy: ("task", "close", "accuracy"), utils.rad3d_open_bleu1: ("task", "open", "bleu1"),
                    utils.rad3d_open_rouge1: ("task", "open", "rouge1")}),
        ("deeptumorvqa", {utils.deeptumorvqa_score: ("format", "all", "score"), utils.deeptumorvqa_mc_accuracy: ("format", "mc", "accuracy")}),
        ("medframeqa", {utils.medframeqa_accuracy: ("overall", "all", "accuracy")}),
    ):
        predictions = [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]
        items = []
        for p in predictions:  # through the task's own hooks, as lmms-eval calls them
            doc = {"id": p["id"], "benchmark": name, "answer": p["reference"], "meta_json": json.dumps(p["meta"])}
            items.append(utils.process_results(doc, [p["answer"]])[utils.METRICS[name][0]])
        report, _ = evaluate_file(FIXTURES / f"{name}.jsonl", None, None, options=EvalOptions(resamples=1, bertscore_model=None))
        for aggregate, (table, row, column) in checks.items():
            expected = next(r["metrics"][column]["value"] for t in report["tables"] if t["name"] == table
                            for r in t["rows"] if r["key"] == row)
            assert aggregate(items) == pytest.approx(expected), (name, column)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None, reason="needs lmms-eval (the lmms-eval extra)")
def test_lmms_eval_runs_photon_offline_on_a_local_task(tmp_path):
    from photon.integrations.lmms_tasks.__main__ import main

    records = _rad3d_records(tmp_path)
    tasks = tmp_path / "tasks"
    assert main([str(tasks), "--records", f"3d-rad={records}"]) == 0
    results, kept = tmp_path / "results", tmp_path / "kept.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    model_args = (f"backbone=qwen2.5-vl-tiny,keep_ratio=0.5,max_new_tokens=4,kept_log={kept},"
                  "media=ct.size:[28|56|56];ct.preprocess:false")
    done = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "photon", "--model_args", model_args,
                           "--batch_size", "2", "--include_path", str(tasks), "--tasks", "photon_3drad", "--limit", "4",
                           "--output_path", str(results)], capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    # lmms-eval exits 0 even when a run fails: the results file is the proof.
    found = list(results.rglob("*_results.json"))
    assert found, (done.stdout[-3000:], done.stderr[-3000:])
    scores = json.loads(found[0].read_text())["results"]["photon_3drad"]
    assert {"close_accuracy,none", "open_bleu1,none", "open_rouge1,none"} <= set(scores)
    logged = [json.loads(line) for line in kept.read_text().splitlines()]
    assert sorted(r["doc_id"] for r in logged) == [0, 1, 2, 3]
    assert all(r["n_visual"] == 14 * 2 * 2 and r["n_kept"] == r["n_visual"] // 2 for r in logged)  # keep_ratio 0.5, per sample
