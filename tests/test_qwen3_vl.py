"""Qwen3-VL adapter: Qwen3-VL's exact input layout, parity with stock, equality with a stock-only
reference when pruning (DeepStack before and after the selection layer), ragged batches, decode
with pruned caches, training through SGP, the 3D patch embedding, loading a folder."""

import types

import numpy as np
import pytest
import torch

import photon
from photon.adapters.qwen3_vl import (
    VOLUME_INPUT,
    DeepStack,
    install_volume_embedding,
    load_tiny,
    make_adapter,
    timestamp_mask,
)
from photon.adapters.qwen_inputs import model_inputs, pack_media, step_timestamps
from photon.adapters.tokenizer import qwen3_tokenizer
from photon.core import plugins
from photon.core import sgp as sgp_module
from photon.core.api import backbone_spec, runtime_of
from photon.core.errors import PhotonError
from photon.core.losses import answer_window
from photon.core.schedule import BatchPlan, Stage
from photon.modalities.base import Media
from tests.reference import capture_text_inputs, reference_logits

from tests.conftest import Sample, video_sample

LAST_INJECTION = 2  # the tiny config's DeepStack adds features after decoder layers 0, 1, 2
BEFORE, AFTER = 1, 3  # selection layers on either side of it


def tiny(attn="sdpa", **kw):
    # A wider init than the default 0.02 makes greedy decoding vary, so token equality means something.
    return load_tiny(attn_implementation=attn, initializer_range=0.3, **kw)


def batch_for(loaded, samples, train=False):
    batch = loaded.encoder.collate([loaded.encoder.encode(s, train=train) for s in samples])
    inputs = model_inputs(batch)
    if not train:
        inputs.pop("labels")
    return inputs


@pytest.fixture
def samples():
    """Three prompts of different lengths and grids (sides are multiples of 32: patch 16, merge 2)."""
    return [
        video_sample(0, 4, 64, 96, "Is there a lesion in the upper left region?", "Yes, in the upper left."),
        video_sample(1, 2, 128, 64, "How many lesions are there?", "Two."),
        video_sample(2, 6, 64, 64, "Which region holds the lesion, left or right?", "The left one."),
    ]


# -- tokenizer and input layout ------------------------------------------------------------
def test_tokenizer_has_qwen3_special_tokens_over_the_qwen2_ranks():
    tokenizer = qwen3_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    assert len(tokenizer) == 151669
    assert [ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")] == [
        151643, 151644, 151645, 151652, 151653]
    assert [ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<tool_response>", "<think>", "</think>")] == [
        151655, 151656, 151665, 151667, 151668]
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 151643
    # <think> is an ordinary added token in Qwen3's tokenizer: decoding keeps it.
    assert tokenizer.decode([151667, 9707], skip_special_tokens=True) == "<think>Hello"


def test_video_packing_equals_qwen3_patchify_and_normalisation():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    frames = np.random.default_rng(0).random((5, 3, 64, 96), dtype=np.float32)
    packed = pack_media(Media(frames, "video", "v", fps=2.0), tiny().encoder.geometry)
    normalised = (torch.from_numpy(frames)[None] - 0.5) / 0.5
    # patchify is pure tensor code (the processor class itself needs torchvision).
    expected, t, h, w = Qwen3VLVideoProcessor.patchify(None, normalised, patch_size=16, merge_size=2, temporal_patch_size=2)
    assert packed.grid_thw.tolist() == [t, h, w] == [3, 4, 6]
    torch.testing.assert_close(packed.pixel_values, expected[0], rtol=0, atol=1e-6)
    assert packed.n_tokens == 3 * 2 * 3


def test_image_packing_equals_the_pil_image_processor_with_qwen3_settings():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3, do_resize=False)
    stock = processor(images=[image], return_tensors="pt")
    frames = (image.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    packed = pack_media(Media(frames, "image", "i"), tiny().encoder.geometry)
    assert packed.kind == "image"
    assert packed.grid_thw.tolist() == stock["image_grid_thw"][0].tolist()
    torch.testing.assert_close(packed.pixel_values, stock["pixel_values"].float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [0, 10, 20, 30, 40], [3]])
def test_step_timestamps_equal_qwen3_processor(indices):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    fps = 2.0
    stock = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    assert step_timestamps([i / fps for i in indices], 2) == pytest.approx(stock)


