"""The Photon 3D patch embedding and loading folders laid out like the released Photon-S1/S2."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import photon
from photon.adapters.qwen2_5_vl import inflate_rgb_kernel, install_volume_embedding, load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core.errors import PhotonError
from photon.modalities.base import Media

from conftest import Sample


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


def _write_release_folder(folder, layer=1):
    """A folder with the layout of Photon-S1: transformers-4.51 keys and config names, plus `atp`."""
    model = load_tiny(volume_embedding="random").model
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to the embeddings
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        state[key] = value.contiguous()
    torch.manual_seed(3)
    predictor = {
        "mlp.0.weight": torch.randn(8, 12), "mlp.0.bias": torch.randn(8),
        "mlp.2.weight": torch.randn(1, 8), "mlp.2.bias": torch.tensor([0.5]),
    }
    for name, value in predictor.items():
        state[f"model.layers.{layer}.atp.predictor.{name}"] = value
    state[f"model.layers.{layer}.atp.pos_proj.weight"] = torch.randn(8, 8)  # present in the release, unused
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    flat = {**config.pop("text_config"), **config}  # 4.51 keeps text fields at the top level
    flat["vision_config"]["in_chans"] = flat["vision_config"].pop("in_channels")
    flat["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(flat))
    loaded = load_tiny()
    loaded.encoder.tokenizer.save_pretrained(folder)
    return model, predictor


def test_a_release_folder_loads_as_a_trained_photon_model(tmp_path):
    original, predictor = _write_release_folder(tmp_path, layer=1)
    loaded = photon.load(str(tmp_path))
    model = loaded.model
    assert model._photon.config.mode == "trained" and model._photon.layer == 1
    for name, value in predictor.items():
        torch.testing.assert_close(model.photon_pruner.predictor.state_dict()[name], value)
    assert model.model.visual.patch_embed.proj.weight.shape[1:] == (1, 14, 14, 14)
    torch.testing.assert_close(model.model.visual.patch_embed.proj.weight, original.model.visual.patch_embed.proj.weight)
    volume = Media(frames=np.random.default_rng(1).random((28, 1, 56, 56), dtype=np.float32), kind="volume", source="ct", fps=1.0)
    sample = Sample("ct", [{"role": "user", "content": "<video>Which side holds the lesion?"}], [volume])
    batch = loaded.encoder.collate([loaded.encoder.encode(sample, train=False)])
    with torch.no_grad():
        tokens = model.generate(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}, max_new_tokens=3, do_sample=False)
    record = photon.last_selection(model)[0]
    assert tokens.shape[1] == batch["input_ids"].shape[1] + 3
    assert record["rule"] == "trained" and 0.0 < record["theta"] < 0.9


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(PhotonError, match="no config.json"):
        photon.load(str(tmp_path))
