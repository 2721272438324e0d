"""Hub folders and hub ids load as from_pretrained would: the folder's chat template, its processor
limits, the Hugging Face cache, and one-line errors for folders that cannot work
(tests/hub_layouts.py writes the folders in the hub's own layout)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import photon
from photon.adapters.qwen_inputs import QwenEncoder, collapse_placeholders
from photon.adapters.tokenizer import qwen2_5_tokenizer
from photon.cli import main
from photon.core.errors import PhotonError
from photon.modalities.base import Media
from photon.wrapping import media_options

from tests.conftest import Sample
from tests.hub_layouts import official_template, write_photon_release_folder, write_qwen2_5_hub_folder, write_qwen3_hub_folder

ROOT = Path(__file__).resolve().parent.parent


def _media(kind, frames=2, side=56, seed=0):
    rng = np.random.default_rng(seed)
    return Media(frames=rng.random((frames, 3, side, side), dtype=np.float32), kind=kind, source=f"{kind}{seed}", fps=1.0)


CONVERSATIONS = [
    ("video, question after", [{"role": "user", "content": "<video>Is there a lesion?"}, {"role": "assistant", "content": "Yes."}], ["video"]),
    ("question before the media", [{"role": "user", "content": "What moves?<video>"}, {"role": "assistant", "content": "The heart."}], ["video"]),
    ("own system prompt", [{"role": "system", "content": "You read chest CT."}, {"role": "user", "content": "<image>Describe it."},
                           {"role": "assistant", "content": "A clear lung."}], ["image"]),
    ("image and video, two turns", [{"role": "user", "content": "<image><video>Compare them."}, {"role": "assistant", "content": "Same."},
                                    {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes, sure."}], ["image", "video"]),
]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("name,messages,kinds", CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_the_builtin_format_equals_the_official_template_token_for_token(family, name, messages, kinds):
    from photon.adapters import qwen2_5_vl, qwen3_vl

    loaded = (qwen2_5_vl if family == "qwen2.5-vl" else qwen3_vl).load_tiny()
    builtin = loaded.encoder
    templated = QwenEncoder(builtin.tokenizer, builtin.geometry, builtin.chat, builtin.instructions,
                            template=official_template(family))
    side = builtin.geometry.patch_size * builtin.geometry.merge_size
    media = [_media("image", frames=1, side=side, seed=1) if k == "image" else _media("video", frames=4, side=side, seed=2) for k in kinds]
    sample = Sample("c", messages, media)
    for train in (True, False):
        a, b = builtin.encode(sample, train=train), templated.encode(sample, train=train)
        assert a["prompt"] == b["prompt"]
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["labels"], b["labels"])
    labelled = templated.encode(sample, train=True)["labels"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    text = builtin.tokenizer.decode(labelled[labelled >= 0])
    assert text == "<|im_end|>".join(answers) + "<|im_end|>"


def test_a_template_with_another_system_prompt_changes_the_tokens_the_model_sees():
    tokenizer = qwen2_5_tokenizer()
    template = official_template("qwen2.5-vl").replace("You are a helpful assistant.", "You are a radiologist.")
    from photon.adapters.qwen2_5_vl import load_tiny

    geometry = load_tiny().encoder.geometry
    encoded = QwenEncoder(tokenizer, geometry, template=template).encode(
        Sample("s", [{"role": "user", "content": "<video>Any nodule?"}], [_media("video")]), train=False)
    assert encoded["prompt"].startswith("<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert collapse_placeholders(encoded["prompt"]).endswith(
        "<|vision_start|><|video_pad|>*4<|vision_end|>Any nodule?<|im_end|>\n<|im_start|>assistant\n")


def _png(path: Path, height: int, width: int) -> Path:
    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_a_qwen2_5_hub_folder_uses_its_template_and_processor_limits(tmp_path, capsys):
    folder = tmp_path / "Qwen2.5-VL-3B-Instruct"
    write_qwen2_5_hub_folder(folder, system_prompt="You are a careful radiologist.")
    image = _png(tmp_path / "scan.png", 2000, 2400)
    assert main(["attach", "--backbone", str(folder), "--input", str(image), "--question", "Any fracture?",
                 "--json", "--max-new-tokens", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_visual"] == 6106  # smart_resize with the folder's max_pixels 12845056: 71 x 86 tokens
    assert report["prompt"] == ("<|im_start|>system\nYou are a careful radiologist.<|im_end|>\n<|im_start|>user\n"
                                "<|vision_start|><|image_pad|>*6106<|vision_end|>Any fracture?<|im_end|>\n<|im_start|>assistant\n")
    # Photon's own limit is an explicit override.
    assert main(["attach", "--backbone", str(folder), "--input", str(image), "--question", "Any fracture?", "--json",
                 "--max-new-tokens", "1", "--media", f"frames.max_pixels={28 * 28 * 1280}"]) == 0
    assert json.loads(capsys.readouterr().out)["n_visual"] == 1248


def test_a_qwen3_hub_folder_uses_its_template_and_size_bounds(tmp_path):
    folder = tmp_path / "Qwen3-VL-2B-Instruct"
    write_qwen3_hub_folder(folder, system_prompt="You are a video analyst.")
    loaded = photon.load(str(folder))
    options = media_options(loaded)
    assert options["frames"]["min_pixels"] == 65536 and options["frames"]["max_pixels"] == 16777216
    assert options["video"]["total_pixels"] == 25165824 and options["frames"]["factor"] == 32
    from photon.modalities.frames import load_frames

    image = load_frames(_png(tmp_path / "scan.png", 2000, 2400), **options["frames"])
    encoded = loaded.encoder.encode(Sample("q", [{"role": "user", "content": "<image>Where?"}], [image]), train=False)
    n_tokens = int((encoded["input_ids"] == 151655).sum())
    assert n_tokens == (1984 // 32) * (2400 // 32)  # smart_resize within size.shortest/longest_edge, factor 32
    assert encoded["prompt"].startswith("<|im_start|>system\nYou are a video analyst.<|im_end|>\n")
    # Qwen3-VL's video budget covers all frames together: 64 frames of 448 x 448 shrink to fit it.
    from photon.modalities.resize import frame_pixel_bounds

    low, high = frame_pixel_bounds(options["video"]["min_pixels"], options["video"]["max_pixels"],
                                   options["video"]["total_pixels"], options["video"]["min_total_pixels"], 64)
    assert high == 25165824 // 64 and low == 64


def _cache_snapshot(cache: Path, repo: str, write) -> Path:
    """The Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    write(snapshot)
    return snapshot


