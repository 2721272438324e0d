"""A wrapped model saved as a Photon checkpoint folder loads back to the same model."""

import pytest
import torch
import yaml

import photon
from photon.adapters.qwen2_5_vl import load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core import checkpoint
from photon.core.errors import PhotonError

from conftest import video_sample


def _inputs(loaded):
    batch = loaded.encoder.collate([loaded.encoder.encode(video_sample(0, 4, 56, 84, "Is there a lesion on the left?"), train=False)])
    return {k: v for k, v in model_inputs(batch).items() if k != "labels"}


def test_round_trip_gives_identical_logits_and_selection(tmp_path):
    loaded = load_tiny(initializer_range=0.3)
    photon.attach(loaded.model, mode="trained", layer=2, tau=0.1)
    with torch.no_grad():  # a predictor that differs from its initialisation
        for p in loaded.model.photon_pruner.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        inputs = _inputs(loaded)
        before = loaded.model(**inputs).logits
    selection = photon.last_selection(loaded.model)
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "wrapped", backbone="qwen2.5-vl-tiny")
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    assert meta["layer"] == 2 and meta["mode"] == "trained" and meta["photon"]["selection"]["tau"] == 0.1
    assert set(meta["versions"]) == {"photon", "transformers", "torch"}
    again = photon.load(str(folder))
    with torch.no_grad():
        after = again.model(**_inputs(again)).logits
    assert torch.equal(before, after)
    assert photon.last_selection(again.model) == selection
    assert again.backbone == "qwen2.5-vl-tiny"


def test_a_folder_from_an_incompatible_version_says_so(tmp_path):
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot")
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "w", backbone="qwen2.5-vl-tiny")
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    meta["format"] = 99
    meta["versions"]["photon"] = "9.0.0"
    (folder / "photon.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(PhotonError, match="Photon 9.0.0 in checkpoint format 99"):
        photon.load(str(folder))


def test_photon_modules_for_another_width_are_refused_by_name(tmp_path):
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot")
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "w", backbone="qwen2.5-vl-tiny")
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    meta["hidden_size"] = 2048
    (folder / "photon.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(PhotonError, match="2048-wide LLM, but the backbone is 64 wide"):
        photon.load(str(folder))