def test_video_prompt_block_equals_qwen3_processor_placeholder():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    loaded = tiny()
    indices, fps = [0, 10, 20, 30, 40], 2.0
    frames = np.zeros((5, 3, 64, 96), dtype=np.float32)
    packed = pack_media(Media(frames, "video", "v", fps=fps, meta={"timestamps": [i / fps for i in indices]}), loaded.encoder.geometry)
    fake = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>", video_token="<|video_pad|>",
    )
    fake._calculate_timestamps = lambda *a: Qwen3VLProcessor._calculate_timestamps(fake, *a)
    metadata = VideoMetadata(total_num_frames=50, fps=fps, frames_indices=indices)
    stock = Qwen3VLProcessor.replace_video_token(fake, {"video_grid_thw": packed.grid_thw[None], "video_metadata": [metadata]}, 0)
    assert loaded.encoder.chat.visual_block(packed) == stock
    assert stock.startswith("<2.5 seconds><|vision_start|>")


def test_prompt_has_no_default_system_and_no_second_per_grid(samples):
    loaded = tiny()
    batch = batch_for(loaded, samples[:1])
    text = loaded.encoder.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>user\n<0.5 seconds><|vision_start|>")
    assert "second_per_grid_ts" not in batch  # Qwen3-VL's generate() rejects it


def test_instruction_mask_skips_timestamps_but_keeps_text_between_media():
    loaded = tiny()
    media = video_sample(0, 24, 32, 32, "").media + video_sample(1, 4, 32, 32, "").media
    sample = Sample("two", [{"role": "user", "content": "<video>Compare at 12: <video> which one?"}], media)
    encoded = loaded.encoder.encode(sample, train=False)
    ids = encoded["input_ids"][None]
    adapter = make_adapter(loaded.model)
    mask = adapter.instruction_mask(ids)
    tokens = loaded.encoder.tokenizer.convert_ids_to_tokens(ids[0])
    assert [t for t, m in zip(tokens, mask[0]) if m] == ["Compare", "Ġat", "Ġ", "1", "2", ":", "Ġwhich", "Ġone", "?"]
    assert torch.equal(loaded.encoder.collate([encoded])["instruction_mask"], mask)  # the batch says the same
    stamps = timestamp_mask(ids, adapter.vision_start_id)[0]
    first, second = ("".join(f"<{t:.1f} seconds>" for t in pack_media(m, loaded.encoder.geometry).timestamps) for m in media)
    # The second video's first "<" merges with the space before it into one token.
    assert loaded.encoder.tokenizer.decode(ids[0][stamps]) == f"{first} {second}"


# -- the runtime's view of the model ---------------------------------------------------------
def test_query_key_reproduce_the_stock_attention_weights(samples):
    loaded = tiny("eager")
    model = loaded.model
    inputs = batch_for(loaded, samples[:2])
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    hidden, mrope = captured["inputs_embeds"], captured["position_ids"][-3:]
    position_embeddings = text_model.rotary_emb(hidden, mrope)
    layer = text_model.layers[0]
    q, k = make_adapter(model).query_key(layer, hidden, position_embeddings)
    attn = layer.self_attn
    scores = q @ k.repeat_interleave(attn.num_key_value_groups, dim=1).transpose(-1, -2) * attn.scaling
    L = hidden.shape[1]
    allowed = torch.ones(L, L, dtype=torch.bool).tril() & inputs["attention_mask"].bool()[:, None, None, :]
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        _, weights = attn(layer.input_layernorm(hidden), position_embeddings=position_embeddings, attention_mask=additive)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(weights[real[:, None, :, None].expand_as(weights)],
                               expected[real[:, None, :, None].expand_as(expected)], rtol=1e-5, atol=1e-6)


