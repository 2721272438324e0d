"""`photon convert`: small fixtures in each benchmark's published format -> records -> PhotonDataset."""

import csv
import io
import json
import os

import nibabel as nib
import numpy as np
import pytest

from photon.cli import main
from photon.modalities.convert import answer_kind, parse_choices
from photon.modalities.dataset import PhotonDataset
from tests.make_media import write_image, write_mp4

RAD_HEADER = ["Task", "Subtask", "VolumeName", "Question", "Answer", "QuestionType", "AnswerChoice",
              "Choice A", "Choice B", "Choice C", "Choice D"]
LESION_CHOICES = ["Refractory Lesion (Persistent or recurrent, now present)",
                  "Resolved Lesion (Previously present or recurrent, now absent)",
                  "New Lesion (Absent previously, now present)", "No Abnormality (Always absent)"]


def _tiny_nifti(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), -1000, dtype=np.int16), np.eye(4)), path)
    return path


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _media_of(out, record, key):
    """A record's media paths as the reader resolves them (relative to the records file's folder)."""
    return [(out.parent / p).resolve() for p in record[key]]


def _check_round_trip(out, n):
    """From another working folder than the one that converted: the records load as a dataset,
    `photon infer` answers every one, and `photon eval` scores answers equal to the references
    as perfect: the meta fields are the ones its scorers read (docs/records.md)."""
    elsewhere = out.parent.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(elsewhere)
    try:
        relative = os.path.relpath(out, elsewhere)
        dataset = PhotonDataset(relative)
        assert len(dataset) == n and not dataset.problems
        assert all(item is not None for item in dataset)  # every medium loads
        predicted = elsewhere / f"{out.stem}-predictions.jsonl"
        assert main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", relative, "--out", predicted.name,
                     "--max-new-tokens", "1", "--media", "ct.size=[28,56,56]"]) == 0
        assert len(predicted.read_text().splitlines()) == n
    finally:
        os.chdir(here)
    predictions = out.with_name(out.stem + "_predictions.jsonl")
    predictions.write_text("".join(json.dumps({"id": r["id"], "benchmark": r["benchmark"], "answer": r["messages"][-1]["content"]}) + "\n"
                                   for r in _records(out)))
    report_dir = out.with_name(out.stem + "_eval")
    assert main(["eval", "--pred", str(predictions), "--ref", str(out), "--out", str(report_dir), "--no-bertscore"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n_cases"] == n and report["bad_records"]["count"] == 0 and report["parse_failures"]["count"] == 0
    values = {(table["name"], row["key"], key): m["value"] for table in report["tables"] for row in table["rows"]
              for key, m in row["metrics"].items() if row["n"]}  # rows of categories with no case score nothing
    # Every row scores perfect answers 100 on each metric that applies to it (accuracy for closed
    # questions, BLEU/ROUGE for open ones); BERTScore is off here (--no-bertscore).
    rows = {(table, row) for table, row, _ in values}
    for row in rows:
        scored = {k[2]: v for k, v in values.items() if k[:2] == row and v is not None}
        assert scored and all(v == pytest.approx(100.0) for v in scored.values()), (row, scored)
    assert all(v is None for k, v in values.items() if "bertscore" in k[2])
    return dataset


def test_3d_rad_keys_tasks_on_subtask_files_and_maps_test_to_valid_volumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths given relative to the working folder, as a user types them
    root = tmp_path / "3DRAD" / "test"
    _csv(root / "Task1_Image_Observation" / "Anatomical_observation.csv", RAD_HEADER,
         [[1, 1, "test_1_a_1.nii.gz", "Where is the nodule located?", "Right lower lobe.", "Open", "-", "-", "-", "-", "-"],
          [1, 1, "test_9_a_1.nii.gz", "Where is it?", "Nowhere.", "Open", "-", "-", "-", "-", "-"]])
    _csv(root / "Task4_Existence_Detection" / "Lung nodule.csv", RAD_HEADER,
         [[4, 2, "test_1_a_1.nii.gz", "Is a lung nodule present?", "No", "Close", "B", "Yes", "No", "-", "-"]])
    for task in ("Task5_Static_Temporal_Diagnosis", "Task6_Longitudinal_Temporal_Diagnosis"):
        _csv(root / task / "b.csv", RAD_HEADER,
             [[6, 1, "test_1_a_1.nii.gz", "Prior history: [1]. What is it now?", LESION_CHOICES[1], "Close", "B", *LESION_CHOICES]])
    volume = _tiny_nifti(tmp_path / "ct-rate" / "valid" / "valid_1" / "valid_1_a" / "valid_1_a_1.nii.gz")
    out = tmp_path / "records" / "3d-rad.jsonl"

    assert main(["convert", "3d-rad", "3DRAD", "records/3d-rad.jsonl", "--volumes", "ct-rate"]) == 1
    assert "test_9_a_1.nii.gz not found under --volumes" in capsys.readouterr().out
    records = {r["id"]: r for r in _records(out)}
    assert sorted(records) == [
        "3d-rad/test/existence_detection/lung_nodule/000000",
        "3d-rad/test/image_observation/anatomical_observation/000000",
        "3d-rad/test/longitudinal_temporal_diagnosis/b/000000",
        "3d-rad/test/static_temporal_diagnosis/b/000000",
    ]
    opened = records["3d-rad/test/image_observation/anatomical_observation/000000"]
    assert opened["messages"] == [{"role": "user", "content": "<video>Where is the nodule located?"},
                                  {"role": "assistant", "content": "Right lower lobe."}]
    assert _media_of(out, opened, "videos") == [volume.resolve()] and opened["benchmark"] == "3d-rad"
    assert opened["videos"] == [str(volume.resolve())]  # outside the records folder: absolute
    assert opened["meta"] == {"task": "image_observation", "task_dir": "Task1_Image_Observation", "subtask": "Anatomical_observation",
                              "question_type": "open", "volume": "test_1_a_1.nii.gz", "answer": "Right lower lobe."}
    closed = records["3d-rad/test/existence_detection/lung_nodule/000000"]
    assert closed["messages"][0]["content"] == ("<video>Is a lung nodule present?\nOptions:\nA. Yes\nB. No\n"
                                                "Answer with the option's letter from the given choices directly.")
    assert closed["messages"][1]["content"] == "B"
    assert closed["meta"]["choices"] == {"A": "Yes", "B": "No"} and closed["meta"]["answer_letter"] == "B"
    temporal = records["3d-rad/test/longitudinal_temporal_diagnosis/b/000000"]
    assert list(temporal["meta"]["choices"].values()) == LESION_CHOICES and temporal["meta"]["answer"] == LESION_CHOICES[1]
    _check_round_trip(out, 4)


def _dtv_rows():
    return [
        {"qid": "bench_00017", "image_id": "BDMAP_00000001", "spacing": "[0.8 0.8 5.0]", "shape": "(512, 512, 116)",
         "question": "How would you classify the splenic enlargement?", "answer": "Normal (no splenomegaly)",
         "mc_question": "How would you classify the splenic enlargement? A: Normal B: Moderate C: Severe D: Mild",
         "correct_option": "A", "organ": "spleen", "lesion": False, "question_type": "medical reasoning",
         "question_subtype": "splenomegaly grading"},
        {"qid": "bench_00018", "image_id": "BDMAP_00000001", "question": "What is the liver volume in ml?", "answer": "1520.5",
         "mc_question": "What is the liver volume in ml? A: 900 B: 1520.5 C: 2100 D: 3000", "correct_option": "B",
         "organ": "liver", "lesion": False, "question_type": "measurement", "question_subtype": "organ volume measurement"},
        {"qid": "bench_00019", "image_id": "BDMAP_00000404", "question": "Is there a lesion?", "answer": "yes",
         "mc_question": "Is there a lesion? A: yes B: no", "correct_option": "A"},
    ]


def test_deeptumorvqa_v2_folder_both_formats(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "test_qa.json").write_text(json.dumps({"questions": _dtv_rows()}))
    volume = _tiny_nifti(bench / "ct" / "BDMAP_00000001" / "ct.nii.gz")
    out = tmp_path / "dtv.jsonl"
    assert main(["convert", "deeptumorvqa", "benchmark", "dtv.jsonl", "--format", "both"]) == 1
    assert "no CT for BDMAP_00000404" in capsys.readouterr().out
    records = {r["id"]: r for r in _records(out)}
    assert sorted(records) == ["deeptumorvqa/v2/bench_00017/free", "deeptumorvqa/v2/bench_00017/mc",
                               "deeptumorvqa/v2/bench_00018/free", "deeptumorvqa/v2/bench_00018/mc"]
    mc = records["deeptumorvqa/v2/bench_00017/mc"]
    assert mc["messages"][1]["content"] == "A" and mc["videos"] == ["benchmark/ct/BDMAP_00000001/ct.nii.gz"]  # under the records folder
    assert _media_of(out, mc, "videos") == [volume.resolve()]
    assert mc["meta"]["choices"] == {"A": "Normal", "B": "Moderate", "C": "Severe", "D": "Mild"}
    assert mc["meta"]["question_subtype"] == "splenomegaly grading" and mc["meta"]["answer_kind"] == "mc"
    free = records["deeptumorvqa/v2/bench_00018/free"]
    assert free["messages"][0]["content"] == "<video>What is the liver volume in ml?\nAnswer with a single number."
    assert free["messages"][1]["content"] == "1520.5" and free["meta"]["answer_kind"] == "numeric"
    assert free["meta"]["format"] == "free" and free["meta"]["version"] == 2
    _check_round_trip(out, 4)


def test_deeptumorvqa_v1_records_and_snake_case_subtypes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"question_id": 5, "image_id": "BDMAP_00000001", "question": "Is the kidney lesion malignant?", "answer": "no",
             "multiple_choice_question": "Is the kidney lesion malignant? (A) yes (B) no", "correct_option": "B",
             "organ": "kidney", "lesion": True, "question_type": "visual_reasoning", "question_subtype": "kidney_lesion_type",
             "split": "test"}]
    (tmp_path / "v1.json").write_text(json.dumps(rows))
    _tiny_nifti(tmp_path / "vols" / "BDMAP_00000001.nii.gz")
    out = tmp_path / "records" / "v1.jsonl"
    assert main(["convert", "deeptumorvqa", "v1.json", "records/v1.jsonl", "--volumes", "vols"]) == 0
    (only,) = _records(out)
    assert only["id"] == "deeptumorvqa/v1/5/mc" and only["meta"]["version"] == 1
    assert only["meta"]["question_subtype"] == "kidney lesion type" and only["meta"]["question_type"] == "visual reasoning"
    assert only["meta"]["choices"] == {"A": "yes", "B": "no"}
    _check_round_trip(out, 1)


