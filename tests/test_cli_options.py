"""Every command-line option is exercised by a test as a user would give it (datasette's habit for
docs, applied to tests): the first test fails when an option has no test; the others run the
options no other test file uses, each checking what the option changes."""

import ast
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from photon.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _options() -> list[tuple[str, str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return [(name, tuple(action.option_strings)) for name, child in sorted(sub.choices.items()) for action in child._actions
            if action.option_strings and "--help" not in action.option_strings]


def _string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_option_of_every_command_is_exercised_by_a_test():
    """A test file exercises `COMMAND --option` when it holds both as string literals (an argv)."""
    literals = [_string_literals(path) for path in TESTS.glob("test_*.py")]
    def used(found: set[str], option: str) -> bool:
        return option in found or any(s.startswith(option + "=") for s in found)

    missing = [f"photon {command} {aliases[-1]}" for command, aliases in _options()
               if not any(command in found and any(used(found, option) for option in aliases) for found in literals)]
    assert not missing, "options no test runs (add one that checks what the option changes):\n" + "\n".join(missing)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    folder = tmp_path_factory.mktemp("options")
    data = np.random.default_rng(0).normal(-500, 100, (24, 40, 40)).astype(np.float32)
    data[8:16, 10:20, 10:20] = 300
    data[2:8, 2:8, 2:8] = 1800  # dense bone: above the default clip of 1000 HU
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return path


SMALL = ["--media", "ct.preprocess=false", "--media", "ct.size=[28,56,56]", "--max-new-tokens", "2"]


# -- attach / infer: the model options ---------------------------------------------------------------
def test_attach_mode_pruner_device_and_dtype(capsys, volume):
    code, out, _ = run(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--mode", "trained", "--device", "cpu", "--dtype",
                       "bfloat16", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["mode"] == "trained" and summary["rule"] == "trained"
    assert summary["dtype"] == "bfloat16" and summary["device"] == "cpu"
    code, out, _ = run(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--pruner", "random", "--keep-ratio", "0.25",
                       "--input", str(volume), "--question", "Where?", "--json", *SMALL)
    result = json.loads(out)
    assert code == 0 and result["rule"].startswith("random") and result["n_kept"] == result["n_visual"] // 4
    code, _, err = run(capsys, "attach", "--backbone", "qwen2.5-vl-tiny", "--device", "cuda:7")
    assert code == 2 and "--device cuda:7" in err


def test_attach_allow_weight_mismatch_loads_a_folder_missing_a_weight(tmp_path, capsys):
    from tests.hub_layouts import write_photon_release_folder

    write_photon_release_folder(tmp_path / "s2", with_kernel=False)
    code, _, err = run(capsys, "attach", "--backbone", str(tmp_path / "s2"), "--json")
    assert code == 2 and "model.visual.patch_embed.proj.weight" in err
    code, out, err = run(capsys, "attach", "--backbone", str(tmp_path / "s2"), "--allow-weight-mismatch", "--json")
    assert code == 0 and json.loads(out)["mode"] == "trained"


def test_infer_model_options_and_overwrite(tmp_path, capsys, volume):
    from tests.hub_layouts import write_photon_release_folder

    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "<video>Any lesion?"},
                                                           {"role": "assistant", "content": "yes"}], "videos": [str(volume)]}) + "\n")
    preds = tmp_path / "p.jsonl"
    argv = ["infer", "--backbone", "qwen2.5-vl-tiny", "--data", str(records), "--out", str(preds), "--no-progress", *SMALL]
    code, _, _ = run(capsys, *argv, "--mode", "zero_shot", "--device", "cpu", "--dtype", "float32", "--attn", "eager")
    assert code == 0 and json.loads(preds.read_text())["mode"] == "zero_shot"
    code, _, err = run(capsys, *argv, "--keep-ratio", "0.5")
    assert code == 2 and "another run" in err
    code, _, _ = run(capsys, *argv, "--keep-ratio", "0.5", "--overwrite")
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert code == 0 and len(lines) == 1 and lines[0]["rule"] == "keep_ratio=0.5"  # replaced, not appended
    write_photon_release_folder(tmp_path / "s2", with_kernel=False)
    folder_argv = ["infer", "--backbone", str(tmp_path / "s2"), "--data", str(records), "--out", str(tmp_path / "q.jsonl"),
                   "--no-progress", "--max-new-tokens", "1", "--media", "ct.preprocess=false"]
    assert run(capsys, *folder_argv)[0] == 2
    assert run(capsys, *folder_argv, "--allow-weight-mismatch")[0] == 0


