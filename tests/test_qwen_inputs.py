"""Photon's own Qwen input building: pixel packing, the offline tokenizer, prompts and labels."""

import numpy as np
import pytest
import torch

from photon.adapters.qwen_inputs import ChatFormat, QwenEncoder, VisualGeometry, pack_frames, pack_media
from photon.adapters.tokenizer import qwen2_5_tokenizer
from photon.core.errors import PhotonError
from photon.core.losses import IGNORE_INDEX
from photon.modalities.base import Media

from tests.conftest import Sample, video_sample


def test_packing_follows_the_layout_formula():
    T, C, H, W, p, tp, m = 4, 3, 56, 84, 14, 2, 2
    frames = torch.randn(T, C, H, W)
    rows, grid = pack_frames(frames, patch_size=p, temporal_patch_size=tp, merge_size=m)
    assert grid.tolist() == [2, 4, 6] and rows.shape == (2 * 4 * 6, C * tp * p * p)
    # Row r covers merge window (t, bh, bw) and in-window offset (i, j), windows in raster order.
    gh, gw = H // p, W // p
    r = 0
    for t in range(T // tp):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for i in range(m):
                    for j in range(m):
                        h0, w0 = (bh * m + i) * p, (bw * m + j) * p
                        patch = frames[t * tp : (t + 1) * tp, :, h0 : h0 + p, w0 : w0 + p]  # (tp, C, p, p)
                        assert torch.equal(rows[r], patch.permute(1, 0, 2, 3).reshape(-1))
                        r += 1


def test_packing_matches_transformers_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)
    theirs = Qwen2VLImageProcessorPil()(images=[image], return_tensors="pt")
    frames = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    media = Media(frames=frames.numpy(), kind="image", source="x")
    ours = pack_media(media, VisualGeometry())
    assert ours.grid_thw.tolist() == theirs["image_grid_thw"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, theirs["pixel_values"], rtol=1e-5, atol=1e-5)


def test_packing_rejects_frames_off_the_patch_grid():
    with pytest.raises(PhotonError, match="multiple of the patch grid 28"):
        pack_frames(torch.zeros(2, 3, 50, 56), patch_size=14, temporal_patch_size=2, merge_size=2)


def test_offline_tokenizer_is_the_real_qwen2_5_one():
    tok = qwen2_5_tokenizer()
    assert len(tok) == 151665
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|file_sep|>"])
    assert ids == [151643, 151644, 151645, 151652, 151653, 151655, 151656, 151664]


def test_encoder_places_placeholders_labels_and_instruction_mask():
    tok = qwen2_5_tokenizer()
    enc = QwenEncoder(tok, VisualGeometry())
    sample = video_sample(0, 4, 56, 84, "Is there a lesion?", "Yes.")
    train = enc.encode(sample, train=True)
    text = tok.decode(train["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert text.endswith("<|vision_end|>Is there a lesion?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n")
    assert int((train["input_ids"] == 151656).sum()) == 2 * 2 * 3  # grid (2, 4, 6) / 4
    labelled = train["labels"][train["labels"] != IGNORE_INDEX]
    assert tok.decode(labelled) == "Yes.<|im_end|>"
    prompt = enc.encode(sample, train=False)
    assert tok.decode(prompt["input_ids"]).endswith("<|im_start|>assistant\n")
    batch = enc.collate([prompt, enc.encode(video_sample(1, 2, 56, 56, "Where?"), train=False)])
    assert batch["attention_mask"][1, 0] == 0  # left padding
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6], [1, 4, 4]]
    question = tok.decode(batch["input_ids"][0][batch["instruction_mask"][0]])
    assert question == "Is there a lesion?"
    assert torch.equal(batch["mm_token_type_ids"] == 2, batch["input_ids"] == 151656)


def test_encoder_counts_tags_against_media():
    enc = QwenEncoder(qwen2_5_tokenizer(), VisualGeometry())
    sample = video_sample(0, 2, 56, 56, "<video> two tags?")
    with pytest.raises(PhotonError, match="more <image>/<video> tags than media"):
        enc.encode(sample, train=False)
    sample = Sample("x", [{"role": "user", "content": "no tag"}], video_sample(0, 2, 56, 56, "q").media)
    with pytest.raises(PhotonError, match="1 media but 0 tags"):
        enc.encode(sample, train=False)


def test_volume_packing_through_the_3d_embedding_skips_normalisation():
    volume = Media(frames=np.full((28, 1, 56, 56), 0.5, dtype=np.float32), kind="volume", source="ct", fps=1.0)
    grey = VisualGeometry(temporal_patch_size=14, in_channels=1)
    packed = pack_media(volume, grey)
    assert packed.grid_thw.tolist() == [2, 4, 4] and packed.n_tokens == 8
    assert torch.all(packed.pixel_values == 0.5)
    assert packed.second_per_grid == 14.0
    rgb = pack_media(volume, VisualGeometry())  # Photon Max: Qwen's own RGB embedding, 2-frame patches
    assert rgb.grid_thw.tolist() == [14, 4, 4] and rgb.pixel_values.shape[1] == 3 * 2 * 14 * 14
    assert not torch.all(rgb.pixel_values == 0.5)


def test_qwen3_style_chat_format_writes_one_block_per_frame_step():
    chat = ChatFormat(default_system=None, frame_timestamps=True)
    media = Media(frames=np.zeros((4, 3, 56, 56), dtype=np.float32), kind="video", source="v", fps=1.0)
    block = chat.visual_block(pack_media(media, VisualGeometry()))
    # Each step's time is the mean of its first and last frame times (frames at 0, 1, 2, 3 s).
    assert block.count("<|vision_start|>") == 2 and block.startswith("<0.5 seconds>")
    assert "<2.5 seconds>" in block


def test_batch_instruction_mask_equals_the_adapters_on_several_media():
    from photon.adapters.qwen2_5_vl import load_tiny

    loaded = load_tiny()
    sample = video_sample(0, 2, 56, 56, "compare with <video> which is larger?")
    sample.media = sample.media * 2
    batch = loaded.encoder.collate([loaded.encoder.encode(sample, train=False)])
    from photon.adapters.qwen2_5_vl import make_adapter

    assert torch.equal(batch["instruction_mask"], make_adapter(loaded.model).instruction_mask(batch["input_ids"]))
    question = loaded.encoder.tokenizer.decode(batch["input_ids"][0][batch["instruction_mask"][0]])
    assert " ".join(question.split()) == "compare with which is larger?"  # both blocks' text, no visual tokens
