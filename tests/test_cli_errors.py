"""Bad values are refused before a model loads, in one line with exit 2; predictions files stay
one run's; nothing written is lost (issue: data safety and one-line errors across the CLI)."""

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from photon.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL_CT = ["--media", "ct.preprocess=false", "--media", "ct.size=[28,56,56]", "--max-new-tokens", "2", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-errors")
    volume = np.random.default_rng(0).normal(-500, 100, (24, 40, 40)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / "ct.nii.gz"))
    raw = volume + 1500  # stored values, not HU: the minimum is above 0
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(folder / "raw.nii.gz"))
    rows = [
        {"messages": [{"role": "user", "content": "<video>Is there a nodule?"}, {"role": "assistant", "content": "no"}],
         "videos": ["ct.nii.gz"]},  # no id: one is made from the file name and line
        {"messages": [{"role": "user", "content": "<video>Where is it?"}, {"role": "assistant", "content": "left"}],
         "videos": ["ct.nii.gz"]},
        {"id": "blank", "messages": [{"role": "user", "content": "<video>  "}, {"role": "assistant", "content": "?"}],
         "videos": ["ct.nii.gz"]},
    ]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


BAD = [
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--keep-ratio", "0"], r"selection.keep_ratio=0.0: expected a fraction in \(0, 1\]"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--keep-ratio", "1.5"], r"keep_ratio=1.5: expected a fraction in \(0, 1\]"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--keep-ratio", "nan"], r"keep_ratio=nan: expected a fraction"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--theta", "-0.1"], r"theta=-0.1: expected a threshold .* \[0, 1\]"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--keep-ratio", "0.5", "--theta", "0.3"], r"both choose the kept tokens; give one"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "--layer", "7"], r"layer=7: outside qwen2.5-vl-tiny's 8 decoder layers; choose -1\.\.6"),
    (["attach", "--backbone", "qwen3-vl-tiny", "--layer", "-3"], r"layer=-3: outside the decoder layers; choose -1 or above"),
    (["attach", "--backbone", "qwen2.5-vl-tiny", "cache=everything"], r"selection.cache='everything': expected evict_all or keep_early"),
    (["config", "selection.keep_ratio=-1"], r"selection.keep_ratio=-1.0: expected a fraction in \(0, 1\]"),
    (["config", str(ROOT / "configs/train/phase2.yaml"), "run.save_every=0"], r"run.save_every=0: expected a whole number of at least 1"),
    (["config", str(ROOT / "configs/train/phase2.yaml"), "run.max_steps=-5"], r"run.max_steps=-5: expected a whole number of at least 1"),
    (["config", "missing.yaml"], r"config file missing.yaml does not exist"),
    (["train", "--config", str(ROOT / "configs/train/phase2.yaml"), "run.save_every=0", "data.train=x.jsonl"],
     r"run.save_every=0: expected a whole number"),
    (["train", "--config", str(ROOT / "configs/train/phase2.yaml"), "photon.selection.keep_ratio=2"],
     r"photon.selection.keep_ratio=2.0: expected a fraction"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[2:] if a[0] != "config" else a[1:])[-60:] for a, _ in BAD])