def test_deepstack_gather_keeps_the_kept_visual_rows_in_order():
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    embeds = [torch.arange(5.0).view(5, 1), 10 + torch.arange(5.0).view(5, 1)]
    keep = torch.tensor([[1, 0, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)  # text rows kept, some visual not
    index, valid = sgp_module.keep_index(keep, "left")
    gathered = DeepStack(mask, embeds).gather(index, valid, keep)
    # Visual rows in row-major order: sample 0 -> 0, 1, 2; sample 1 -> 3, 4. Kept: 1, 2 and 4.
    assert gathered.embeds[0].flatten().tolist() == [1.0, 2.0, 4.0]
    assert gathered.embeds[1].flatten().tolist() == [11.0, 12.0, 14.0]
    # Packed (left-padded) sequences: sample 0 keeps positions 0, 2, 3, 4; sample 1 pad, 1, 2, 3.
    assert gathered.visual_pos_masks.tolist() == [[False, True, False, True], [False, True, False, False]]
    hidden = gathered.apply(1, torch.zeros(2, 4, 1))
    assert hidden[..., 0].tolist() == [[0, 11, 0, 12], [0, 14, 0, 0]]
    assert gathered.apply(2, hidden) is hidden  # no third injection


# -- parity and reference ---------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_equals_stock_logits_and_generate(attn, samples):
    loaded = tiny(attn)
    model = loaded.model
    inputs = batch_for(loaded, samples)
    with torch.no_grad():
        stock_logits = model(**inputs).logits
        stock_tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    photon.attach(model, mode="zero_shot", keep="all")
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(logits, stock_logits)
    assert torch.equal(tokens, stock_tokens)
    records = photon.last_selection(model)
    assert [r["n_visual"] for r in records] == [12, 8, 12]
    assert all(0 < r["selected"] < r["n_visual"] == r["n_kept"] for r in records)  # a selection ran, nothing was dropped
    assert [len(r["grids"]) for r in records] == [1, 1, 1]
    photon.detach(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock_logits)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("layer", [BEFORE, AFTER], ids=["before-last-injection", "after-last-injection"])
def test_pruned_prefill_equals_reference_at_kept_positions(attn, layer, samples):
    loaded = tiny(attn)
    model = loaded.model
    inputs = batch_for(loaded, samples)
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    photon.attach(model, mode="zero_shot", layer=layer)
    with torch.no_grad():
        out = model(**inputs)
    info = runtime_of(model).last
    assert info.pruned
    keep = info.keep
    counts = [r["n_kept"] for r in photon.last_selection(model)]
    assert len(set(counts)) > 1, counts  # ragged keep counts
    ref = reference_logits(model, text_model, captured, keep, layer, evict_all=True, prompt_len=keep.shape[1])
    for b in range(keep.shape[0]):
        kept_positions = keep[b].nonzero().squeeze(1)
        packed = out.logits[b, info.valid[b]]
        assert packed.shape[0] == kept_positions.numel()
        torch.testing.assert_close(packed, ref[b, kept_positions], rtol=1e-4, atol=2e-5)
    assert out.logits.shape[1] == int(keep.sum(1).max())


def test_injections_after_an_early_selection_layer_reach_the_kept_tokens(samples):
    """With the selection before the last DeepStack injection, that injection still changes the
    output: dropping it (instead of gathering it) would not match the reference."""
    loaded = tiny("eager")
    model = loaded.model
    inputs = batch_for(loaded, samples)
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    photon.attach(model, mode="zero_shot", layer=BEFORE)
    with torch.no_grad():
        out = model(**inputs)
    info = runtime_of(model).last
    without_last = dict(captured, deepstack_visual_embeds=captured["deepstack_visual_embeds"][:LAST_INJECTION])
    ref = reference_logits(model, text_model, without_last, info.keep, BEFORE, evict_all=True, prompt_len=info.keep.shape[1])
    gap = max((out.logits[b, info.valid[b]] - ref[b, info.keep[b]]).abs().max() for b in range(3))
    assert gap > 100 * 2e-5  # far outside the tolerance the reference test allows


@pytest.mark.parametrize("cache", ["evict_all", "keep_early"])
def test_decode_with_pruned_cache_equals_reference(cache, samples):
    loaded = tiny("eager")
    model = loaded.model
    inputs = batch_for(loaded, samples)
    prompt_len = inputs["input_ids"].shape[1]
    photon.attach(model, mode="zero_shot", layer=BEFORE, cache=cache)
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    keep = runtime_of(model).last.keep
    text_model = model.model.language_model
    photon.detach(model)
    full = dict(inputs)
    full["input_ids"] = gen.sequences
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(gen.sequences[:, prompt_len:])], 1)
    full["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros_like(gen.sequences[:, prompt_len:], dtype=torch.int)], 1
    )
    captured = capture_text_inputs(model, text_model, full)
    ref = reference_logits(model, text_model, captured, keep, BEFORE, evict_all=cache == "evict_all", prompt_len=prompt_len)
    for step, logits in enumerate(gen.logits):
        torch.testing.assert_close(logits, ref[:, prompt_len - 1 + step], rtol=1e-4, atol=1e-4)


