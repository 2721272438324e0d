"""A wrapped model saved as a Photon checkpoint folder loads back to the same model."""

import pytest
import torch
import yaml

import photon
from photon.adapters.qwen2_5_vl import load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core import checkpoint
from photon.core.errors import PhotonError

from tests.conftest import video_sample


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


def _logits(loaded, sample):
    batch = loaded.encoder.collate([loaded.encoder.encode(sample, train=False)])
    with torch.no_grad():
        return loaded.model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits


def test_attach_save_writes_a_folder_every_loader_rebuilds(tmp_path):
    from photon.adapters.qwen3_vl import load_tiny as load_qwen3_tiny
    from photon.cli import main

    folder = tmp_path / "wrapped"
    assert main(["attach", "--backbone", "qwen3-vl-tiny", "--layer", "2", "--keep-ratio", "0.3", "--save", str(folder)]) == 0
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    assert meta["backbone"] == "qwen3-vl-tiny" and meta["adapter"] == "qwen3-vl" and meta["layer"] == 2
    assert meta["mode"] == "zero_shot" and meta["rule"] == "keep_ratio=0.3"
    assert {"photon", "transformers"} <= set(meta["versions"])
    assert meta["photon"]["schedule"]["hard_start"] == 8000 and meta["photon"]["loss"]["band_high"] == 0.8
    assert meta["photon"]["sgp"]["beta"] == 0.8 and meta["photon"]["selection"]["tau"] == 0.2
    assert (folder / "photon.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    reference = load_qwen3_tiny()
    photon.attach(reference.model, mode="zero_shot", layer=2, keep_ratio=0.3)
    again = photon.load(str(folder))
    sample = video_sample(0, 4, 64, 96, "Is there a lesion on the left?")
    assert torch.equal(_logits(reference, sample), _logits(again, sample))
    assert photon.last_selection(again.model) == photon.last_selection(reference.model)
    assert again.model._photon.layer == 2
    # The folder's weights are what loads, not the seeded backbone its photon.yaml names.
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    key = "model.language_model.norm.weight"
    state[key] = state[key] * 3.0
    save_file(state, str(weights), metadata={"format": "pt"})
    changed = photon.load(str(folder))
    with torch.no_grad():
        reference.model.model.language_model.norm.weight.mul_(3.0)
    assert not torch.equal(_logits(changed, sample), _logits(load_qwen3_tiny_attached(), sample))
    assert torch.equal(_logits(changed, sample), _logits(reference, sample))


def load_qwen3_tiny_attached():
    from photon.adapters.qwen3_vl import load_tiny as load_qwen3_tiny

    seeded = load_qwen3_tiny()
    photon.attach(seeded.model, mode="zero_shot", layer=2, keep_ratio=0.3)
    return seeded


def test_the_3d_patch_embedding_is_saved_and_restored(tmp_path):
    loaded = load_tiny(volume_embedding="random", seed=3)
    photon.attach(loaded.model, mode="zero_shot")
    volume = video_sample(0, 28, 56, 56, "Which side holds the lesion?", channels=1)
    volume.media[0].kind = "volume"
    before = _logits(loaded, volume)
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "w", backbone="qwen2.5-vl-tiny")
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    assert meta["visual"] == {"in_channels": 1, "temporal_patch_size": 14, "patch_size": 14}
    again = photon.load(str(folder))
    embed = again.model.model.visual.patch_embed.proj.weight
    assert embed.shape[1:] == (1, 14, 14, 14)
    assert torch.equal(embed, loaded.model.model.visual.patch_embed.proj.weight)
    assert again.encoder.geometry.in_channels == 1 and again.encoder.geometry.temporal_patch_size == 14
    assert torch.equal(before, _logits(again, volume))


def test_link_points_at_the_source_weights_instead_of_copying(tmp_path):
    from photon.cli import main

    source = tmp_path / "hf"
    plain = load_tiny()
    plain.model.save_pretrained(source)
    plain.encoder.tokenizer.save_pretrained(source)
    (source / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}')
    folder = tmp_path / "linked"
    assert main(["attach", "--backbone", str(source), "--save", str(folder), "--link"]) == 0
    shard = folder / "model.safetensors"
    assert shard.is_symlink() and shard.resolve() == (source / "model.safetensors").resolve()
    assert (folder / "preprocessor_config.json").read_text() == (source / "preprocessor_config.json").read_text()
    assert (folder / "photon.yaml").is_file() and (folder / "config.json").is_file()
    linked, direct = photon.load(str(folder)), photon.load(str(source))
    assert linked.encoder.geometry.mean == (0.5, 0.5, 0.5)
    sample = video_sample(1, 2, 56, 56, "How many lesions are there?")
    assert torch.equal(_logits(linked, sample), _logits(direct, sample))


def test_save_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    from photon.cli import main

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    assert main(["attach", "--backbone", "qwen2.5-vl-tiny", "--save", str(tmp_path / "data")]) == 2
    assert "is not a Photon checkpoint folder" in capsys.readouterr().err
    assert (tmp_path / "data" / "notes.txt").read_text() == "keep me"


def test_a_folder_from_another_transformers_release_is_named_before_loading(tmp_path):
    loaded = load_tiny()
    photon.attach(loaded.model, mode="zero_shot")
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "w", backbone="qwen2.5-vl-tiny")
    meta = yaml.safe_load((folder / "photon.yaml").read_text())
    meta["versions"]["transformers"] = "4.51.3"
    (folder / "photon.yaml").write_text(yaml.safe_dump(meta))
    import re

    import transformers

    with pytest.warns(UserWarning, match=f"written with transformers 4.51.3, this is {re.escape(transformers.__version__)}"):
        checkpoint.read_meta(folder)
    # A release inside the tested range reads the same names: no warning.
    meta["versions"]["transformers"] = "5.16.1"
    (folder / "photon.yaml").write_text(yaml.safe_dump(meta))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.read_meta(folder)
