"""`photon infer`: prediction lines `photon eval` scores, ragged batches, resume by id, bad records."""

import copy
import json

import nibabel as nib
import numpy as np
import photon
import pytest
import torch

from photon.adapters.qwen2_5_vl import load_tiny
from photon.cli import main
from photon.core.errors import PhotonError
from photon.adapters.qwen_inputs import model_inputs
from photon.inference import PREDICTION_FIELDS, generate_batch, infer
from photon.wrapping import media_options

from tests.conftest import video_sample

SMALL_CT = ["--media", "ct.preprocess=false", "--media", "ct.size=[28,56,56]", "--max-new-tokens", "3"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three 3D-RAD-style records on noise volumes with a bright block, and one with a missing volume."""
    folder = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(1)
    rows = []
    questions = ["Is a lung nodule present?\nOptions:\nA. Yes\nB. No", "Where is the bright block?",
                 "Describe what the left upper region of this scan shows, in detail."]
    for i, question in enumerate(questions):
        volume = rng.normal(-500, 100, (24, 40, 40)).astype(np.float32)
        volume[4 + 4 * i: 12 + 4 * i, 5:20, 5:20] += 1200
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / f"ct{i}.nii.gz"))
        close = i == 0
        meta = {"task": "existence_detection" if close else "image_observation", "subtask": f"sub{i}",
                "task_dir": "Task", "question_type": "close" if close else "open", "volume": f"ct{i}", "answer": "yes"}
        if close:
            meta.update(choices={"A": "Yes", "B": "No"}, answer_letter="A")
        rows.append({"id": f"case{i}", "benchmark": "3d-rad", "meta": meta, "videos": [f"ct{i}.nii.gz"],
                     "messages": [{"role": "user", "content": "<video>" + question},
                                  {"role": "assistant", "content": "A" if close else "a bright block"}]})
    rows.append({"id": "gone", "benchmark": "3d-rad", "videos": ["nowhere.nii.gz"],
                 "messages": [{"role": "user", "content": "<video>Anything?"}, {"role": "assistant", "content": "no"}]})
    path = folder / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_carry_the_records_fields_and_photon_eval_scores_them(records, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    code = main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(preds), "--batch-size", "2",
                 "--no-progress", *SMALL_CT])
    err = capsys.readouterr().err
    assert code == 1  # one bad record was skipped
    assert "record gone: missing media path" in err and "answers are meaningless" in err
    lines = read_lines(preds)
    assert [line["id"] for line in lines] == ["case0", "case1", "case2"]
    for line in lines:
        assert tuple(line) == PREDICTION_FIELDS
        assert line["benchmark"] == "3d-rad" and line["backbone"] == "qwen2.5-vl-tiny" and line["rule"] == "zero_shot:mean"
        assert line["n_visual"] == 14 * 2 * 2 and 1 <= line["n_kept"] <= line["n_visual"]
        assert line["keep_ratio"] == pytest.approx(line["n_kept"] / line["n_visual"])
    assert lines[0]["reference"] == "A" and lines[0]["meta"]["answer_letter"] == "A"
    code = main(["eval", "--pred", str(preds), "--no-bertscore", "--resamples", "5", "--out", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["benchmark"] == "3d-rad"
    assert len(read_lines(tmp_path / "eval" / "cases.jsonl")) == 3


@pytest.fixture(scope="module")
def loaded():
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot")
    return loaded


def options(loaded):
    return media_options(loaded, {"ct": {"preprocess": False, "size": [28, 56, 56]}})


def test_a_ragged_batch_answers_as_one_record_at_a_time(records, loaded, tmp_path):
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    infer(loaded, records, batched, batch_size=3, max_new_tokens=3, media_options=options(loaded), progress=False, report=lambda _: None)
    infer(loaded, records, single, batch_size=1, max_new_tokens=3, media_options=options(loaded), progress=False, report=lambda _: None)
    a, b = read_lines(batched), read_lines(single)
    assert len({line["n_kept"] for line in a}) > 1  # the batch really was ragged
    for x, y in zip(a, b, strict=True):
        assert (x["answer"], x["n_kept"]) == (y["answer"], y["n_kept"])
        assert x["theta"] == pytest.approx(y["theta"], abs=1e-5)  # padding changes float rounding only


def test_resume_skips_done_ids_and_drops_a_line_cut_short(records, loaded, tmp_path):
    preds = tmp_path / "preds.jsonl"
    run = dict(batch_size=2, max_new_tokens=3, media_options=options(loaded), progress=False, report=lambda _: None)
    first = infer(loaded, records, preds, **run)
    assert (first.written, first.resumed, first.skipped) == (3, 0, 1)
    lines = preds.read_text().splitlines()
    preds.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed while writing case1
    messages = []
    again = infer(loaded, records, preds, **{**run, "report": messages.append})
    assert (again.written, again.resumed) == (2, 1)
    assert any("cut short" in m for m in messages) and any("resuming, 1 records" in m for m in messages)
    resumed = read_lines(preds)
    assert [line["id"] for line in resumed] == ["case0", "case1", "case2"]
    assert resumed[0] == json.loads(lines[0])
    nothing = infer(loaded, records, preds, **run)
    assert (nothing.written, nothing.resumed) == (0, 3)
    with pytest.raises(PhotonError, match="holds predictions from another run .*--overwrite"):
        infer(loaded, records, preds, prune=False, **run)


def test_unpruned_predictions_keep_every_visual_token(records, tmp_path, capsys):
    preds = tmp_path / "base.jsonl"
    code = main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(preds), "--unpruned",
                 "--no-progress", *SMALL_CT])
    assert code == 1
    for line in read_lines(preds):
        assert line["mode"] == "unpruned" and line["rule"] == "none"
        assert line["n_kept"] == line["n_visual"] == 56 and line["theta"] is None


def test_a_baseline_pruner_predicts_through_the_same_runtime(records, tmp_path, capsys):
    preds = tmp_path / "random.jsonl"
    code = main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(preds), "--pruner", "random",
                 "--keep-ratio", "0.25", "--no-progress", *SMALL_CT])
    assert code == 1  # the records file has one bad record on purpose
    for line in read_lines(preds):
        assert line["n_visual"] == 56 and line["n_kept"] == 14
    assert main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(preds), "--pruner", "nope"]) == 2
    assert "unknown pruner 'nope'" in capsys.readouterr().err


def test_infer_errors_exit_2(records, tmp_path, capsys):
    assert main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "no such records file" in capsys.readouterr().err
    assert main(["infer", "--backbone", "nope", "--data", str(records), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "unknown backbone 'nope': not a registered name (photon-s1" in capsys.readouterr().err


def test_decoding_is_plain_greedy_whatever_the_models_generation_defaults(loaded):
    batch = loaded.encoder.collate([loaded.encoder.encode(video_sample(0, 4, 56, 84, "Is there a lesion?"), train=False)])
    plain = generate_batch(loaded, batch, 6)[0].answer
    saved = copy.deepcopy(loaded.model.generation_config)
    try:  # what Qwen's released generation_config.json sets, exaggerated so a leak would show
        config = loaded.model.generation_config
        config.do_sample, config.temperature, config.top_k, config.top_p = True, 5.0, 0, 1.0
        config.repetition_penalty, config.no_repeat_ngram_size = 5.0, 1
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
        # These settings do change what generate() gives when left to apply...
        leaked = []
        for seed in range(3):
            torch.manual_seed(seed)
            with torch.no_grad():
                tokens = loaded.model.generate(**inputs, max_new_tokens=6)
            leaked.append(loaded.encoder.tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        assert any(answer != plain for answer in leaked)
        # ...and none of them reaches Photon's decoding.
        for seed in range(3):
            torch.manual_seed(seed)
            assert generate_batch(loaded, batch, 6)[0].answer == plain
    finally:
        loaded.model.generation_config = saved


def test_infer_from_a_checkpoint_folder_predicts_like_the_model_it_wraps(records, tmp_path, capsys):
    from photon.core import checkpoint

    # Weights of its own (not the seeded tiny backbone's), so a loader that ignored the folder's
    # weights and rebuilt the backbone by name would answer differently.
    own = load_tiny(seed=21, initializer_range=0.3)
    photon.attach(own.model, mode="zero_shot")
    folder = checkpoint.save_folder(own.model, own.encoder.tokenizer, tmp_path / "wrapped", backbone=own.backbone)
    from_folder, direct, by_name = tmp_path / "folder.jsonl", tmp_path / "direct.jsonl", tmp_path / "by-name.jsonl"
    assert main(["infer", "--checkpoint", str(folder), "--data", str(records), "--out", str(from_folder), "--no-progress",
                 *SMALL_CT]) == 1
    infer(own, records, direct, max_new_tokens=3, media_options=options(own), progress=False, report=lambda _: None)
    for x, y in zip(read_lines(from_folder), read_lines(direct), strict=True):
        assert (x["id"], x["answer"], x["n_kept"], x["backbone"], x["rule"]) == (y["id"], y["answer"], y["n_kept"], y["backbone"], y["rule"])
        assert x["theta"] == pytest.approx(y["theta"], abs=1e-6)
    assert main(["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(by_name), "--no-progress",
                 *SMALL_CT]) == 1
    seeded = [(line["answer"], line["theta"]) for line in read_lines(by_name)]
    assert seeded != [(line["answer"], line["theta"]) for line in read_lines(from_folder)]  # the folder's weights mattered