def test_ragged_batch_equals_per_sample_runs(samples):
    loaded = tiny("sdpa")
    model = loaded.model
    photon.attach(model, mode="zero_shot")  # default layer floor(8/4) - 1 = 1: before the last injection
    assert runtime_of(model).layer == BEFORE
    inputs = batch_for(loaded, samples)
    with torch.no_grad():
        batched = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        batched_records = photon.last_selection(model)
        assert len({r["n_kept"] for r in batched_records}) > 1
        for b, sample in enumerate(samples):
            single = batch_for(loaded, [sample])
            tokens = model.generate(**single, max_new_tokens=4, do_sample=False)
            assert torch.equal(tokens[0, -4:], batched[b, -4:])
            assert photon.last_selection(model)[0]["keep"] == batched_records[b]["keep"]


# -- training -------------------------------------------------------------------------------
def _train_step(model, inputs, plan):
    runtime_of(model).plan = plan
    model.train()
    out = model(**inputs)
    return out, runtime_of(model).last


@pytest.mark.parametrize("layer", [BEFORE, AFTER], ids=["before-last-injection", "after-last-injection"])
def test_hard_stage_training_step_reaches_the_predictor_only_through_sgp(layer, samples, monkeypatch):
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="trained", layer=layer)
    inputs = batch_for(loaded, samples, train=True)
    out, info = _train_step(model, inputs, BatchPlan(step=9000, stage=Stage.HARD))
    assert torch.isfinite(out.loss) and info.pruned
    assert info.labels.shape == out.logits.shape[:2]
    out.loss.backward()
    grads = [p.grad for p in model.photon_pruner.predictor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.model.visual.deepstack_merger_list[LAST_INJECTION].linear_fc2.weight.grad.abs().sum() > 0
    # With the surrogate silenced, nothing else carries gradient to the predictor.
    model.zero_grad()
    monkeypatch.setattr(sgp_module, "surrogate_q_grad", lambda x, g, q, *a, **k: torch.zeros_like(q))
    out, _ = _train_step(model, inputs, BatchPlan(step=9000, stage=Stage.HARD))
    out.loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.photon_pruner.predictor.parameters())


def test_soft_stage_scales_visual_rows_and_trains_the_predictor(samples):
    loaded = tiny()
    model = loaded.model
    photon.attach(model, mode="trained")
    inputs = batch_for(loaded, samples, train=True)
    out, info = _train_step(model, inputs, BatchPlan(step=5000, stage=Stage.SOFT))
    assert not info.pruned and info.q.shape[1] == inputs["input_ids"].shape[1]
    assert out.logits.shape[1] == answer_window(inputs["labels"]) < inputs["input_ids"].shape[1]
    assert torch.isfinite(out.loss) and info.q.requires_grad
    out.loss.backward()
    assert model.photon_pruner.predictor.mlp[2].bias.grad.abs().item() > 0