def test_each_bad_value_exits_2_with_one_line_before_loading(capsys, monkeypatch, argv, message):
    import re

    import photon.opening as opening  # every front end reaches the weights through open_source

    def no_loading(*_, **__):
        raise AssertionError("the model was loaded before the value was checked")

    monkeypatch.setattr(opening, "open_source", no_loading)
    code, out, err = run(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_infer_with_a_bad_value_leaves_no_predictions_file(data, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    code, _, err = run(capsys, "infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(data / "records.jsonl"),
                       "--out", str(preds), "--keep-ratio", "2", *SMALL_CT)
    assert code == 2 and not preds.exists()


def test_a_users_own_yaml_is_read_like_a_shipped_one(tmp_path, capsys):
    mine = tmp_path / "my-train.yaml"
    mine.write_text("run:\n  max_steps: 7\nphoton:\n  selection:\n    tau: 0.1\n")
    code, out, _ = run(capsys, "config", str(mine))
    assert code == 0 and "max_steps: 7" in out and "tau: 0.1" in out and "zero_stage: 2" in out  # TrainConfig defaults filled in
    method = tmp_path / "my-photon.yaml"
    method.write_text("selection:\n  keep_ratio: 0.3\n")
    code, out, _ = run(capsys, "config", str(method))
    assert code == 0 and "keep_ratio: 0.3" in out and "soft_start: 4000" in out


def test_a_raw_volume_hint_names_an_option_attach_accepts(data, capsys):
    argv = ["attach", "--backbone", "qwen2.5-vl-tiny", "--input", str(data / "raw.nii.gz"), "--question", "Any nodule?",
            "--media", "ct.size=[28,56,56]", "--max-new-tokens", "1"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "raw.nii.gz: looks like raw stored values" in err
    assert "--media ct.calibration=hu" in err
    code, _, err = run(capsys, *argv, "--media", "ct.calibration=hu")  # the hint works as written
    assert code == 0, err


def test_predictions_stay_one_runs(data, tmp_path, capsys, monkeypatch):
    records = data / "records.jsonl"
    preds = tmp_path / "preds.jsonl"
    base = ["infer", "--backbone", "qwen2.5-vl-tiny", "--out", str(preds), *SMALL_CT]
    code, _, err = run(capsys, *base, "--data", str(records))
    assert code == 1 and "record blank: the question is empty" in err  # reported, not answered keeping everything
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["records.jsonl:1", "records.jsonl:2"]
    assert lines[0]["settings"]["max_new_tokens"] == 2 and lines[0]["settings"]["layer"] == 1
    # The same records spelled another way resume, not predict again.
    monkeypatch.chdir(data)
    code, _, err = run(capsys, *base, "--data", "records.jsonl")
    assert "resuming, 2 records already predicted" in err
    assert len(preds.read_text().splitlines()) == 2
    # Other settings do not append to this run's file.
    for extra, named in ((["--max-new-tokens", "5"], "max_new_tokens 2 -> 5"), (["--layer", "2"], "layer 1 -> 2"),
                         (["min_keep=3"], "min_keep 1 -> 3"), (["--media", "ct.size=[28,84,84]"], "media ")):
        code, _, err = run(capsys, *base, "--data", "records.jsonl", *extra)
        assert code == 2 and "holds predictions from another run" in err and named in err, (extra, err)
    assert len(preds.read_text().splitlines()) == 2


def test_eval_says_what_it_left_out(data, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "a", "benchmark": "slake", "answer": "yes", "reference": "yes",
                                 "meta": {"answer_type": "CLOSED", "lang": "en"}}) + "\n"
                     + json.dumps({"id": "b", "benchmark": "slake", "answer": "no"}) + "\n")
    code, _, err = run(capsys, "eval", "--pred", str(preds), "--no-bertscore", "--resamples", "5")
    assert code == 1 and "left out 1 bad record(s) and 0 reference record(s) without a prediction" in err
    assert (tmp_path / "p_eval" / "report.json").is_file()  # the report is written all the same
    code, _, err = run(capsys, "eval", "--pred", str(preds), "--no-bertscore", "--resamples", "5", "--allow-missing")
    assert code == 0 and "left out 1 bad record(s)" in err
    code, _, err = run(capsys, "eval", "--pred", str(preds), "--no-bertscore", "--resamples", "5", "--strict")
    assert code == 2 and "b" in err


def test_nan_is_not_a_fraction():
    from photon.core.config import check_selection
    from photon.core.errors import PhotonError

    with pytest.raises(PhotonError, match="keep_ratio=nan"):
        check_selection({"keep_ratio": math.nan})
