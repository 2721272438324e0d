"""CT volumes: orientation phantoms, real NIfTI/DICOM files, HU calibration, the recipe, bad input."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from photon.core.errors import PhotonError
from photon.modalities import ct
from photon.modalities.base import load_media
from photon.modalities.volumes import read_volume
from tests.make_media import AFFINE_DIRECTIONS, centroid_fractions, dicom_series, expected_model_fractions, phantom

SMALL = {"size": [30, 36, 40], "crop": None}  # keeps the tests fast; the default size is checked once


@pytest.mark.parametrize("name", sorted(AFFINE_DIRECTIONS))
def test_marker_lands_where_the_model_input_convention_says(tmp_path, name):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(phantom(AFFINE_DIRECTIONS[name]), path)
    media = load_media(path, **SMALL)
    assert media.kind == "volume" and media.frames.shape == (30, 1, 36, 40)
    got, want = centroid_fractions(media.frames), expected_model_fractions()
    if name == "oblique":
        # Reorientation picks the closest axes without resampling: the octant must still be right.
        assert np.all(np.sign(got - 0.5) == np.sign(want - 0.5)) and np.all(np.abs(got - 0.5) > 0.1), got
        assert media.meta["oblique"] is True
    else:
        np.testing.assert_allclose(got, want, atol=0.03)
        assert media.meta["axcodes"] == list(name)


def test_default_model_input_is_140_280_280_in_unit_range(tmp_path):
    path = tmp_path / "lps.nii.gz"
    nib.save(phantom(AFFINE_DIRECTIONS["LPS"], spacing=2.5), path)
    media = ct.load_ct(path)
    assert media.frames.shape == (140, 1, 280, 280) and media.frames.dtype == np.float32
    assert media.frames.min() == 0.0 and media.frames.max() == 1.0
    assert media.fps == 1.0
    assert media.meta["preprocessed_shape"] == [364, 364, 364] and media.meta["preprocessed_spacing"] == [1.0, 1.0, 1.0]
    assert media.meta["spacing"] == [2.5, 2.5, 2.5] and media.meta["hu_range"] == [-1000.0, 1000.0]
    # The 364 mm crop/pad is centred on the volume, which is centred on the origin, so the
    # marker keeps its patient position relative to the (now larger) field of view.
    fov = 364.0
    x, y, z = (-22.0, 14.0, 17.0)
    want = np.array([(z + fov / 2) / fov, (fov / 2 - y) / fov, (x + fov / 2) / fov])
    np.testing.assert_allclose(centroid_fractions(media.frames), want, atol=0.01)


def test_nibabel_las_volume_matches_an_independent_canonical_reading():
    path = Path(data_path) / "anatomical.nii"
    media = ct.load_ct(path, calibration="none", hu_range=None, preprocess=False, size=None)
    assert media.meta["axcodes"] == ["L", "A", "S"] and media.meta["shape"] == [33, 41, 25]
    assert media.meta["spacing"] == [2.0, 2.0, 2.0]
    # nibabel's own RAS canonical array: i to the right, j anterior, k superior. The model wants
    # D = k, H anterior->posterior (reverse j), W left->right (= i).
    ras = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    expected = ras.transpose(2, 1, 0)[:, ::-1, :]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(media.frames[:, 0], expected, atol=1e-6)


def test_4d_nifti_is_refused_and_its_oblique_first_volume_loads(tmp_path):
    path = Path(data_path) / "example4d.nii.gz"
    with pytest.raises(PhotonError, match=r"example4d.nii.gz: a 4D NIfTI of shape \(128, 96, 24, 2\); expected one 3D volume"):
        ct.load_ct(path)
    first = tmp_path / "first.nii.gz"
    nib.save(nib.load(path).slicer[..., 0], first)
    facts = ct.describe_ct(first)
    assert facts["axcodes"] == "LAS" and facts["oblique"] is True and facts["shape"] == [128, 96, 24]
    media = ct.load_ct(first, calibration="none", hu_range=None, size=[24, 48, 64], crop=None)
    assert media.frames.shape == (24, 1, 48, 64) and media.meta["oblique"] is True


def test_dicom_series_is_sorted_by_position_and_calibrated_to_hu(tmp_path):
    folder = dicom_series(tmp_path / "series", n_slices=4, marker_slice=2)
    volume = read_volume(folder)
    assert volume.data.shape == (128, 128, 4)
    assert volume.axcodes == ("L", "P", "S")  # DICOM rows run to patient left, columns posterior
    np.testing.assert_allclose(volume.spacing, [0.661468, 0.661468, 5.0], atol=1e-5)
    assert volume.data.min() == -896.0 and volume.data.max() == 3000 - 1024  # RescaleIntercept -1024 applied once
    assert volume.data[:8, :8, 2].min() == 3000 - 1024 and volume.data[:8, :8, [0, 1, 3]].max() < 3000 - 1024
    media = load_media(folder, calibration="auto", preprocess=False, size=None)
    assert media.meta["calibration"] == "hu" and media.meta["hu_range"] == [-896.0, 1976.0]
    # Slice 2 from inferior is frame 2; the square sits at the first rows (anterior) and, after
    # the flip, at the last columns: the first DICOM columns are the patient's right side.
    frame = media.frames[2, 0]
    assert frame[:8, -8:].min() == 1.0 and media.frames[[0, 1, 3], 0, :8, -8:].max() < 1.0


def test_raw_volumes_are_rescaled_once_and_hu_volumes_never(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    stored = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.int16)  # raw 128..2191
    raw = np.repeat(stored[:, :, None], 3, axis=2)
    raw_path = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.eye(4)), raw_path)
    options = {"preprocess": False, "size": None}
    with pytest.raises(PhotonError, match=r"raw.nii.gz: looks like raw stored values, not HU \(minimum 128"):
        ct.load_ct(raw_path, **options)
    rescaled = ct.load_ct(raw_path, slope=1.0, intercept=-1024.0, **options)
    assert rescaled.meta["hu_range"] == [-896.0, 1167.0] and rescaled.meta["calibration"].startswith("raw")

    hu_path = tmp_path / "hu.nii.gz"
    nib.save(nib.Nifti1Image((raw - 1024).astype(np.int16), np.eye(4)), hu_path)
    again = ct.load_ct(hu_path, slope=1.0, intercept=-1024.0, **options)
    assert again.meta["hu_range"] == [-896.0, 1167.0]  # not -1920: the intercept is not applied twice
    assert "not applied again" in again.meta["calibration"]
    np.testing.assert_array_equal(again.frames, rescaled.frames)


def test_recipe_resamples_to_1mm_clips_and_pads_with_air_keeping_patient_position(tmp_path):
    image = phantom(AFFINE_DIRECTIONS["RAS"], spacing=2.0)
    volume = ct.Volume(image.get_fdata(dtype=np.float32) * 1.5, image.affine, "phantom")  # +-1500 HU
    out = ct.preprocess_volume(volume, ct.check_config(ct.CTConfig(crop=[100, 80, 50]), "test"))
    assert out.axcodes == ("L", "P", "S")
    np.testing.assert_allclose(out.spacing, [1.0, 1.0, 1.0])
    assert out.data.shape == (100, 80, 50) and out.data.min() == -1000 and out.data.max() == 1000

    def marker_world(v):
        weights = (v.data - v.data.min()).reshape(-1)
        index = np.indices(v.data.shape).reshape(3, -1) @ weights / weights.sum()
        return v.affine[:3, :3] @ index + v.affine[:3, 3]

    np.testing.assert_allclose(marker_world(out), marker_world(volume), atol=0.5)
    assert out.data[0, 0, 0] == -1000 and out.data[50, 40, 0] == -1000  # padded x (80 -> 100), cropped z (60 -> 50)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: _write(d / "garbage.nii", b"not a nifti at all" * 20), "garbage.nii: not a readable NIfTI"),
        (lambda d: _truncated(d), r"cut.nii.gz: cannot read the voxel data .* truncated or corrupt"),
        (lambda d: _nifti(d / "flat.nii.gz", np.zeros((16, 16, 1))), r"flat.nii.gz: shape \(16, 16, 1\) is a 2D image"),
        (lambda d: _nifti(d / "nan.nii.gz", np.where(np.arange(512).reshape(8, 8, 8) % 100 == 0, np.nan, -1000.0)),
         "nan.nii.gz: 6 voxels are NaN or infinite"),
        (lambda d: _mkdir(d / "empty"), "empty: no DICOM files in this folder"),
        (lambda d: _write(d / "slice.png", b""), "slice.png: a 2D image file; expected a 3D volume"),
    ],
    ids=["missing", "corrupt", "truncated", "2d", "nan", "empty-dicom", "png"],
)
def test_bad_volumes_get_errors_naming_the_file(tmp_path, make, match):
    with pytest.raises(PhotonError, match=match):
        load_media(make(tmp_path), kind="volume", size=[8, 8, 8], crop=None)


def test_single_dicom_slice_is_not_a_volume(tmp_path):
    folder = dicom_series(tmp_path / "one", n_slices=1, marker_slice=0)
    with pytest.raises(PhotonError, match=r"one: holds one DICOM slice \(slice_000.dcm\), a 2D image; a volume needs a series"):
        load_media(folder, kind="volume")
    with pytest.raises(PhotonError, match="a single DICOM file"):
        load_media(next(folder.iterdir()), kind="volume")


def test_unknown_options_and_bad_values_are_named():
    with pytest.raises(PhotonError, match="unknown option.*sise"):
        ct.load_ct("x.nii.gz", sise=[1, 2, 3])
    with pytest.raises(PhotonError, match="axcodes"):
        ct.check_config(ct.CTConfig(axcodes=["L", "R", "S"]), "test")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


def _nifti(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), path)
    return path


def _truncated(folder):
    whole = _nifti(folder / "whole.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 32)))
    data = gzip.decompress(whole.read_bytes())
    cut = folder / "cut.nii.gz"
    cut.write_bytes(gzip.compress(data[: len(data) // 2]))
    return cut


def test_a_multi_frame_file_among_a_series_is_named(tmp_path):
    import pydicom

    folder = dicom_series(tmp_path / "enhanced", n_slices=2)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(str(first))
    pixels = ds.pixel_array
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([pixels] * 3).tobytes()
    ds.save_as(str(first), enforce_file_format=True)
    with pytest.raises(PhotonError, match=r"slice_000.dcm: a multi-frame DICOM \(3 frames\) among the single-frame files of .*enhanced; give the multi-frame file on its own"):
        load_media(folder, kind="volume")


def test_a_volume_with_an_all_zero_affine_is_one_clear_line(tmp_path, capsys):
    import nibabel as nib

    from photon.cli import main

    path = tmp_path / "zero.nii.gz"
    image = nib.Nifti1Image(np.full((8, 8, 8), -1000.0, dtype=np.float32), np.eye(4))
    image.header.set_qform(None, code=0)
    image.header.set_sform(np.zeros((4, 4)), code=1)  # a header written by a broken converter
    image.update_header = lambda: None  # keep it as written
    nib.save(image, path)
    assert not nib.load(path).affine[:3].any()
    with pytest.raises(PhotonError, match=r"zero.nii.gz: its affine \(voxel -> mm\) is singular \(all zero\)"):
        load_media(path, kind="volume")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its affine (voxel -> mm) is singular" in err
    # A batch reports the file and goes on (exit 1: some files failed), without a traceback.
    assert main(["preprocess", str(path), "--out", str(tmp_path / "pre")]) == 1
    captured = capsys.readouterr()
    assert "its affine (voxel -> mm) is singular" in captured.out + captured.err and "Traceback" not in captured.err
