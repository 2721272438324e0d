"""`photon attach` on a phantom NIfTI with the offline tiny backbone: the answer and its numbers,
the Python API giving the same, the selection JSON and overlay PNG, the summary, the errors."""

import contextlib
import io
import json

import nibabel as nib
import numpy as np
import photon
import pytest
from PIL import Image

from tests.make_media import AFFINE_DIRECTIONS, phantom
from photon.adapters.qwen2_5_vl import load_tiny
from photon.cli import main
from photon.inference import ask
from photon.visualize import DROPPED_GREY, HEADER_HEIGHT, KEPT_TINT, LABEL_HEIGHT, LEGEND_HEIGHT, SWATCH, load_selection, save_selection
from photon.wrapping import media_options

QUESTION = "Is there a bright sphere in the upper left?"
FAST = ["--media", "ct.preprocess=false", "--max-new-tokens", "4"]  # the phantom needs no 1 mm resampling
# qwen2.5-vl-tiny takes volumes as 28 x 112 x 112 frames: 14 temporal x 4 x 4 tokens.
TOKEN_ROWS, TOKENS = 14, 224
RAW_CT = {"ct": {"preprocess": False}}


def cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("attach") / "phantom.nii.gz"
    nib.save(phantom(AFFINE_DIRECTIONS["LPS"], spacing=3.0), str(path))
    return path