@pytest.mark.slow
def test_a_hub_id_loads_offline_from_the_hugging_face_cache(tmp_path):
    cache = tmp_path / "hf" / "hub"
    _cache_snapshot(cache, "Qwen/Qwen3-VL-2B-Instruct", write_qwen3_hub_folder)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "photon", "attach", "--backbone", "Qwen/Qwen3-VL-2B-Instruct", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["backbone"] == "Qwen/Qwen3-VL-2B-Instruct" and summary["adapter"] == "qwen3-vl"
    # The registered alias resolves through the same cache.
    done = subprocess.run([sys.executable, "-m", "photon", "attach", "--backbone", "qwen3-vl-2b", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["backbone"] == "qwen3-vl-2b"


def test_a_hub_id_that_is_not_cached_is_one_line_naming_the_cache_and_the_folder_option(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["attach", "--backbone", "qwen2.5-vl-3b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "qwen2.5-vl-3b (hub id Qwen/Qwen2.5-VL-3B-Instruct)" in err and str(tmp_path / "empty-cache") in err
    assert "--backbone DIR" in err
    with pytest.raises(PhotonError, match="hub id 'Someone/Missing-VL'.*HF_HUB_OFFLINE"):
        photon.load("Someone/Missing-VL")


def _run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_folders_that_cannot_work_are_refused_in_one_line_before_loading(tmp_path, capsys):
    folder = tmp_path / "hub"
    write_qwen2_5_hub_folder(folder)
    broken = {}
    # No tokenizer at all.
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for path in folder.iterdir():
        if path.name not in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
            (no_tokenizer / path.name).write_bytes(path.read_bytes())
    broken["no tokenizer"] = (no_tokenizer, "no tokenizer")
    # A tokenizer from another family whose ids disagree with the config.
    wrong_ids = tmp_path / "wrong-ids"
    wrong_ids.mkdir()
    for path in folder.iterdir():
        (wrong_ids / path.name).write_bytes(path.read_bytes())
    config = json.loads((wrong_ids / "config.json").read_text())
    config["image_token_id"] = 151657
    (wrong_ids / "config.json").write_text(json.dumps(config))
    broken["wrong ids"] = (wrong_ids, r"<\|image_pad\|> is 151655 in the tokenizer, 151657 in config.json")
    # A shard the index names is gone.
    missing_shard = tmp_path / "missing-shard"
    missing_shard.mkdir()
    for path in folder.iterdir():
        if path.name != "model-00002-of-00002.safetensors":
            (missing_shard / path.name).write_bytes(path.read_bytes())
    broken["missing shard"] = (missing_shard, "model-00002-of-00002.safetensors named in model.safetensors.index.json are missing")
    import re

    for label, (path, message) in broken.items():
        code, err = _run_cli(["attach", "--backbone", str(path)], capsys)
        assert code == 2, label
        assert len(err.splitlines()) == 1 and str(path) in err and re.search(message, err), (label, err)


def test_flash_attention_without_the_package_and_a_layer_outside_the_model_exit_2(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        code, err = _run_cli(["attach", "--backbone", "qwen2.5-vl-tiny", "--attn", "flash_attention_2"], capsys)
        assert code == 2 and "needs the flash-attn package" in err and len(err.splitlines()) == 1
    code, err = _run_cli(["attach", "--backbone", "qwen2.5-vl-tiny", "--layer", "8"], capsys)
    assert code == 2 and "layer=8: outside qwen2.5-vl-tiny's 8 decoder layers; choose -1..6" in err and len(err.splitlines()) == 1


def test_release_folder_prompt_uses_the_release_template_and_volume_geometry(tmp_path):
    write_photon_release_folder(tmp_path, stage="S2")
    loaded = photon.load(str(tmp_path))
    options = media_options(loaded)
    volume = Media(frames=np.random.default_rng(0).random((28, 1, 56, 56), dtype=np.float32), kind="volume", source="ct", fps=1.0)
    encoded = loaded.encoder.encode(Sample("r", [{"role": "user", "content": "<video>Where is it?"}], [volume]), train=False)
    assert collapse_placeholders(encoded["prompt"]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|>*8<|vision_end|>Where is it?<|im_end|>\n<|im_start|>assistant\n")
    assert options["frames"]["max_pixels"] == 12845056


@pytest.mark.parametrize("backbone", ["qwen2.5-vl-tiny", "qwen3-vl-tiny"])
def test_a_question_before_its_media_still_prunes_on_the_turns_own_text(backbone):
    from photon.adapters.qwen_inputs import model_inputs

    loaded = photon.load(backbone)
    side = loaded.encoder.geometry.patch_size * loaded.encoder.geometry.merge_size
    video = _media("video", frames=4, side=side * 2, seed=3)
    tokenizer = loaded.encoder.tokenizer
    for content in ("<video>What moves here?", "What moves here?<video>"):
        batch = loaded.encoder.collate([loaded.encoder.encode(Sample("q", [{"role": "user", "content": content}], [video]), train=False)])
        mask = batch["instruction_mask"][0]
        # Qwen3-VL: "?<" before the first "<0.5 seconds>" is one BPE token, counted as timestamp text.
        expected = "What moves here" if backbone.startswith("qwen3") and content.endswith("<video>") else "What moves here?"
        assert tokenizer.decode(batch["input_ids"][0][mask]) == expected
        assert torch.equal(mask, loaded.model._photon.adapter.instruction_mask(batch["input_ids"])[0])
        with torch.no_grad():
            loaded.model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"})
        record = photon.last_selection(loaded.model)[0]
        assert record["fallback"] is None and 0 < record["n_kept"] < record["n_visual"], (content, record["fallback"])
    # Text after the media keeps the release's rule even when text came before it too.
    batch = loaded.encoder.collate([loaded.encoder.encode(
        Sample("q", [{"role": "user", "content": "Look: <video>What moves?"}], [video]), train=False)])
    assert tokenizer.decode(batch["input_ids"][0][batch["instruction_mask"][0]]) == "What moves?"
