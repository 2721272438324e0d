"""Images, frame sets, DICOM slices and video: Qwen's resize rule, sampling, timestamps, bad files."""

import importlib.util
import itertools

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from photon.core.errors import PhotonError
from photon.modalities import video
from photon.modalities.base import load_media
from photon.modalities.config import VideoConfig
from photon.modalities.frames import load_frames
from photon.modalities.resize import smart_resize
from tests.make_media import write_image, write_mp4

HAS_DECORD = importlib.util.find_spec("decord") is not None


def test_smart_resize_matches_transformers_qwen2_vl_rule():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    sides = [1, 13, 27, 28, 29, 41, 56, 100, 223, 224, 333, 480, 512, 640, 1000, 1920, 4000]
    bounds = [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28), (32 * 32, 32 * 32 * 64)]
    checked = 0
    for (height, width), factor, (low, high) in itertools.product(itertools.product(sides, sides), (28, 32), bounds):
        if max(height, width) / min(height, width) > 200:
            continue
        assert smart_resize(height, width, factor, low, high) == reference(height, width, factor, low, high), (height, width, factor)
        checked += 1
    assert checked > 1000


def test_smart_resize_refuses_needle_images():
    with pytest.raises(PhotonError, match="more elongated than 200"):
        smart_resize(10, 2500)


def test_single_image_keeps_colour_and_lands_on_the_grid(tmp_path):
    media = load_media(write_image(tmp_path / "x.png", size=(60, 90)))
    assert media.kind == "image" and media.frames.shape == (1, 3, 56, 84)
    left, right = media.frames[0, :, :, :30], media.frames[0, :, :, -30:]
    np.testing.assert_allclose(left.mean(axis=(1, 2)), [1.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(right.mean(axis=(1, 2)), [128 / 255] * 3, atol=0.02)
    assert media.frames.min() >= 0 and media.frames.max() <= 1


def test_frame_set_shares_one_size_from_its_largest_frame_on_a_32_grid(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for n, size in enumerate([(60, 90), (120, 200), (64, 64)]):
        write_image(folder / f"frame_{n}.jpg", size=size, mode="RGB" if n else "L")
    media = load_frames(folder, factor=32, min_pixels=32 * 32, max_pixels=32 * 32 * 64)
    assert media.frames.shape == (3, 3, 128, 192)  # smart_resize(120, 200) on a 32 grid
    assert media.meta["original_sizes"] == [[60, 90], [120, 200], [64, 64]]
    grey = load_frames([folder / "frame_0.jpg"], channels=1)
    assert grey.frames.shape[1] == 1


def test_single_dicom_slice_is_an_image_in_unit_range():
    media = load_media(get_testdata_file("CT_small.dcm"))
    assert media.kind == "image" and media.frames.shape == (1, 3, 140, 140)
    assert media.frames.min() == 0.0 and media.frames.max() == 1.0
    windowed = load_media(get_testdata_file("CT_small.dcm"), window=[-160, 240], channels=1)
    assert windowed.frames.shape == (1, 1, 140, 140)
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (np.clip(hu, -160, 240) + 160) / 400  # the soft-tissue window mapped to [0, 1]
    assert 0 < (expected == 0).mean() < 1 and 0 < (expected == 1).mean() < 1  # the window clips on both sides here
    # Resized from 128 x 128 to Qwen's grid: compare the image's mean and the clipped share, which resizing keeps.
    frame = windowed.frames[0, 0]
    assert abs(float(frame.mean()) - float(expected.mean())) < 0.02
    assert abs(float((frame <= 0.001).mean()) - float((expected == 0).mean())) < 0.05


def test_truncated_image_is_named(tmp_path):
    whole = write_image(tmp_path / "whole.png", size=(200, 200))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(PhotonError, match="cut.png: not a readable image"):
        load_media(cut)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", n_frames=25, fps=10)


@pytest.mark.parametrize("backend", ["pyav", pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="needs decord"))])
def test_video_is_sampled_uniformly_with_timestamps(mp4, backend):
    media = load_media(mp4, backend=backend, fps=4.0)
    # 2.5 s at 4 fps -> 10 frames spread over frames 0..24
    assert media.meta["indices"] == np.linspace(0, 24, 10).round().astype(int).tolist()
    assert media.meta["timestamps"] == [i / 10 for i in media.meta["indices"]]
    assert media.fps == pytest.approx(4.0) and media.kind == "video" and media.meta["backend"] == backend
    assert media.frames.shape[0] == 10 and media.frames.shape[2] % 28 == 0 and media.frames.shape[3] % 28 == 0
    level = media.frames.mean(axis=(1, 2, 3)) * 255
    np.testing.assert_allclose(level, 10 * np.array(media.meta["indices"]), atol=3)  # each frame is the one asked for


def test_video_frame_count_rule():
    info = video.VideoInfo(frames=25, fps=10.0, height=48, width=64)
    assert video.sample_count(info, VideoConfig(fps=2.0)) == 4  # 5 -> a multiple of 2
    assert video.sample_count(info, VideoConfig(fps=0.1)) == 4  # at least min_frames
    assert video.sample_count(info, VideoConfig(fps=30.0)) == 24  # at most the 25 frames it has, even
    assert video.sample_count(info, VideoConfig(fps=30.0, max_frames=6)) == 6


def test_video_model_shape_matches_the_loaded_frames(mp4):
    facts = video.describe_video(mp4)
    assert facts["frames"] == 25 and facts["fps"] == 10.0 and facts["size"] == [48, 64]
    options = {"fps": 3.0, "factor": 32, "min_pixels": 64 * 64, "max_pixels": 32 * 32 * 16}
    assert video.model_shape(facts, **options) == load_media(mp4, **options).frames.shape


def test_not_a_video_is_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(PhotonError, match="bad.mp4: not a readable video"):
        load_media(bad, backend="pyav")
