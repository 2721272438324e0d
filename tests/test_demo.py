"""photon demo: the phantom set says where each answer lives, and the command measures both runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from photon.demo import phantoms
from photon.modalities.ct import load_ct

SHAPE = (8, 112, 112)


def records(folder: Path, n: int = 24, seed: int = 3, shape=SHAPE) -> list[dict]:
    path = phantoms.write_split(folder, "train", n, seed, shape)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_answer_follows_from_the_lesions(tmp_path):
    kinds = set()
    for record in records(tmp_path, n=60):
        meta, answer = record["meta"], record["messages"][1]["content"]
        quadrants = [lesion["quadrant"] for lesion in meta["lesions"]]
        kinds.add(meta["kind"])
        assert len(set(quadrants)) == len(quadrants)  # one lesion per quadrant at most
        if meta["kind"] == "count":
            assert answer == str(len(quadrants))
        elif meta["kind"] == "presence":
            assert answer == ("yes" if quadrants else "no") and meta["region"] is None
        elif meta["kind"] == "where":
            assert quadrants == [answer] and meta["region"] == answer
        else:
            assert answer == ("yes" if meta["region"] in quadrants else "no")
            assert meta["region"] in record["messages"][0]["content"]
    assert kinds == set(phantoms.KINDS)


def test_lesions_land_in_their_named_quadrant_through_the_ct_loader(tmp_path):
    """The written NIfTI (L,P,S voxels) comes back through the CT loader as generated: each lesion's
    centre is bright and sits in the quadrant its name gives in the model-input convention."""
    seen = set()
    for record in records(tmp_path, n=12):
        media = load_ct(tmp_path / record["videos"][0], size=list(SHAPE), preprocess=False)
        frames = media.frames[:, 0]
        body = np.median(frames[frames > 0.5])
        for lesion in record["meta"]["lesions"]:
            d, h, w = (int(round(c)) for c in lesion["center"])
            assert frames[d, h, w] > body + 0.1, record["id"]
            assert phantoms.quadrant_of(h, w, SHAPE) == lesion["quadrant"]
            seen.add(lesion["quadrant"])
    assert seen == set(phantoms.QUADRANTS)


def test_a_left_anterior_lesion_is_in_the_first_rows_and_columns():
    """Anterior is the first half of H, patient-left the first half of W (PHOTON_SPEC section 1)."""
    rng = np.random.default_rng(0)
    lesion = phantoms._place("left anterior", rng, SHAPE)
    mask = phantoms.lesion_mask(lesion, SHAPE)
    rows, cols = np.nonzero(mask.any(axis=0))
    assert rows.max() < SHAPE[1] // 2 and cols.max() < SHAPE[2] // 2
    volume = phantoms.render(phantoms.Case("x", "where", "q", "left anterior", "left anterior", (lesion,), SHAPE), rng)
    assert volume[mask].min() > 150 and volume[~mask].max() < 150


def test_relevant_tokens_are_the_asked_quadrant_or_the_lesions():
    grid = (4, 4, 4)
    quadrant = phantoms.to_token_grid(phantoms.relevant_voxels(
        {"kind": "exists", "region": "right posterior", "shape": list(SHAPE), "lesions": []}), grid)
    expected = np.zeros(grid, dtype=bool)
    expected[:, 2:, 2:] = True
    assert np.array_equal(quadrant, expected)

    lesion = {"quadrant": "left anterior", "center": [3.5, 20.0, 20.0], "radius_mm": 10.0}
    counted = phantoms.to_token_grid(phantoms.relevant_voxels(
        {"kind": "count", "region": None, "shape": list(SHAPE), "lesions": [lesion]}), grid)
    # 10 mm is 4.7 pixels at 2.14 mm: the lesion sits inside token row 0, column 0 (28 px each),
    # and spans slices 2-5 (8 mm slices), which are temporal tokens 1 and 2.
    expected = np.zeros(grid, dtype=bool)
    expected[1:3, 0, 0] = True
    assert np.array_equal(counted, expected)
    with pytest.raises(ValueError, match="token grid"):
        phantoms.to_token_grid(np.zeros((8, 112, 112), bool), (3, 4, 4))


def test_the_set_is_reproducible_from_its_seed(tmp_path):
    first = records(tmp_path / "a", n=6)
    again = records(tmp_path / "b", n=6)
    other = records(tmp_path / "c", n=6, seed=4)
    assert first == again and first != other
    a = load_ct(tmp_path / "a" / first[0]["videos"][0], size=list(SHAPE), preprocess=False).frames
    b = load_ct(tmp_path / "b" / again[0]["videos"][0], size=list(SHAPE), preprocess=False).frames
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_demo_json_reports_both_runs_and_writes_its_pictures(tmp_path):
    pytest.importorskip("deepspeed", reason="photon demo trains with the train extra (DeepSpeed)")
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "photon", "demo", "--json", "--out", str(out),
         "n_train=8", "n_test=6", "steps=5", "batch_size=2", "eval_batch_size=4", "volume=[4,56,56]", "timing_rounds=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # nothing but the JSON object on stdout
    assert result == json.loads((out / "demo.json").read_text())
    assert "[4/4] scoring" in done.stderr
    runs = result["runs"]
    assert list(runs) == ["unpruned", "photon", "zero-shot ITS", "random"]
    for label, run in runs.items():
        assert run["cases"] == 6 and 0 <= run["accuracy"] <= 1
        assert 0 < run["kept_tokens"] <= run["visual_tokens"] == 8  # 2 temporal x 2 x 2 tokens
        lines = Path(run["predictions"]).read_text().splitlines()
        assert len(lines) == 6 and json.loads(lines[0])["n_visual"] == 8
    assert runs["unpruned"]["keep_ratio"] == 1 and runs["unpruned"]["relevant_coverage"] is None
    for label in ("photon", "zero-shot ITS", "random"):
        assert 0 <= runs[label]["relevant_coverage"] <= 1 and 0 < runs[label]["blind_coverage"] <= 1
    assert abs(runs["random"]["keep_ratio"] - runs["photon"]["keep_ratio"]) < 0.15
    for label in ("unpruned", "photon"):
        training, timing = runs[label]["training"], runs[label]["timing"]
        assert training["steps"] == 5 and training["samples_per_s"] > 0
        assert timing["train_step_ms"] > 0 and timing["train_samples_per_s"] == pytest.approx(2000 / timing["train_step_ms"])
        assert timing["prefill_ms"] > 0
    assert runs["zero-shot ITS"]["timing"]["prefill_ms"] > 0 and runs["zero-shot ITS"]["timing"]["train_step_ms"] is None
    if runs["photon"]["training"]["peak_memory_mb"] is not None:  # Linux: the peak RSS can be reset
        for label in ("unpruned", "photon"):
            assert 0 < runs[label]["timing"]["train_step_memory_mb"] < runs[label]["training"]["peak_memory_mb"]
    log = [json.loads(line) for line in (out / "runs/photon/log.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] in ("hard", "flip")  # the schedule was scaled to the 5-step run
    unpruned_log = [json.loads(line) for line in (out / "runs/unpruned/log.jsonl").read_text().splitlines()]
    assert {row["stage"] for row in unpruned_log} == {"full"}
    from PIL import Image

    pictures = result["pictures"]["kept_tokens"]
    assert pictures and all(Image.open(p).format == "PNG" for p in pictures)
    assert Image.open(result["pictures"]["retention"]).size[0] > 100


def test_overlays_frame_the_questions_region():
    from photon.visualize import HEADER_HEIGHT, OUTLINE, draw_medium

    frames = np.zeros((2, 1, 56, 56), np.float32)
    keep = np.ones((1, 2, 2), bool)
    region = np.zeros((1, 2, 2), bool)
    region[0, 1, 0] = True  # the lower-left token of the only panel (224 x 224 pixels)
    image = np.asarray(draw_medium(frames, keep, temporal_patch=2, outline=region))
    assert tuple(image[HEADER_HEIGHT + 170, 1]) == OUTLINE  # left edge of the framed token
    assert tuple(image[HEADER_HEIGHT + 50, 1]) != OUTLINE  # the token above it is not framed


def _run(accuracy, kept, coverage=None, blind=None, timing=None):
    return {"accuracy": accuracy, "accuracy_by_kind": {k: accuracy for k in phantoms.KINDS}, "kept_tokens": kept,
            "visual_tokens": 128, "keep_ratio": kept / 128, "relevant_coverage": coverage, "blind_coverage": blind,
            "llm_prefill_gflops": 0.1 * kept / 128, "timing": timing, "training": None}


@pytest.mark.parametrize("coverage, verdict", [(0.9, "more of the region than chance"),
                                               (0.52, "about as much of the region as chance"),
                                               (0.2, "less of the region than chance")])
def test_the_report_states_what_the_numbers_say(coverage, verdict):
    from photon.demo.report import findings, table

    result = {
        "answer_prior_accuracy": 0.36,
        "runs": {
            "unpruned": _run(0.7, 128, timing={"train_samples_per_s": 20.0, "prefill_ms": 10.0, "train_step_memory_mb": 200.0}),
            "photon": _run(0.68, 64, coverage, 0.5, timing={"train_samples_per_s": 30.0, "prefill_ms": 5.0, "train_step_memory_mb": 100.0}),
        },
    }
    lines = findings(result)
    assert any(verdict in line for line in lines)
    assert any("attention" in line for line in lines) == (coverage < 0.55)  # the explanation comes with no lift
    assert any("1.50x the unpruned samples/s" in line and "0.50x the unpruned time" in line for line in lines)
    assert any("0.50x the unpruned FLOPs" in line for line in lines)
    rows = table(result).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| unpruned") and "64/128" in rows[3]