@pytest.fixture(scope="module")
def asked(volume, tmp_path_factory):
    """One CLI run with --json --baseline --save-selection, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("selection")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["attach", "--backbone", "qwen2.5-vl-tiny", "--input", str(volume), "--question", QUESTION,
                     "--json", "--baseline", "--save-selection", str(folder), *FAST])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue()), err.getvalue(), folder


def test_json_fields_are_present_and_consistent(asked):
    result, err, folder = asked
    for key in ("answer", "backbone", "mode", "n_visual", "n_kept", "keep_ratio", "theta", "prefill_s", "decode_s", "rule"):
        assert key in result
    assert result["backbone"] == "qwen2.5-vl-tiny" and result["mode"] == "zero_shot" and result["rule"] == "zero_shot:mean"
    assert result["n_visual"] == TOKENS and 1 <= result["n_kept"] < TOKENS
    assert result["keep_ratio"] == pytest.approx(result["n_kept"] / result["n_visual"])
    # The counts agree with the selection the same run saved: the kept mask and the rule's threshold.
    selection = load_selection(folder)
    assert len(selection["keep"]) == result["n_visual"] and sum(selection["keep"]) == result["n_kept"]
    rho, mean = np.asarray(selection["rho"]), float(np.mean(selection["rho"]))
    assert result["theta"] == pytest.approx(mean, abs=1e-5)  # zero_shot:mean keeps rho above the sample's mean
    keep = np.asarray(selection["keep"])
    assert (rho[keep] >= mean - 1e-5).all() and (rho[~keep] <= mean + 1e-5).all()  # (rho is rounded to 6 places)
    assert 0 < result["theta"] < 1 and result["prefill_s"] > 0 and result["decode_s"] > 0
    assert result["total_s"] == pytest.approx(result["prefill_s"] + result["decode_s"], abs=2e-6)
    assert "answers are meaningless" in err


def test_python_attach_on_a_loaded_model_matches_the_cli(asked, volume):
    cli_result, _, folder = asked
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot")
    result = ask(loaded, volume, QUESTION, max_new_tokens=4, media_options=media_options(loaded, RAW_CT))
    record = photon.last_selection(loaded.model)[0]
    assert load_selection(folder) == record  # the CLI's selection.json is this run's selection
    assert result.result.n_kept == record["n_kept"] == sum(record["keep"])
    assert (result.result.answer, result.result.n_kept, result.result.theta) == (cli_result["answer"], cli_result["n_kept"], cli_result["theta"])
    saved = json.loads((folder / "selection.json").read_text())
    assert saved["answer"] == result.result.answer and saved["question"] == QUESTION


def test_baseline_keeps_every_visual_token(asked, capsys, volume):
    baseline = asked[0]["baseline"]
    assert baseline["n_kept"] == baseline["n_visual"] == TOKENS and baseline["theta"] is None
    assert isinstance(baseline["answer"], str) and baseline["prefill_s"] > 0
    code, out, _ = cli(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--input", str(volume), "--question", QUESTION,
                       "--baseline", *FAST)
    assert code == 0
    assert "photon answer:" in out and "unpruned answer:" in out
    assert f"{TOKENS}/{TOKENS}" in out.split("unpruned")[-1]
    assert "rule: zero_shot:mean" in out


def test_selection_json_reloads_and_the_overlay_has_the_expected_size_and_colours(volume, tmp_path):
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot", keep_ratio=0.5)
    result = ask(loaded, volume, QUESTION, max_new_tokens=2, media_options=media_options(loaded, RAW_CT))
    record = photon.last_selection(loaded.model)[0]
    paths = save_selection(tmp_path, result.result.selection, result.media, temporal_patch=2, context={"question": QUESTION})
    assert [p.name for p in paths] == ["selection.json", "overlay-0.png"]
    assert load_selection(tmp_path / "selection.json") == record
    image = np.asarray(Image.open(paths[1]).convert("RGB")).astype(int)
    # 14 token rows -> 14 panels of 224 x 224 (112-pixel frames, doubled), 8 to a row.
    header = HEADER_HEIGHT + LEGEND_HEIGHT
    assert image.shape == (header + 2 * (224 + LABEL_HEIGHT), 8 * 224, 3)
    # The legend's swatches: a kept (tinted) square, then a dropped (grey) one.
    swatch = HEADER_HEIGHT + 2 + SWATCH // 2
    assert tuple(image[swatch, 4 + SWATCH // 2]) == tuple(int(v) for v in KEPT_TINT)
    grey = image[swatch, 4 + SWATCH + 6 + 40: 4 + SWATCH + 6 + 200].reshape(-1, 3)
    assert any(tuple(p) == (int(DROPPED_GREY),) * 3 for p in grey)
    keep = np.asarray(record["keep"]).reshape(TOKEN_ROWS, 4, 4)
    cell = 224 // 4
    for row in range(TOKEN_ROWS):
        x0, y0 = (row % 8) * 224, header + (row // 8) * (224 + LABEL_HEIGHT)
        for i in range(4):
            for j in range(4):
                r, g, b = image[y0 + i * cell + cell // 2, x0 + j * cell + cell // 2]
                if keep[row, i, j]:
                    assert r > b + 60, (row, i, j)  # tinted
                else:
                    assert r == g == b, (row, i, j)  # greyed


def test_overrides_choose_the_rule_and_layer(capsys, volume):
    code, out, _ = cli(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--input", str(volume), "--question", QUESTION,
                       "--keep-ratio", "0.25", "--layer", "3", "min_keep=4", "--json", *FAST)
    assert code == 0
    result = json.loads(out)
    assert result["rule"] == "keep_ratio=0.25" and result["layer"] == 3
    assert result["n_kept"] == TOKENS // 4


def test_summary_without_input_or_save(capsys):
    code, out, _ = cli(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--json")
    assert code == 0
    summary = json.loads(out)
    hidden = 64
    predictor = 12 * (hidden // 8) + hidden // 8 + hidden // 8 + 1  # Linear(12, H/8) -> Linear(H/8, 1)
    assert summary["adapter"] == "qwen2.5-vl" and summary["selection_layer"] == 8 // 4 - 1
    assert summary["mode"] == "zero_shot" and summary["rule"] == "zero_shot:mean"
    assert summary["added_parameters"] == {"threshold predictor": predictor}
    assert summary["visual_tokens"]["CT volume 28x112x112"] == TOKENS
    code, out, _ = cli(capsys, "attach", "--backbone", "qwen2.5-vl-tiny")
    assert code == 0
    assert "selection layer: 1 of decoder layers 0..7" in out and "threshold predictor 113 parameters" in out


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "wrapped"
    assert main(["attach", "--backbone", "qwen2.5-vl-tiny", "--save", str(folder)]) == 0
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backbone", "qwen2.5-vl-tiny", "--input", "{missing}", "--question", "q"], "no such file or folder"),
        (["--backbone", "qwen9-vl", "--question", "q", "--input", "{volume}"], "unknown backbone 'qwen9-vl': not a registered name ("),
        (["--backbone", "qwen2.5-vl-tiny", "--input", "{volume}", "--question", "   "], "the question is empty"),
        (["--backbone", "qwen3-vl-tiny", "--checkpoint", "{checkpoint}", "--input", "{volume}", "--question", "q"],
         "wraps qwen2.5-vl-tiny (qwen2_5_vl), not the backbone qwen3-vl-tiny"),
        (["--checkpoint", "{missing}"], "no such file or folder"),
        (["--backbone", "qwen2.5-vl-tiny", "--save", "{checkpoint}2", "--link"], "--link needs weights in a local folder"),
        (["--backbone", "qwen2.5-vl-tiny", "not_a_setting=1"], "unknown selection setting(s) not_a_setting"),
    ],
)
def test_errors_name_the_problem_and_exit_2(argv, message, capsys, volume, saved_checkpoint, tmp_path):
    values = {"missing": str(tmp_path / "missing.nii.gz"), "volume": str(volume), "checkpoint": str(saved_checkpoint)}
    code, out, err = cli(capsys, "attach", *[a.format(**values) for a in argv])
    assert code == 2, err
    assert message in err
    if "unknown backbone" in message:
        assert "qwen2.5-vl-tiny" in err and "qwen3-vl-tiny" in err


def test_a_saved_checkpoint_answers_like_the_model_it_holds(capsys, volume, tmp_path):
    from photon.core import checkpoint as checkpoints

    # Weights of its own, unlike the seeded backbone it names: ignoring them would show.
    own = load_tiny(seed=17, initializer_range=0.3)
    photon.attach(own.model, mode="zero_shot", layer=2)
    folder = checkpoints.save_folder(own.model, own.encoder.tokenizer, tmp_path / "own", backbone="qwen2.5-vl-tiny")
    argv = ["--input", str(volume), "--question", QUESTION, "--json", *FAST]
    code, out, _ = cli(capsys, "attach", "--checkpoint", str(folder), "--backbone", "qwen2.5-vl-tiny", *argv)
    assert code == 0
    from_checkpoint = json.loads(out)
    direct = ask(own, volume, QUESTION, max_new_tokens=4, media_options=media_options(own, RAW_CT)).as_dict()
    for key in ("answer", "backbone", "mode", "rule", "layer", "n_visual", "n_kept"):
        assert from_checkpoint[key] == direct[key], key
    assert from_checkpoint["theta"] == pytest.approx(direct["theta"], abs=1e-6)
    code, out, _ = cli(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--layer", "2", *argv)
    by_name = json.loads(out)
    assert (by_name["answer"], by_name["theta"]) != (from_checkpoint["answer"], from_checkpoint["theta"])
