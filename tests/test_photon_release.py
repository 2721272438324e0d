"""The Photon 3D patch embedding and folders laid out exactly as the authors' Photon-S1/S2 release
writes them (tests/hub_layouts.py: `visual.vision_patch_embed`, `atp.predictor`, 4.4x config)."""

import json

import numpy as np
import pytest
import torch

import photon
from photon.adapters.qwen2_5_vl import inflate_rgb_kernel, install_volume_embedding, load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core.api import runtime_of
from photon.core.errors import PhotonError
from photon.modalities.base import Media

from tests.conftest import Sample
from tests.hub_layouts import write_photon_release_folder
from tests.reference import reference_greedy


def test_inflated_kernel_answers_a_constant_volume_like_the_rgb_kernel():
    torch.manual_seed(0)
    rgb = torch.randn(5, 3, 2, 14, 14)
    grey = inflate_rgb_kernel(rgb, 14)
    assert grey.shape == (5, 1, 14, 14, 14)
    constant_clip = torch.full((1, 3, 2, 14, 14), 0.7)
    constant_volume = torch.full((1, 1, 14, 14, 14), 0.7)
    torch.testing.assert_close(
        torch.nn.functional.conv3d(constant_volume, grey), torch.nn.functional.conv3d(constant_clip, rgb), rtol=1e-5, atol=1e-5
    )


def test_volume_embedding_gives_the_spec_token_count():
    loaded = load_tiny(volume_embedding="inflate")
    model = loaded.model
    assert model.model.visual.patch_embed.proj.weight.shape[1:] == (1, 14, 14, 14)
    assert model.config.vision_config.in_channels == 1
    volume = Media(frames=np.random.default_rng(0).random((28, 1, 112, 112), dtype=np.float32), kind="volume", source="ct", fps=1.0)
    sample = Sample("ct", [{"role": "user", "content": "<video>Is there a lesion?"}], [volume])
    batch = loaded.encoder.collate([loaded.encoder.encode(sample, train=False)])
    assert batch["video_grid_thw"].tolist() == [[2, 8, 8]]
    photon.attach(model, mode="zero_shot")
    with torch.no_grad():
        out = model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"})
    record = photon.last_selection(model)[0]
    assert record["n_visual"] == 2 * 4 * 4 and 0 < record["n_kept"] < 32
    assert torch.isfinite(out.logits).all()
    with pytest.raises(PhotonError, match="must be 'inflate' or 'random'"):
        install_volume_embedding(load_tiny().model, init="zeros")


def _volume_batch(loaded, question="Which side holds the lesion?", seed=1):
    volume = Media(frames=np.random.default_rng(seed).random((28, 1, 56, 56), dtype=np.float32), kind="volume", source="ct", fps=1.0)
    sample = Sample("ct", [{"role": "user", "content": "<video>" + question}], [volume])
    batch = loaded.encoder.collate([loaded.encoder.encode(sample, train=False)])
    return {k: v for k, v in model_inputs(batch).items() if k != "labels"}


def test_a_release_s2_folder_loads_its_3d_kernel_and_predictor_bit_for_bit(tmp_path):
    written, predictor = write_photon_release_folder(tmp_path, stage="S2", layer=1)
    loaded = photon.load(str(tmp_path))
    model = loaded.model
    kernel = model.model.visual.patch_embed.proj.weight
    assert kernel.shape == (32, 1, 14, 14, 14) and model.model.visual.patch_embed.proj.bias is None
    assert torch.equal(kernel, written.model.visual.patch_embed.proj.weight)  # the file's kernel, not a random one
    assert model._photon.config.mode == "trained" and model._photon.layer == 1
    state = model.photon_pruner.predictor.state_dict()
    for name, value in predictor.items():
        assert torch.equal(state[name], value.float())


def test_a_release_folder_without_its_kernel_refuses_to_load_and_names_the_key(tmp_path):
    write_photon_release_folder(tmp_path, with_kernel=False)
    with pytest.raises(PhotonError, match=r"missing \(would be random\): model\.visual\.patch_embed\.proj\.weight"):
        photon.load(str(tmp_path))
    with pytest.warns(UserWarning, match="model.visual.patch_embed.proj.weight"):
        loaded = photon.load(str(tmp_path), allow_weight_mismatch=True)  # the explicit opt-out
    assert loaded.model.model.visual.patch_embed.proj.weight.shape[1:] == (1, 14, 14, 14)


def test_a_release_s2_folder_prunes_and_decodes_like_the_stock_layers(tmp_path):
    write_photon_release_folder(tmp_path, stage="S2", layer=1)
    loaded = photon.load(str(tmp_path), dtype=torch.float32)
    model = loaded.model
    inputs = _volume_batch(loaded)
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    record = photon.last_selection(model)[0]
    assert record["rule"] == "trained" and 0 < record["n_kept"] < record["n_visual"]
    keep = runtime_of(model).last.keep
    photon.detach(model)
    expected = reference_greedy(model, model.model.language_model, inputs, keep, 1, evict_all=True, max_new_tokens=4)
    assert torch.equal(tokens[:, -4:], expected)


def test_photon_s1_runs_unpruned_unless_pruning_is_asked_for(tmp_path):
    write_photon_release_folder(tmp_path, stage="S1")
    loaded = photon.load(str(tmp_path))
    model = loaded.model
    inputs = _volume_batch(loaded)
    with torch.no_grad():
        logits = model(**inputs).logits
    record = photon.last_selection(model)[0]
    assert record["rule"] == "keep=all" and record["n_kept"] == record["n_visual"] == 2 * 2 * 2
    photon.detach(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)  # exactly the stock forward
    zero_shot = photon.load(str(tmp_path), mode="zero_shot")
    with torch.no_grad():
        zero_shot.model(**inputs)
    record = photon.last_selection(zero_shot.model)[0]
    assert record["rule"] == "zero_shot:mean" and record["n_kept"] < record["n_visual"]
    by_ratio = photon.load(str(tmp_path), overrides={"keep_ratio": 0.5})
    with torch.no_grad():
        by_ratio.model(**inputs)
    assert photon.last_selection(by_ratio.model)[0]["n_kept"] == 4


def test_attach_describes_a_release_folder_with_its_3d_embedding_and_predictor(tmp_path, capsys):
    from photon.cli import main

    write_photon_release_folder(tmp_path / "s2", stage="S2", layer=1)
    assert main(["attach", "--backbone", str(tmp_path / "s2"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "trained" and summary["selection_layer"] == 1
    assert summary["added_parameters"]["3D patch embedding"] == 32 * 14**3
    assert summary["added_parameters"]["threshold predictor"] == 12 * 8 + 8 + 8 + 1


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(PhotonError, match="no config.json"):
        photon.load(str(tmp_path))