# -- bench ---------------------------------------------------------------------------------------
def test_bench_attn_seed_statistic_and_threads(tmp_path, capsys):
    out = tmp_path / "b.json"
    code, _, _ = run(capsys, "bench", "--attn", "eager", "--seed", "3", "--statistic", "median", "--threads", "1",
                     "--pruners", "photon", "--keep", "0.5", "--repeats", "2", "--warmup", "0", "--no-memory",
                     "--visual-tokens", "64", "--batch", "1", "--json", str(out))
    result = json.loads(out.read_text())
    options = result["command_options"]
    assert code == 0 and options["model"]["attn"] == "eager" and options["model"]["seed"] == 3 and options["threads"] == 1
    assert result["machine"]["torch_threads"] == 1
    stock, pruned = result["configurations"]
    # --statistic picks the summary of the absolute times the ideals build on (ratios are per-round medians)
    median = lambda row, name: row["times"][name]["median"]  # noqa: E731
    floor = (median(stock, "prefill_outside_layers_s") + median(pruned, "prefill_layers_s")) / median(stock, "prefill_s")
    assert pruned["ideal_ratios"]["prefill_floor"] == pytest.approx(floor)


# -- convert ----------------------------------------------------------------------------------------
def test_convert_split_version_map_media_dir_and_strict(tmp_path, capsys, monkeypatch):
    from tests.make_media import write_image, write_mp4

    monkeypatch.chdir(tmp_path)
    # SLAKE's validation split (older copies call the file validate.json).
    (tmp_path / "imgs" / "xmlab1").mkdir(parents=True)
    write_image(tmp_path / "imgs" / "xmlab1" / "source.jpg")
    row = {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Liver", "q_lang": "en",
           "answer_type": "OPEN", "qid": 7, "modality": "CT", "location": "Abdomen", "content_type": "Organ", "base_type": "vqa"}
    (tmp_path / "validate.json").write_text(json.dumps([row]))
    code, _, _ = run(capsys, "convert", "slake", ".", "val.jsonl", "--split", "validation")
    assert code == 0 and json.loads(Path("val.jsonl").read_text())["id"] == "slake/validation/7"
    # DeepTumorVQA forced to v1 reading of a list of v1 records.
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), -1000, dtype=np.int16), np.eye(4)), str(tmp_path / "vols" / "BDMAP_00000001.nii.gz"))
    v1 = [{"question_id": 3, "image_id": "BDMAP_00000001", "question": "Lesion?", "answer": "no", "correct_option": "B",
           "multiple_choice_question": "Lesion? (A) yes (B) no", "question_type": "recognition", "question_subtype": "x"}]
    Path("v1.json").write_text(json.dumps(v1))
    code, _, _ = run(capsys, "convert", "deeptumorvqa", "v1.json", "d.jsonl", "--volumes", "vols", "--version", "1")
    assert code == 0 and json.loads(Path("d.jsonl").read_text())["id"] == "deeptumorvqa/v1/3/mc"
    # NExT-QA with the video map given explicitly, elsewhere than beside the CSV.
    import csv

    with open("val.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                                       "a0", "a1", "a2", "a3", "a4"],
                                      [42, 25, 64, 48, "why", 1, 2, "CW", "a", "b", "c", "d", "e"]])
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "mine.json").write_text(json.dumps({"42": "7/42"}))
    (tmp_path / "videos" / "NExTVideo" / "7").mkdir(parents=True)
    write_mp4(tmp_path / "videos" / "NExTVideo" / "7" / "42.mp4")
    code, _, _ = run(capsys, "convert", "nextqa", "val.csv", "n.jsonl", "--videos", "videos", "--map", "maps/mine.json")
    assert code == 0 and json.loads(Path("n.jsonl").read_text())["meta"]["answer_letter"] == "B"
    # --strict stops at the first row that cannot be converted; without it the row is skipped.
    with open("bad.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                                       "a0", "a1", "a2", "a3", "a4"],
                                      [99, 25, 64, 48, "where", 0, 1, "DL", "a", "b", "c", "d", "e"]])
    assert run(capsys, "convert", "nextqa", "bad.csv", "b.jsonl", "--videos", "videos", "--map", "maps/mine.json")[0] == 1
    code, _, err = run(capsys, "convert", "nextqa", "bad.csv", "b.jsonl", "--videos", "videos", "--map", "maps/mine.json", "--strict")
    assert code == 2 and "strict: stopping" in err