def test_slake_english_test_split_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?", "answer": "Liver",
             "q_lang": "en", "location": "Abdomen", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
             "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11},
            {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "哪个器官不正常？", "answer": "肝脏", "q_lang": "zh",
             "location": "腹部", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa", "content_type": "器官", "qid": 12}]
    (tmp_path / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    (tmp_path / "imgs" / "xmlab1").mkdir(parents=True)
    write_image(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    out = tmp_path / "records" / "slake.jsonl"
    assert main(["convert", "slake", ".", "records/slake.jsonl"]) == 0
    (only,) = _records(out)
    assert only["id"] == "slake/test/11" and _media_of(out, only, "images") == [(tmp_path / "imgs" / "xmlab1" / "source.jpg").resolve()]
    assert only["messages"][0]["content"] == "<image>Which organ is abnormal?"
    assert only["meta"] == {"qid": 11, "img_name": "xmlab1/source.jpg", "answer_type": "OPEN", "answer": "Liver", "modality": "CT",
                            "location": "Abdomen", "content_type": "Organ", "base_type": "vqa", "lang": "en"}
    both = tmp_path / "both.jsonl"
    assert main(["convert", "slake", ".", "both.jsonl", "--lang", "all"]) == 0
    assert len(_records(both)) == 2
    sample = _check_round_trip(out, 1)[0]
    assert sample.media[0].kind == "image"


def test_nextqa_csv_with_video_map(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]
    _csv(tmp_path / "val.csv", header, [
        [4010069381, 25, 64, 48, "why did the boy pick up the present", 2, 6, "CW", "to eat", "to run", "to open it", "sleep", "cry"],
        [4010069381, 25, 64, 48, "what did the boy do after", 7, 7, "TN", "a", "b", "c", "d", "e"],
        [999, 25, 64, 48, "where", 0, 1, "DL", "a", "b", "c", "d", "e"],
    ])
    (tmp_path / "map_vid_vidorID.json").write_text(json.dumps({"4010069381": "1006/4010069381"}))
    (tmp_path / "videos" / "NExTVideo" / "1006").mkdir(parents=True)
    clip = write_mp4(tmp_path / "videos" / "NExTVideo" / "1006" / "4010069381.mp4")
    out = tmp_path / "records" / "nextqa.jsonl"
    assert main(["convert", "nextqa", "val.csv", "records/nextqa.jsonl", "--videos", "videos"]) == 1
    (only,) = _records(out)
    assert only["id"] == "nextqa/val/4010069381_6" and _media_of(out, only, "videos") == [clip.resolve()]
    assert only["messages"][0]["content"].startswith("<video>why did the boy pick up the present?\nOptions:\nA. to eat\n")
    assert only["messages"][1]["content"] == "C"
    assert only["meta"] == {"video": "4010069381", "qid": "6", "type": "CW", "choices": ["to eat", "to run", "to open it", "sleep", "cry"],
                            "answer_index": 2, "answer_letter": "C"}
    sample = _check_round_trip(out, 1)[0]
    assert sample.media[0].kind == "video" and sample.media[0].meta["timestamps"]


def _png_bytes(colour):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_medframeqa_parquet_frames_are_written_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pa = pytest.importorskip("pyarrow", reason="needs pyarrow (the eval extra) to write MedFrameQA parquet")
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = {
        "question_id": ["q1", "q2"], "system": ["Cardiovascular", "Nervous"], "organ": ["Heart", "Brain"],
        "keyword": ["infarct", "glioma"], "modality": ["MRI", "CT"], "video_id": ["v1", "v2"],
        "question": ["Which frame shows the lesion best?", "What is seen?"],
        "options": [["Frame 1", "Frame 2", "Both", "Neither"], ["A mass", "Nothing"]],
        "correct_answer": ["C", "Z"], "reasoning_chain": ["...", "..."], "image_url": ["http://x", "http://y"],
        "image_1": [{"bytes": _png_bytes("red"), "path": "a.png"}, {"bytes": _png_bytes("blue"), "path": "c.png"}],
        "image_2": [{"bytes": _png_bytes("green"), "path": "b.png"}, None],
    }
    for k in range(3, 6):
        rows[f"image_{k}"] = [None, None]
    table = pa.table({k: pa.array(v, type=image) if k.startswith("image_") and k != "image_url" else v for k, v in rows.items()})
    pq.write_table(table, tmp_path / "test-00000.parquet")
    out = tmp_path / "fake" / "mfqa.jsonl"
    assert main(["convert", "medframeqa", "test-00000.parquet", "fake/mfqa.jsonl"]) == 1  # q2's answer Z is no option
    (only,) = _records(out)
    frames = tmp_path / "fake" / "mfqa_frames"
    assert only["images"] == ["mfqa_frames/q1_1.png", "mfqa_frames/q1_2.png"]  # relative to the records file
    assert only["messages"][0]["content"].startswith("<image><image>Which frame shows the lesion best?\nOptions:\nA. Frame 1\n")
    assert only["messages"][1]["content"] == "C"
    assert only["meta"] == {"question_id": "q1", "system": "Cardiovascular", "organ": "Heart", "keyword": "infarct", "modality": "MRI",
                            "n_frames": 2, "choices": ["Frame 1", "Frame 2", "Both", "Neither"], "answer_letter": "C"}
    written = (frames / "q1_1.png").stat().st_mtime_ns
    assert main(["convert", "medframeqa", "test-00000.parquet", "fake/mfqa.jsonl"]) == 1
    assert (frames / "q1_1.png").stat().st_mtime_ns == written  # not rewritten
    sample = _check_round_trip(out, 1)[0]
    np.testing.assert_allclose(sample.media[0].frames[0, :, 10, 10], [1, 0, 0], atol=0.01)


def test_convert_errors_name_the_problem(tmp_path, capsys):
    assert main(["convert", "3d-rad", str(tmp_path), str(tmp_path / "x.jsonl")]) == 2
    assert "3d-rad needs --volumes" in capsys.readouterr().err
    assert main(["convert", "slake", str(tmp_path), str(tmp_path / "x.jsonl"), "--videos", "v"]) == 2
    assert "option(s) videos do not apply" in capsys.readouterr().err
    _csv(tmp_path / "bad.csv", ["video", "question"], [[1, "q"]])
    (tmp_path / "map_vid_vidorID.json").write_text("{}")
    assert main(["convert", "nextqa", str(tmp_path / "bad.csv"), str(tmp_path / "x.jsonl"), "--videos", str(tmp_path)]) == 2
    assert "missing columns answer, qid, type, a0" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_choice_parsing_and_answer_kinds():
    assert parse_choices("Size? A. 1 cm B. 2 cm C. 3 cm D. 4 cm") == {"A": "1 cm", "B": "2 cm", "C": "3 cm", "D": "4 cm"}
    assert parse_choices("Which lobe? B: left") == {}  # options must start at A and run in order
    assert [answer_kind(a) for a in ("Yes", "12.5", "1,200", "left lobe")] == ["binary", "numeric", "numeric", "categorical"]


def test_medframeqa_in_its_other_published_layout_an_image_list_and_an_answer_column(tmp_path, monkeypatch):
    """Some copies hold the frames as one `image` list and the letter in `answer`."""
    pa = pytest.importorskip("pyarrow", reason="needs pyarrow (the eval extra) to write MedFrameQA parquet")
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "question_id": ["q7"], "system": ["Nervous"], "organ": ["Brain"], "keyword": ["glioma"], "modality": ["MRI"],
        "question": ["Which frame shows the mass?"], "options": [["First", "Second", "Neither"]], "answer": ["B"],
        "image": pa.array([[{"bytes": _png_bytes("red"), "path": "a.png"}, {"bytes": _png_bytes("blue"), "path": "b.png"}]],
                          type=pa.list_(image)),
    })
    pq.write_table(table, "other.parquet")
    out = tmp_path / "records" / "m.jsonl"
    assert main(["convert", "medframeqa", "other.parquet", "records/m.jsonl"]) == 0
    (only,) = _records(out)
    assert only["messages"][1]["content"] == "B" and only["meta"]["n_frames"] == 2
    assert only["images"] == ["m_frames/q7_1.png", "m_frames/q7_2.png"]
    _check_round_trip(out, 1)
    pq.write_table(pa.table({"question_id": ["q"], "question": ["?"]}), "not-mfqa.parquet")
    assert main(["convert", "medframeqa", "not-mfqa.parquet", "x.jsonl"]) == 2


def test_deeptumorvqa_v2_jsonl_release(tmp_path, capsys):
    bench = tmp_path / "benchmark"
    bench.mkdir()
    (bench / "test_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _dtv_rows()[:2]))
    _tiny_nifti(bench / "ct" / "BDMAP_00000001" / "ct.nii.gz")
    out = tmp_path / "dtv.jsonl"
    assert main(["convert", "deeptumorvqa", str(bench), str(out)]) == 0
    assert [r["id"] for r in _records(out)] == ["deeptumorvqa/v2/bench_00017/mc", "deeptumorvqa/v2/bench_00018/mc"]
