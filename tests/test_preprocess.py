"""`photon preprocess`: outputs in the recipe's geometry, a manifest, resumable, per-file errors."""

import json

import nibabel as nib
import numpy as np

from photon.cli import main
from photon.modalities.preprocess import read_ctrate_metadata, read_manifest
from tests.make_media import AFFINE_DIRECTIONS, dicom_series, phantom

SMALL = ["--crop", "48", "40", "32"]


def _sources(tmp_path):
    nib.save(phantom(AFFINE_DIRECTIONS["RAS"]), tmp_path / "ras.nii.gz")
    nib.save(phantom(AFFINE_DIRECTIONS["PIR"]), tmp_path / "pir.nii")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    dicom_series(tmp_path / "series")
    return [str(tmp_path / name) for name in ("ras.nii.gz", "pir.nii", "broken.nii.gz", "series")]


def test_preprocess_writes_the_recipe_and_a_manifest_and_reports_bad_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["preprocess", *_sources(tmp_path), "--out", str(out), *SMALL]) == 1  # one file failed
    printed = capsys.readouterr()
    assert "3 written, 0 already done (skipped), 1 failed" in printed.out
    assert "broken.nii.gz: not a readable NIfTI" in printed.out
    for name in ("ras", "pir", "series"):
        image = nib.load(out / f"{name}.nii.gz")
        assert image.shape == (48, 40, 32) and nib.aff2axcodes(image.affine) == ("L", "P", "S")
        np.testing.assert_allclose(image.header.get_zooms(), [1.0, 1.0, 1.0], atol=1e-5)
        assert image.get_data_dtype() == np.int16
        data = np.asarray(image.dataobj)
        assert data.min() >= -1000 and data.max() <= 1000
    assert np.asarray(nib.load(out / "ras.nii.gz").dataobj)[0, 0, 0] == -1000  # air at the padded corner
    manifest = read_manifest(out / "manifest.jsonl")
    assert manifest[str(out / "series.nii.gz")]["original"]["spacing"][2] == 5.0
    assert manifest[str(out / "pir.nii.gz")]["original"]["axcodes"] == "PIR"
    failed = manifest[str(out / "broken.nii.gz")]
    assert failed["status"] == "failed" and "broken.nii.gz" in failed["error"]


def test_preprocess_is_resumable_and_overwrites_only_with_force(tmp_path, capsys):
    out = tmp_path / "out"
    sources = _sources(tmp_path)[:2]
    assert main(["preprocess", *sources, "--out", str(out), *SMALL]) == 0
    first = (out / "ras.nii.gz").stat().st_mtime_ns
    (out / "pir.nii.gz").unlink()  # as if the first run had stopped before it
    capsys.readouterr()
    assert main(["preprocess", *sources, "--out", str(out), *SMALL]) == 0
    assert "1 written, 1 already done (skipped), 0 failed" in capsys.readouterr().out
    assert (out / "ras.nii.gz").stat().st_mtime_ns == first and (out / "pir.nii.gz").is_file()
    assert main(["preprocess", *sources, "--out", str(out), "--crop", "32", "32", "32"]) == 0
    assert "made with other options" in capsys.readouterr().out  # and still not overwritten
    assert nib.load(out / "ras.nii.gz").shape == (48, 40, 32)
    assert main(["preprocess", *sources, "--out", str(out), "--crop", "32", "32", "32", "--force"]) == 0
    assert nib.load(out / "ras.nii.gz").shape == (32, 32, 32)
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5


def test_ctrate_metadata_rescales_raw_volumes_and_restores_spacing(tmp_path):
    raw = np.full((20, 20, 10), 24, dtype=np.int16)  # stored values: air would be 24 - 1024 = -1000 HU
    raw[8:12, 8:12, 4:6] = 1124  # 100 HU
    nib.save(nib.Nifti1Image(raw, np.eye(4)), tmp_path / "valid_1_a_1.nii.gz")
    csv = tmp_path / "metadata.csv"
    csv.write_text('VolumeName,RescaleSlope,RescaleIntercept,XYSpacing,ZSpacing\n'
                   'valid_1_a_1.nii.gz,1.0,-1024.0,"[0.5, 0.5]",2.0\n')
    assert read_ctrate_metadata(csv)["valid_1_a_1.nii.gz"] == {"slope": 1.0, "intercept": -1024.0, "spacing": [0.5, 0.5, 2.0]}
    out = tmp_path / "out"
    assert main(["preprocess", str(tmp_path / "valid_1_a_1.nii.gz"), "--out", str(out), "--no-crop", "--metadata", str(csv)]) == 0
    image = nib.load(out / "valid_1_a_1.nii.gz")
    assert image.shape == (10, 10, 20)  # 20 x 0.5 mm, 20 x 0.5 mm, 10 x 2 mm at 1 mm
    data = np.asarray(image.dataobj)
    assert data.min() == -1000 and data.max() == 100
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert entry["calibration"].startswith("raw") and entry["original"]["spacing"] == [0.5, 0.5, 2.0]