def test_convert_medframeqa_media_dir(tmp_path, capsys, monkeypatch):
    pa = pytest.importorskip("pyarrow", reason="needs pyarrow (the eval extra) to write MedFrameQA parquet")
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {"question_id": ["q1"], "system": ["s"], "organ": ["o"], "keyword": ["k"], "modality": ["MRI"], "video_id": ["v"],
               "question": ["Which?"], "options": [["A one", "B two"]], "correct_answer": ["A"], "reasoning_chain": ["."],
               "image_url": ["u"], "image_1": [{"bytes": buffer.getvalue(), "path": "a.png"}]}
    for k in range(2, 6):
        columns[f"image_{k}"] = [None]
    table = pa.table({k: pa.array(v, type=image) if k.startswith("image_") and k != "image_url" else v for k, v in columns.items()})
    pq.write_table(table, "test.parquet")
    code, _, _ = run(capsys, "convert", "medframeqa", "test.parquet", "out/m.jsonl", "--media-dir", "frames-here")
    record = json.loads(Path("out/m.jsonl").read_text())
    assert code == 0 and (tmp_path / "frames-here" / "q1_1.png").is_file()
    assert record["images"] == [str((tmp_path / "frames-here" / "q1_1.png").resolve())]  # outside the records folder: absolute


# -- demo ----------------------------------------------------------------------------------------
def test_demo_quick_sets_the_quick_settings():
    from photon.commands.demo import settings

    def demo_config(argv):
        return settings(build_parser().parse_args(["demo", *argv]))

    quick, default = demo_config(["--quick"]), demo_config([])
    assert quick.steps < default.steps and quick.n_train < default.n_train
    assert demo_config(["--quick", "steps=7"]).steps == 7  # KEY=VALUE still wins


# -- eval ----------------------------------------------------------------------------------------
FIXTURES = TESTS / "fixtures" / "eval"


def _metric(report, table, row, column):
    for t in report["tables"]:
        if t["name"] == table:
            for r in t["rows"]:
                if r["key"] == row:
                    return r["metrics"][column]
    raise KeyError((table, row, column))


def test_eval_bleu_mra_seed_and_device(tmp_path, capsys):
    def evaluate(pred, *extra):
        out = tmp_path / f"e{len(list(tmp_path.iterdir()))}"
        code, _, err = run(capsys, "eval", "--pred", str(FIXTURES / pred), "--no-bertscore", "--resamples", "50", "--out", str(out),
                           "--device", "cpu", *extra)
        assert code == 0, err
        return json.loads((out / "report.json").read_text())

    corpus, sentence = evaluate("3d-rad.jsonl"), evaluate("3d-rad.jsonl", "--bleu", "sentence")
    table = next(t for t in corpus["tables"] if any("bleu1" in r["metrics"] for r in t["rows"]))
    row = next(r for r in table["rows"] if r["metrics"].get("bleu1", {}).get("value") is not None)
    assert _metric(corpus, table["name"], row["key"], "bleu1")["value"] != _metric(sentence, table["name"], row["key"], "bleu1")["value"]
    continuous, vsi = evaluate("deeptumorvqa.jsonl"), evaluate("deeptumorvqa.jsonl", "--mra", "vsi")
    assert json.dumps(continuous["tables"]) != json.dumps(vsi["tables"])
    a, b = evaluate("nextqa.jsonl", "--seed", "1"), evaluate("nextqa.jsonl", "--seed", "2")
    ci = lambda report: [m["ci"] for t in report["tables"] for r in t["rows"] for m in r["metrics"].values()]  # noqa: E731
    assert ci(a) != ci(b) and [m for m in ci(a)] and evaluate("nextqa.jsonl", "--seed", "1")["tables"] == a["tables"]


def test_eval_bertscore_batch_size_and_download(tmp_path, capsys):
    from tests.test_eval_bertscore import _save_tiny_roberta

    model = _save_tiny_roberta(tmp_path / "roberta", add_prefix_space=False)

    def scores(*extra):
        out = tmp_path / f"e{len(list(tmp_path.iterdir()))}"
        code, _, err = run(capsys, "eval", "--pred", str(FIXTURES / "3d-rad.jsonl"), "--bertscore-model", str(model),
                           "--bertscore-layer", "2", "--resamples", "5", "--out", str(out), *extra)
        assert code == 0, err
        return [json.loads(line).get("bertscore") for line in (out / "cases.jsonl").read_text().splitlines()]

    one, many = scores("--bertscore-batch-size", "1"), scores("--bertscore-batch-size", "32")
    assert [s for s in one if s is not None] and one == pytest.approx(many, abs=1e-5)
    # --bertscore-download allows fetching; a hub id this offline machine lacks then fails on the fetch, not on the cache.
    code, _, err = run(capsys, "eval", "--pred", str(FIXTURES / "3d-rad.jsonl"), "--bertscore-model", "nobody/no-such-model-xyz",
                       "--resamples", "5", "--out", str(tmp_path / "x"))
    assert code == 2 and "--bertscore-download" in err
    code, _, err2 = run(capsys, "eval", "--pred", str(FIXTURES / "3d-rad.jsonl"), "--bertscore-model", "nobody/no-such-model-xyz",
                        "--bertscore-download", "--resamples", "5", "--out", str(tmp_path / "y"))
    assert code == 2 and err2 != err