# -- the Photon 3D patch embedding ------------------------------------------------------------
def test_inflated_volume_embedding_matches_rgb_on_a_constant_volume():
    model = tiny().model
    rgb = model.model.visual.patch_embed
    with torch.no_grad():
        expected = rgb(torch.full((1, 3 * 2 * 16 * 16), 0.3))
    install_volume_embedding(model, init="inflate")
    grey = model.model.visual.patch_embed
    assert grey.proj.weight.shape[1:] == (1, 16, 16, 16)
    with torch.no_grad():
        got = grey(torch.full((1, 16 * 16 * 16), 0.3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert model.config.vision_config.in_channels == 1 and model.config.vision_config.temporal_patch_size == 16


def test_a_volume_through_the_3d_embedding_is_answered_with_tokens_removed():
    loaded = tiny(volume_embedding="inflate")
    spec = backbone_spec("qwen3-vl-tiny")
    D, H, W = spec.volume_input
    volume = Media(np.random.default_rng(3).random((D, 1, H, W), dtype=np.float32), "volume", "ct", fps=1.0)
    sample = Sample("ct", [{"role": "user", "content": "<video>Is there a nodule?"}], [volume])
    inputs = batch_for(loaded, [sample])
    n_visual = int((inputs["input_ids"] == loaded.model.config.video_token_id).sum())
    assert n_visual == 2 * 4 * 4  # (32, 128, 128) through the 16^3 kernel and the 2x2 merge
    text = loaded.encoder.tokenizer.decode(inputs["input_ids"][0])
    assert "<7.5 seconds><|vision_start|>" in text and "<23.5 seconds><|vision_start|>" in text  # 16-slice slabs
    photon.attach(loaded.model, mode="zero_shot", keep_ratio=0.25)
    with torch.no_grad():
        tokens = loaded.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokens.shape[1] == inputs["input_ids"].shape[1] + 3
    assert photon.last_selection(loaded.model)[0]["n_kept"] == 8


def test_released_geometry_gives_1000_tokens_per_volume():
    geometry = tiny(volume_embedding="inflate").encoder.geometry  # the 3D embedding's packing, at any model size
    spec = backbone_spec("qwen3-vl-2b")
    assert spec.volume_input == VOLUME_INPUT == (160, 320, 320) and spec.grid_multiple == 32
    volume = Media(np.zeros((VOLUME_INPUT[0], 1, *VOLUME_INPUT[1:]), dtype=np.float32), "volume", "ct", fps=1.0)
    packed = pack_media(volume, geometry)
    assert packed.grid_thw.tolist() == [10, 20, 20] and packed.n_tokens == 1000
    assert packed.pixel_values.shape == (4000, 16 * 16 * 16)
    assert spec.visual_tokens(*VOLUME_INPUT, volume=True) == 80 * 10 * 10  # Qwen's own embedding: 2-slice steps


# -- loading --------------------------------------------------------------------------------
def test_photon_load_of_a_saved_folder_gives_the_same_model(tmp_path, samples):
    loaded = tiny()
    loaded.model.save_pretrained(tmp_path)
    loaded.encoder.tokenizer.save_pretrained(tmp_path)
    inputs = batch_for(loaded, samples[:1])
    with torch.no_grad():
        expected = loaded.model(**inputs).logits
    reloaded = photon.load(str(tmp_path), attn_implementation="sdpa", dtype=torch.float32)
    assert reloaded.backbone == str(tmp_path)
    assert runtime_of(reloaded.model).adapter.family == "qwen3-vl"
    photon.detach(reloaded.model)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(**batch_for(reloaded, samples[:1])).logits, expected)


def test_a_photon_checkpoint_folder_reloads_the_wrapped_model(tmp_path, samples):
    from photon.core import checkpoint

    loaded = tiny(volume_embedding="inflate")
    photon.attach(loaded.model, mode="trained", layer=BEFORE, theta=0.3)
    inputs = batch_for(loaded, samples[:2])
    with torch.no_grad():
        expected = loaded.model(**inputs).logits
    selection = photon.last_selection(loaded.model)
    folder = checkpoint.save_folder(loaded.model, loaded.encoder.tokenizer, tmp_path / "wrapped", backbone="qwen3-vl-tiny")
    again = photon.load(str(folder))
    assert again.backbone == "qwen3-vl-tiny" and again.encoder.geometry.in_channels == 1
    assert runtime_of(again.model).layer == BEFORE
    with torch.no_grad():
        assert torch.equal(again.model(**batch_for(again, samples[:2])).logits, expected)
    assert photon.last_selection(again.model) == selection


def test_loading_a_folder_of_another_family_is_a_clear_error(tmp_path):
    from photon.adapters.qwen3_vl import load_pretrained

    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(PhotonError, match="qwen2_5_vl"):
        load_pretrained(str(tmp_path))


def test_backbones_are_registered_through_the_hook():
    registered = plugins.backbones()
    assert registered["qwen3-vl-2b"].source == "photon.adapters.qwen3_vl"
    assert registered["qwen3-vl-2b"].obj.source == "Qwen/Qwen3-VL-2B-Instruct"
    tiny = registered["qwen3-vl-tiny"].obj.load(None, seed=3)
    assert type(tiny.model).__name__ == "Qwen3VLForConditionalGeneration" and tiny.backbone == "qwen3-vl-tiny"
    direct = load_tiny(seed=3).model.state_dict()
    assert all(torch.equal(value, direct[name]) for name, value in tiny.model.state_dict().items())
