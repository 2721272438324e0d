"""`photon inspect`: file facts, and per registered backbone the model input and visual tokens."""

import json
import types

import nibabel as nib
import pytest
from pydicom.data import get_testdata_file

from photon.adapters.base import BackboneSpec
from photon.cli import main
from photon.core import plugins
from photon.core.hookspecs import hookimpl
from photon.modalities.base import load_media
from photon.modalities.config import options_for_backbone
from tests.make_media import AFFINE_DIRECTIONS, phantom, write_image, write_mp4

PHOTON_3D = BackboneSpec(name="tiny-photon", family="qwen2.5-vl", source=None, description="test", load=lambda *a, **k: None,
                         temporal_patch_size=2, volume_input=(140, 280, 280), volume_patch=(14, 14, 14))
GRID_32 = BackboneSpec(name="tiny-grid32", family="qwen3-vl", source=None, description="test", load=lambda *a, **k: None,
                       patch_size=16, merge_size=2, temporal_patch_size=2)


@pytest.fixture()
def backbones():
    plugin = types.SimpleNamespace(register_backbones=hookimpl(lambda register: [register(s.name, s) for s in (PHOTON_3D, GRID_32)]))
    plugins.pm.register(plugin, name="throwaway-backbones")
    try:
        yield {s.name: s for s in (PHOTON_3D, GRID_32)}
    finally:
        plugins.pm.unregister(name="throwaway-backbones")


def _inspect(path, capsys, *extra):
    assert main(["inspect", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_volume_facts_and_tokens_per_backbone(tmp_path, capsys, backbones):
    path = tmp_path / "pir.nii.gz"
    nib.save(phantom(AFFINE_DIRECTIONS["PIR"], spacing=4.0), path)
    report = _inspect(path, capsys)
    assert report["modality"] == "ct" and report["axcodes"] == "PIR" and report["shape"] == [18, 15, 20]
    assert report["spacing"] == [4.0, 4.0, 4.0] and report["intensity_range"] == [-1000.0, 1000.0]
    rows = {row["backbone"]: row for row in report["backbones"]}
    # Photon's 3D embedding: 140x280x280 -> 10 x (20/2) x (20/2) = 1000 tokens (spec section 1)
    assert rows["tiny-photon"] == {"backbone": "tiny-photon", "input": "3d", "shape": [140, 1, 280, 280], "visual_tokens": 1000}
    # A 2D backbone on a 32 grid: H and W snap to 288; 70 x 9 x 9 tokens
    assert rows["tiny-grid32"] == {"backbone": "tiny-grid32", "input": "frames", "shape": [140, 1, 288, 288], "visual_tokens": 5670}


def test_reported_shapes_are_what_the_loaders_give(tmp_path, capsys, backbones):
    image = write_image(tmp_path / "x.png", size=(61, 95))
    clip = write_mp4(tmp_path / "clip.mp4", n_frames=25, fps=10)
    dicom = get_testdata_file("CT_small.dcm")
    for path in (image, clip, dicom):
        report = _inspect(path, capsys)
        assert {"tiny-photon", "tiny-grid32"} <= {row["backbone"] for row in report["backbones"]}
        for row in report["backbones"]:  # the throwaway ones and any built-in backbone
            spec = plugins.backbones()[row["backbone"]].obj
            frames = load_media(path, **options_for_backbone(spec)[report["modality"]]).frames
            assert row["shape"] == list(frames.shape), (path, row)
            assert frames.shape[2] % spec.grid_multiple == 0 and frames.shape[3] % spec.grid_multiple == 0


def test_human_readable_output(tmp_path, capsys, backbones):
    path = tmp_path / "las.nii.gz"
    nib.save(phantom(AFFINE_DIRECTIONS["LAS"], spacing=4.0), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "axcodes: LAS" in out and "spacing: [4.0, 4.0, 4.0]" in out
    assert "model input for tiny-photon: 3d 140 x 1 x 280 x 280 (T, C, H, W) -> 1000 visual tokens" in out


def test_without_backbones_inspect_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plugins, "backbones", dict)
    assert main(["inspect", str(write_image(tmp_path / "x.png"))]) == 0
    assert "no backbones registered" in capsys.readouterr().out


def test_inspect_records_is_a_dataset_pass_with_a_count(tmp_path, capsys):
    write_image(tmp_path / "a.png")
    lines = [{"id": "a", "benchmark": "slake", "messages": [{"role": "user", "content": "<image>?"}], "images": ["a.png"]},
             {"id": "b", "messages": [{"role": "user", "content": "?"}], "images": ["gone.png"]}]
    records = tmp_path / "r.jsonl"
    records.write_text("\n".join(json.dumps(line) for line in lines))
    assert main(["inspect", str(records)]) == 1
    captured = capsys.readouterr()
    assert "1 usable records, 1 skipped" in captured.out and "benchmarks: slake 1" in captured.out
    assert "r.jsonl:2: record b: missing media path" in captured.err
    assert main(["inspect", str(records), "--strict"]) == 2
    assert "strict" in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing.nii.gz")]) == 2
    assert "nothing.nii.gz: no such file or folder" in capsys.readouterr().err