# -- inspect, plot-training --------------------------------------------------------------------------
def test_inspect_kind_and_cache_dir(tmp_path, capsys, volume):
    code, out, _ = run(capsys, "inspect", str(volume), "--kind", "volume", "--json")
    assert code == 0 and json.loads(out)["modality"] == "ct"
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "<video>q"}], "videos": [str(volume)]}) + "\n")
    cache = tmp_path / "cache"
    code, out, _ = run(capsys, "inspect", str(records), "--cache-dir", str(cache), "--json")
    assert code == 0 and json.loads(out)["usable"] == 1 and any(cache.rglob("*"))  # the loaded volume was cached


def test_plot_training_window(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    rng = np.random.default_rng(0)
    log.write_text("".join(json.dumps({"step": k, "stage": "phase1", "loss": float(2 + rng.normal()), "loss_ce": float(2 + rng.normal())})
                           + "\n" for k in range(60)))
    assert run(capsys, "plot-training", str(log), "--out", str(tmp_path / "w1.png"), "--window", "1")[0] == 0
    assert run(capsys, "plot-training", str(log), "--out", str(tmp_path / "w30.png"), "--window", "30")[0] == 0
    assert (tmp_path / "w1.png").read_bytes() != (tmp_path / "w30.png").read_bytes()  # the running mean smooths the curve


# -- preprocess --------------------------------------------------------------------------------------
def test_preprocess_geometry_and_intensity_options(tmp_path, capsys, volume):
    def prep(name, *options):
        out = tmp_path / name
        code, _, err = run(capsys, "preprocess", str(volume), "--out", str(out), "--no-crop", *options)
        assert code == 0, err
        return nib.load(next(out.glob("*.nii.gz")))

    default = prep("default")
    assert nib.aff2axcodes(default.affine) == ("L", "P", "S") and default.header.get_zooms() == (1.0, 1.0, 1.0)
    ras = prep("ras", "--axcodes", "RAS", "--spacing", "2", "2", "2", "--interpolation", "nearest")
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and ras.header.get_zooms() == (2.0, 2.0, 2.0)
    source = nib.load(volume).get_fdata()
    written = set(np.unique(np.round(ras.get_fdata())))
    assert written <= set(np.unique(np.round(np.clip(source, -1000, 1000))))  # nearest: no new values (stored rounded)
    linear = set(np.unique(np.round(prep("linear", "--axcodes", "RAS", "--spacing", "2", "2", "2").get_fdata())))
    assert not linear <= set(np.unique(np.round(np.clip(source, -1000, 1000))))  # linear interpolates new ones
    narrow = prep("narrow", "--hu-range", "-200", "200").get_fdata()
    assert narrow.min() >= -200 and narrow.max() <= 200
    assert default.get_fdata().max() == 1000
    full = prep("full", "--no-clip").get_fdata()
    assert full.max() > 1500
    padded = run(capsys, "preprocess", str(volume), "--out", str(tmp_path / "pad"), "--crop", "80", "80", "80", "--pad-value", "0")
    assert padded[0] == 0
    pad = nib.load(next((tmp_path / "pad").glob("*.nii.gz"))).get_fdata()
    assert pad[0, 0, 0] == 0 and pad.shape == (80, 80, 80)


def test_preprocess_calibration_slope_intercept_and_strict(tmp_path, capsys):
    stored = np.random.default_rng(1).integers(0, 2000, (16, 16, 8)).astype(np.float32)  # raw stored values, not HU
    raw = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(stored, np.eye(4)), str(raw))
    out = tmp_path / "cal"
    code, _, _ = run(capsys, "preprocess", str(raw), "--out", str(out), "--no-crop", "--no-clip", "--calibration", "raw",
                     "--slope", "1", "--intercept", "-1024")
    calibrated = nib.load(next(out.glob("*.nii.gz"))).get_fdata()
    assert code == 0 and calibrated.min() == pytest.approx(stored.min() - 1024, abs=1)
    code, _, _ = run(capsys, "preprocess", str(raw), "--out", str(tmp_path / "hu"), "--no-crop", "--no-clip", "--calibration", "hu")
    assert code == 0 and nib.load(next((tmp_path / "hu").glob("*.nii.gz"))).get_fdata().min() == pytest.approx(stored.min(), abs=1)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    assert run(capsys, "preprocess", str(broken), str(raw), "--out", str(tmp_path / "lenient"), "--calibration", "hu")[0] == 1
    code, _, err = run(capsys, "preprocess", str(broken), str(raw), "--out", str(tmp_path / "strict"), "--calibration", "hu", "--strict")
    assert code == 2 and "broken.nii.gz" in err
