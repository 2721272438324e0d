"""Volumes as users hold them, each written by an independent writer: SimpleITK (MetaImage, NRRD,
and its own NIfTI), highdicom (enhanced multi-frame CT), pydicom (series, zipped), numpy (.npy/.npz),
MONAI (MetaTensors and the recipe as a Compose)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from photon.core.errors import PhotonError
from photon.modalities.base import choose_loader, load_media
from photon.modalities.volumes import read_volume
from tests.make_media import (
    ITK_DIRECTIONS,
    centroid_fractions,
    dicom_series,
    enhanced_ct,
    expected_model_fractions,
    itk_phantom,
)

sitk = pytest.importorskip("SimpleITK")
AS_STORED = dict(preprocess=False, size=None)  # the stored grid, so the marker's place is exact


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("layout", sorted(ITK_DIRECTIONS))
def test_itk_formats_load_like_the_nifti_of_the_same_volume(tmp_path, layout):
    image = itk_phantom(ITK_DIRECTIONS[layout])
    paths = {}
    for suffix in (".mha", ".nrrd", ".nhdr", ".mhd", ".nii.gz"):
        paths[suffix] = tmp_path / f"ct_{suffix.strip('.').replace('.', '_')}{suffix}"
        sitk.WriteImage(image, str(paths[suffix]))  # ITK's NIfTI writer turns LPS into the header's RAS
    frames = {suffix: load_media(path, **AS_STORED) for suffix, path in paths.items()}
    reference = frames[".nii.gz"]  # read by nibabel
    for suffix, media in frames.items():
        assert media.kind == "volume"
        np.testing.assert_array_equal(media.frames, reference.frames, err_msg=suffix)
        assert media.meta["spacing"] == reference.meta["spacing"]
    # The marker, placed by ITK's own index -> point, lands where the model-input convention says.
    tolerance = 0.05 if layout == "oblique" else 0.03
    np.testing.assert_allclose(centroid_fractions(reference.frames), expected_model_fractions(), atol=tolerance)
    assert frames[".mha"].meta["format"] == "metaimage" and frames[".nrrd"].meta["format"] == "nrrd"


def test_an_mha_equals_the_nifti_nibabel_writes_of_the_same_phantom(tmp_path):
    import nibabel as nib

    from tests.make_media import AFFINE_DIRECTIONS, phantom

    # The same physical volume written both ways: ITK's geometry (LPS) and nibabel's (RAS).
    sitk.WriteImage(itk_phantom(ITK_DIRECTIONS["RAS"], spacing=(2.0, 2.0, 2.0)), str(tmp_path / "itk.mha"))
    nib.save(phantom(AFFINE_DIRECTIONS["RAS"], spacing=2.0), tmp_path / "nibabel.nii.gz")
    from_itk = load_media(tmp_path / "itk.mha", **AS_STORED)
    from_nibabel = load_media(tmp_path / "nibabel.nii.gz", **AS_STORED)
    np.testing.assert_array_equal(from_itk.frames, from_nibabel.frames)
    assert from_itk.meta["axcodes"] == from_nibabel.meta["axcodes"] == ["R", "A", "S"]
    np.testing.assert_allclose(read_volume(tmp_path / "itk.mha").affine, read_volume(tmp_path / "nibabel.nii.gz").affine, atol=1e-6)


def test_itk_formats_go_through_the_whole_recipe_like_nifti(tmp_path):
    image = itk_phantom(ITK_DIRECTIONS["PIR"])
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    options = dict(size=[20, 28, 28])
    np.testing.assert_array_equal(load_media(tmp_path / "ct.mha", **options).frames,
                                  load_media(tmp_path / "ct.nii.gz", **options).frames)


def test_anything_else_simpleitk_reads_is_a_volume(tmp_path):
    image = itk_phantom(ITK_DIRECTIONS["LPS"])
    path = tmp_path / "ct.gipl"  # not a suffix anyone would try first
    sitk.WriteImage(image, str(path))
    assert choose_loader(path)[0] == choose_loader(path, "video")[0] == "ct"  # `videos` in records name volumes too
    sitk.WriteImage(image, str(tmp_path / "ref.nii.gz"))
    np.testing.assert_array_equal(load_media(path, **AS_STORED).frames, load_media(tmp_path / "ref.nii.gz", **AS_STORED).frames)


def test_a_truncated_metaimage_is_one_line(tmp_path):
    path = tmp_path / "cut.mha"
    sitk.WriteImage(itk_phantom(ITK_DIRECTIONS["LPS"]), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PhotonError) as caught:
        load_media(path)
    assert one_line(caught).startswith(f"{path}: ")
    assert "truncated or corrupt" in str(caught.value) or "not a readable" in str(caught.value)


def test_a_detached_nrrd_header_without_its_data_file_names_both(tmp_path):
    header = tmp_path / "ct.nhdr"
    sitk.WriteImage(itk_phantom(ITK_DIRECTIONS["LPS"]), str(header))
    data_files = [p for p in tmp_path.iterdir() if p != header]
    assert data_files, "SimpleITK wrote the data beside the header"
    for p in data_files:
        p.unlink()
    with pytest.raises(PhotonError) as caught:
        load_media(header)
    message = one_line(caught)
    assert message.startswith(f"{header}: its header names the data file {data_files[0].name!r}, which does not exist")


def test_a_vector_image_is_refused(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(PhotonError, match=r"rgb.mha: 3 components per voxel"):
        load_media(path)


# -- DICOM: enhanced multi-frame, zipped series ------------------------------------------------
def test_an_enhanced_multiframe_ct_equals_its_series(tmp_path):
    series = dicom_series(tmp_path / "series", n_slices=4)
    enhanced = enhanced_ct(series, tmp_path / "enhanced.dcm")
    name, _ = choose_loader(enhanced)
    assert name == "ct"  # a DICOM file, but a volume: not the frames loader
    from_series = load_media(series, kind="volume", **AS_STORED)
    from_file = load_media(enhanced, **AS_STORED)
    np.testing.assert_array_equal(from_file.frames, from_series.frames)
    assert from_file.meta["spacing"] == pytest.approx(from_series.meta["spacing"])
    assert from_file.meta["hu_range"] == from_series.meta["hu_range"]  # rescale from the functional groups
    assert from_file.meta["format"] == "dicom-multiframe"
    # alone in a folder, it is read the same
    (tmp_path / "alone").mkdir()
    enhanced.rename(tmp_path / "alone" / "enhanced.dcm")
    np.testing.assert_array_equal(load_media(tmp_path / "alone", kind="volume", **AS_STORED).frames, from_series.frames)


def test_a_multiframe_dicom_without_positions_is_one_line(tmp_path):
    import pydicom

    series = dicom_series(tmp_path / "series", n_slices=3)
    path = enhanced_ct(series, tmp_path / "enhanced.dcm")
    ds = pydicom.dcmread(str(path))
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.PlanePositionSequence
    ds.save_as(str(path))
    with pytest.raises(PhotonError) as caught:
        read_volume(path)
    assert one_line(caught).startswith(f"{path} frame 1: no ImagePositionPatient")


def test_a_zipped_series_equals_the_folder_and_refuses_escaping_members(tmp_path):
    series = dicom_series(tmp_path / "series", n_slices=4)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in series.iterdir():
            out.write(file, f"patient/CT/{file.name}")
    assert choose_loader(archive)[0] == "ct"
    np.testing.assert_array_equal(load_media(archive, **AS_STORED).frames, load_media(series, kind="volume", **AS_STORED).frames)
    assert "zip" in load_media(archive, **AS_STORED).meta["format"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as out:
        out.writestr("../outside.dcm", b"x")
    with pytest.raises(PhotonError, match=r"evil.zip: member '../outside.dcm' would unpack outside"):
        load_media(evil)
    assert not (tmp_path / "outside.dcm").exists()
    (tmp_path / "empty.zip").write_bytes((tmp_path / "study.zip").read_bytes()[:100])
    with pytest.raises(PhotonError) as caught:
        load_media(tmp_path / "empty.zip")
    assert one_line(caught).startswith(f"{tmp_path / 'empty.zip'}: ")


# -- arrays without geometry ---------------------------------------------------------------
def marked_array(shape=(16, 24, 32)) -> np.ndarray:
    """(D, H, W) in [0, 1]: a bright block in the superior, anterior, patient-right corner."""
    array = np.zeros(shape, dtype=np.float32)
    d, h, w = shape
    array[-4:, :4, -6:] = 1.0
    array[d // 2, h // 2, w // 2] = 0.5
    return array


def test_an_m3d_style_npy_is_read_in_the_documented_convention(tmp_path):
    array = marked_array()
    path = tmp_path / "ct_m3d.npy"
    np.save(path, array[None])  # M3D: 1 x D x H x W in [0, 1]
    media = load_media(path, size=None)
    np.testing.assert_allclose(media.frames[:, 0], array, atol=1e-6)  # axes kept as (D, H, W), no flip
    assert "intensity in [0, 1] read as HU -1000..1000" in media.meta["assumed"]
    resized = load_media(path)  # the default model size
    assert resized.frames.shape == (140, 1, 280, 280)
    fractions = centroid_fractions(resized.frames)
    assert fractions[0] > 0.5 and fractions[1] < 0.5 and fractions[2] > 0.5  # superior, anterior, right


def test_a_hu_npy_with_spacing_runs_the_recipe_and_equals_its_nifti(tmp_path):
    import nibabel as nib

    from photon.modalities.ct import MODEL_AXCODES, canonical_volume

    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.where(marked_array() > 0, 400, -1000).astype(np.int16).transpose(2, 1, 0)[::-1],
                             np.diag([-2.0, -2.0, 2.0, 1.0])), source)
    assert "".join(read_volume(source).axcodes) == "".join(MODEL_AXCODES)
    # The model-input array of that NIfTI, in HU, saved as numpy would hold it.
    hu = canonical_volume(source, preprocess=False).data.transpose(2, 1, 0)[:, :, ::-1]
    np.save(tmp_path / "ct.npy", hu)
    options = dict(crop=[40, 48, 64], size=None)
    from_array = load_media(tmp_path / "ct.npy", array_spacing=[2, 2, 2], **options)
    from_nifti = load_media(source, **options)
    np.testing.assert_array_equal(from_array.frames, from_nifti.frames)
    assert from_array.meta["preprocessed_spacing"] == [1.0, 1.0, 1.0]


def test_npz_arrays_and_bad_ranks_are_one_line_errors(tmp_path):
    array = marked_array()
    np.savez(tmp_path / "two.npz", image=array, label=(array > 0).astype(np.uint8))
    with pytest.raises(PhotonError, match=r"two.npz: holds several arrays \(image, label\); choose one with --media ct.array_key=NAME"):
        load_media(tmp_path / "two.npz")
    chosen = load_media(tmp_path / "two.npz", array_key="image", size=None)
    np.testing.assert_allclose(chosen.frames[:, 0], array, atol=1e-6)
    for name, bad, expected in [("flat.npy", array[0], "is a 2D image"), ("five.npy", array[None, None], "is a rank-5 array"),
                                ("chans.npy", np.stack([array] * 3), "is a rank-4 array")]:
        np.save(tmp_path / name, bad)
        with pytest.raises(PhotonError) as caught:
            load_media(tmp_path / name)
        assert one_line(caught).startswith(f"{tmp_path / name}: shape {tuple(bad.shape)} {expected}; expected a volume shaped (D, H, W)")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "flat.npy").read_bytes()[:60])
    with pytest.raises(PhotonError) as caught:
        load_media(tmp_path / "cut.npy")
    assert one_line(caught).startswith(f"{tmp_path / 'cut.npy'}: not a readable .npy array")


def test_photon_inspect_says_what_it_assumed_for_an_array(tmp_path, capsys):
    from photon.cli import main

    np.save(tmp_path / "ct.npy", marked_array()[None])
    assert main(["inspect", str(tmp_path / "ct.npy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modality"] == "ct" and report["prepared"] is True
    assert "axes (D, H, W) = inferior->superior, anterior->posterior, patient-left->patient-right" in report["assumed"]
    assert "spacing unknown" in report["assumed"]
    assert main(["inspect", str(tmp_path / "ct.npy")]) == 0
    assert "assumed" in capsys.readouterr().out


# -- windows as channels ---------------------------------------------------------------------
def test_three_hu_windows_fill_the_rgb_channels(tmp_path):
    import nibabel as nib

    from photon.modalities.ct import WINDOW_PRESETS

    hu = np.full((8, 8, 8), -1000, dtype=np.int16)
    hu[2:6, 2:6, 2:6] = 40  # soft tissue
    hu[3:5, 3:5, 3:5] = 700  # bone
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii.gz")
    options = dict(preprocess=False, size=None)
    media = load_media(tmp_path / "ct.nii.gz", windows=["lung", "mediastinum", "bone"], **options)
    assert media.frames.shape == (8, 3, 8, 8)
    for channel, name in enumerate(("lung", "mediastinum", "bone")):
        low, high = WINDOW_PRESETS[name]
        for value in (-1000, 40, 700):
            expected = np.clip((value - low) / (high - low), 0, 1)
            assert np.any(np.isclose(media.frames[:, channel], expected, atol=1e-6)), (name, value)
    grey = load_media(tmp_path / "ct.nii.gz", **options)
    assert grey.frames.shape == (8, 1, 8, 8)
    custom = load_media(tmp_path / "ct.nii.gz", windows=[[-100, 100]], **options)
    assert custom.frames.shape == (8, 1, 8, 8) and custom.frames.max() == 1.0 and 0 < np.median(custom.frames[custom.frames > 0]) < 1
    for bad, expected in [(["lung", "bone"], "2 windows"), (["lungs", "a", "b"], "window 'lungs' is not a preset"),
                          ([[100, -100], "bone", "lung"], "must have low < high")]:
        with pytest.raises(PhotonError, match=expected):
            load_media(tmp_path / "ct.nii.gz", windows=bad, **options)


def test_window_channels_pack_for_the_stock_embedding_and_are_refused_by_the_3d_one(tmp_path):
    import nibabel as nib

    from photon.adapters.qwen_inputs import VisualGeometry, pack_media

    hu = np.random.default_rng(0).integers(-1000, 1000, size=(28, 28, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "ct.nii.gz")
    media = load_media(tmp_path / "ct.nii.gz", windows=["lung", "mediastinum", "bone"], preprocess=False, size=None)
    packed = pack_media(media, VisualGeometry(in_channels=3))
    assert packed.pixel_values.shape[-1] == 3 * 2 * 14 * 14
    with pytest.raises(PhotonError, match=r"3 HU-window channels \(ct.windows\) for a backbone whose 3D patch embedding takes one grey channel"):
        pack_media(media, VisualGeometry(in_channels=1, temporal_patch_size=4))


# -- MONAI both ways ------------------------------------------------------------------------
def test_the_monai_recipe_equals_photon_preprocess_on_real_files(tmp_path):
    pytest.importorskip("monai")
    import nibabel as nib
    from nibabel.testing import data_path

    from photon.cli import main
    from photon.modalities.monai_bridge import ct_recipe, volume_from_metatensor

    sitk.WriteImage(itk_phantom(ITK_DIRECTIONS["PIR"]), str(tmp_path / "phantom.mha"))
    series = dicom_series(tmp_path / "series", n_slices=4)
    cases = [(Path(data_path) / "anatomical.nii", ["--calibration", "none", "--no-clip", "--crop", "40", "50", "33"],
              dict(calibration="none", hu_range=None, crop=[40, 50, 33])),
             (tmp_path / "phantom.mha", ["--crop", "81", "64", "47"], dict(crop=[81, 64, 47])),
             (series, ["--crop", "96", "96", "12"], dict(crop=[96, 96, 12]))]
    for n, (source, flags, options) in enumerate(cases):
        out = tmp_path / f"out{n}"
        assert main(["preprocess", str(source), "--out", str(out), *flags]) == 0
        written = next(out.glob("*.nii.gz"))
        expected = nib.load(written)
        result = volume_from_metatensor(ct_recipe(**options)(str(source)))
        data = result.data if options.get("hu_range", 1) is None else np.round(result.data)
        np.testing.assert_array_equal(data, expected.get_fdata(), err_msg=str(source))
        np.testing.assert_allclose(result.affine, expected.affine, atol=1e-4)


def test_metatensors_are_asked_and_inferred_like_the_file(tmp_path):
    pytest.importorskip("monai")
    from monai.transforms import LoadImage

    from photon.inference import ask, infer
    from photon.opening import OpenRequest, open_model

    sitk.WriteImage(itk_phantom(ITK_DIRECTIONS["PIR"]), str(tmp_path / "ct.nii.gz"))
    tensor = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "ct.nii.gz"))
    loaded = open_model(OpenRequest("qwen2.5-vl-tiny")).loaded
    from_file = ask(loaded, tmp_path / "ct.nii.gz", "Is there a lesion?", max_new_tokens=3)
    from_tensor = ask(loaded, tensor, "Is there a lesion?", max_new_tokens=3)
    np.testing.assert_array_equal(from_tensor.media[0].frames, from_file.media[0].frames)
    assert from_tensor.result.answer == from_file.result.answer
    assert from_tensor.result.n_kept == from_file.result.n_kept
    # its affine is honoured: the same voxels with the axes flipped in the affine load differently
    flipped = tensor.clone()
    flipped.affine = tensor.affine @ torch_flip(tensor.shape[1])
    assert not np.array_equal(ask(loaded, flipped, "Is there a lesion?", max_new_tokens=1).media[0].frames,
                              from_file.media[0].frames)
    records = [{"id": "a", "messages": [{"role": "user", "content": "<video>Is there a lesion?"}], "videos": [tensor]}]
    outcome = infer(loaded, records, tmp_path / "preds.jsonl", max_new_tokens=3, progress=False)
    assert outcome.written == 1
    row = json.loads((tmp_path / "preds.jsonl").read_text())
    assert row["answer"] == from_file.result.answer and row["record"].startswith("sha256:")
    again = infer(loaded, records, tmp_path / "preds.jsonl", max_new_tokens=3, progress=False)
    assert again.written == 0 and again.resumed == 1  # the tensor's digest is stable


def torch_flip(n: int):
    import torch

    flip = torch.eye(4, dtype=torch.float64)
    flip[0, 0], flip[0, 3] = -1.0, n - 1
    return flip
