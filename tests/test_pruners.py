"""Baseline pruners: each rule on a small hand-checkable case, then all of them in the runtime
(tokens physically removed, ragged batch, pre-LLM pruning equal to a stock-only reference)."""

import math

import pytest
import torch

import photon
from photon.adapters import qwen
from photon.adapters.qwen2_5_vl import QWEN2_5_VL, load_tiny
from photon.adapters.qwen_inputs import model_inputs
from photon.core import compat
from photon.core.api import runtime_of, spec_for_model
from photon.core.config import SelectionConfig
from photon.core.errors import PhotonError
from photon.core.pruners import SelectionContext
from photon.pruners.budget import keep_counts
from photon.pruners.divprune import DivPrunePruner
from photon.pruners.fastv import FastVPruner
from photon.pruners.ise_topk import IseTopKPruner
from photon.pruners.random_keep import RandomPruner
from photon.pruners.visionzip import VisionZipPruner
from tests.reference import capture_text_inputs, reference_greedy, reference_logits

BASELINES = ["random", "ise-topk", "fastv", "visionzip", "divprune"]


def context(vision, *, hidden=None, query=None, key=None, instruction=None, attention_mask=None, extras=None):
    vision = torch.tensor(vision, dtype=torch.bool)
    B, L = vision.shape
    return SelectionContext(
        hidden=hidden if hidden is not None else torch.zeros(B, L, 4),
        vision_mask=vision,
        instruction_mask=torch.tensor(instruction, dtype=torch.bool) if instruction is not None else torch.zeros(B, L, dtype=torch.bool),
        attention_mask=torch.tensor(attention_mask, dtype=torch.bool) if attention_mask is not None else torch.ones(B, L, dtype=torch.bool),
        layer=0,
        num_layers=4,
        compute_query_key=(lambda: (query, key)) if query is not None else None,
        extras=extras or {},
    )


def kept(selection, b=0):
    return selection.keep[b].nonzero().squeeze(1).tolist()


# -- the keep budget every pruner shares ----------------------------------------------------
def test_keep_counts_round_like_photon_and_respect_min_keep():
    vision = torch.tensor([[True] * 10 + [False] * 2, [True] * 3 + [False] * 9, [False] * 12])
    assert keep_counts(vision, 0.25, min_keep=1).tolist() == [2, 1, 0]  # 2.5 -> 2 (half to even); 0.75 -> 1
    assert keep_counts(vision, 0.1, min_keep=2).tolist() == [2, 2, 0]


@pytest.mark.parametrize("pruner", [RandomPruner, FastVPruner, VisionZipPruner, DivPrunePruner])
def test_baselines_need_a_keep_ratio(pruner):
    with pytest.raises(PhotonError, match="keep_ratio"):
        pruner(SelectionConfig())


# -- each rule ---------------------------------------------------------------------------
def test_random_keeps_the_budget_among_visual_tokens_reproducibly():
    vision = [[False] + [True] * 20 + [False] * 3, [False] * 4 + [True] * 10 + [False] * 10]
    config = SelectionConfig(keep_ratio=0.5)
    first = RandomPruner(config, seed=3).select(context(vision))
    assert first.keep.sum(1).tolist() == [10, 5]
    assert not (first.keep & ~torch.tensor(vision)).any()
    assert torch.equal(RandomPruner(config, seed=3).select(context(vision)).keep, first.keep)
    pruner = RandomPruner(config, seed=3)
    pruner.select(context(vision))
    assert not torch.equal(pruner.select(context(vision)).keep, first.keep)  # a fresh draw per prompt


def test_ise_topk_keeps_the_highest_instruction_saliency():
    # One head, head size 1, two instruction tokens with q = k = 1: each attends to the other
    # with score 1, so w = (1/2, 1/2) and u_j = k_j. Keys of the visual tokens 0..3: 0.5, 2, -1, 1.
    key = torch.tensor([0.5, 2.0, -1.0, 1.0, 1.0, 1.0]).view(1, 1, 6, 1)
    query = torch.ones(1, 1, 6, 1)
    ctx = context([[1, 1, 1, 1, 0, 0]], query=query, key=key, instruction=[[0, 0, 0, 0, 1, 1]])
    selection = IseTopKPruner(SelectionConfig(keep_ratio=0.5), hidden_size=8).select(ctx)
    assert kept(selection) == [1, 3]
    assert selection.rule == "ise-topk:0.5"
    torch.testing.assert_close(selection.u[0, :4], torch.tensor([0.5, 2.0, -1.0, 1.0]))


def test_fastv_ranks_by_head_averaged_attention_of_the_last_real_token():
    # Two query heads share one key head (GQA). Keys 0, 3, 1, 2 on the visual tokens 0..3, 0 on the
    # text token 4. The last token's head 0 has q = +1 (likes large keys), head 1 q = -1 (likes
    # small ones). Averaged probabilities: token 0 ~0.21, 1 ~0.32, 2 ~0.11, 3 ~0.14; averaging the
    # logits instead would tie every token at 0.
    key = torch.tensor([0.0, 3.0, 1.0, 2.0, 0.0]).view(1, 1, 5, 1)
    query = torch.zeros(1, 2, 5, 1)
    query[0, 0, 4], query[0, 1, 4] = 1.0, -1.0
    ctx = context([[1, 1, 1, 1, 0]], query=query, key=key)
    assert kept(FastVPruner(SelectionConfig(keep_ratio=0.5)).select(ctx)) == [0, 1]


def test_fastv_reads_the_last_real_token_not_the_padding():
    # Right padding at position 4: its query prefers token 0; the last real token (3) prefers token 1.
    key = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0]).view(1, 1, 5, 1)
    query = torch.zeros(1, 1, 5, 1)
    query[0, 0, 3], query[0, 0, 4] = -2.0, 2.0
    ctx = context([[1, 1, 0, 0, 0]], query=query, key=key, attention_mask=[[1, 1, 1, 1, 0]])
    assert kept(FastVPruner(SelectionConfig(keep_ratio=0.5)).select(ctx)) == [1]


def test_fastv_default_is_k_2_that_is_layer_1_and_layer_overrides():
    assert FastVPruner(SelectionConfig(keep_ratio=0.5)).layer_for(36) == 1
    assert FastVPruner(SelectionConfig(keep_ratio=0.5, layer=5)).layer_for(36) == 5


def _visionzip_case(fraction):
    # Eight visual tokens with hidden rows j * (1, 1); keys put 3, 4 near 1 and 6, 7 near 5.
    hidden = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 2).clone()
    received = torch.tensor([[5.0, 0, 4, 0, 0, 3, 0, 0]])
    keys = torch.tensor([[[1, 1], [1, 0], [1, 1], [1, 0.1], [0.9, 0], [0, 1], [0.1, 1], [0, 2]]])
    ctx = context([[1] * 8], hidden=hidden, extras={"vision_attention": lambda: (received, keys)})
    return VisionZipPruner(SelectionConfig(keep_ratio=0.5), contextual_fraction=fraction).select(ctx)


def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_into_one_target():
    # Budget 4: one contextual token (4 x 1/4), three dominant by received attention: 0, 2, 5.
    # The rest (1, 3, 4, 6, 7) has one target, its first token 1, which becomes their mean.
    selection = _visionzip_case(0.25)
    assert kept(selection) == [0, 1, 2, 5]
    assert selection.hidden[0, 1].tolist() == pytest.approx([(1 + 3 + 4 + 6 + 7) / 5] * 2)
    assert selection.hidden[0, 0].tolist() == [0.0, 0.0]  # dominant rows are untouched


def test_visionzip_assigns_each_remaining_token_to_its_most_similar_target():
    # Budget 4, two contextual: dominant 0 and 2. Rest 1, 3, 4, 5, 6, 7 -> targets every third: 1 and 5.
    # By key direction 3 and 4 join 1, 6 and 7 join 5.
    selection = _visionzip_case(0.5)
    assert kept(selection) == [0, 1, 2, 5]
    assert selection.hidden[0, 1, 0].item() == pytest.approx((1 + 3 + 4) / 3)
    assert selection.hidden[0, 5, 0].item() == pytest.approx((5 + 6 + 7) / 3)


def test_visionzip_default_split_is_the_papers_54_to_10():
    from photon.pruners.visionzip import CONTEXTUAL_FRACTION, contextual_count

    assert contextual_count(64, CONTEXTUAL_FRACTION) == 10
    assert contextual_count(1, CONTEXTUAL_FRACTION) == 0


def test_divprune_is_greedy_max_min_in_cosine_distance():
    # Directions at 0, 10, 20, 120 and 240 degrees (lengths vary: cosine ignores them).
    # Nearest-neighbour distances: 10 deg for the first three, 100 for 120, 120 for 240 -> start at 240.
    # Farthest from {240}: 20 (140 deg). Then nearest-kept distances are 0:20, 10:10, 120:100 -> 120.
    angles = [0, 10, 20, 120, 240]
    lengths = [1.0, 3.0, 0.5, 2.0, 1.5]
    rows = [[r * math.cos(math.radians(a)), r * math.sin(math.radians(a)), 0.0, 0.0] for a, r in zip(angles, lengths)]
    hidden = torch.tensor([[[9.0] * 4] + rows])  # position 0 is text
    ctx = context([[0, 1, 1, 1, 1, 1]], hidden=hidden)
    assert kept(DivPrunePruner(SelectionConfig(keep_ratio=0.6)).select(ctx)) == [3, 4, 5]


# -- in the runtime ------------------------------------------------------------------------
def tiny_batch(encoder, samples):
    inputs = model_inputs(encoder.collate([encoder.encode(s, train=False) for s in samples]))
    inputs.pop("labels")
    return inputs


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_physically_remove_tokens_in_a_ragged_batch(name, ragged_samples):
    loaded = load_tiny(initializer_range=0.3)
    model = loaded.model
    inputs = tiny_batch(loaded.encoder, ragged_samples)
    photon.attach(model, pruner=name, keep_ratio=0.5)
    with torch.no_grad():
        out = model(**inputs)
    records = photon.last_selection(model)
    assert [r["n_kept"] for r in records] == [6, 4, 6]  # half of 12, 8, 12 visual tokens
    info = runtime_of(model).last
    assert info.pruned
    assert out.logits.shape[1] == int(info.keep.sum(1).max()) < inputs["input_ids"].shape[1]
    assert records[0]["layer"] == runtime_of(model).layer
    photon.detach(model)
    assert not model.model.visual._forward_pre_hooks  # visionzip's capture goes with detach


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_remove_tokens_on_qwen3_vl(name):
    """The same pruners on Qwen3-VL: its per-frame placeholder blocks, DeepStack features gathered
    with the keep index (visionzip and divprune prune before layer 0, ahead of every injection)."""
    from tests.conftest import video_sample

    from photon.adapters import qwen3_vl

    loaded = qwen3_vl.load_tiny()
    model = loaded.model
    samples = [video_sample(0, 4, 64, 96, "Is there a lesion in the upper left region?"),
               video_sample(1, 2, 96, 64, "How many lesions are there?")]
    inputs = tiny_batch(loaded.encoder, samples)
    photon.attach(model, pruner=name, keep_ratio=0.5)
    with torch.no_grad():
        out = model(**inputs)
        generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    records = photon.last_selection(model)
    assert [r["n_kept"] for r in records] == [6, 3]  # half of 2 x 2 x 3 and 1 x 3 x 2 visual tokens
    info = runtime_of(model).last
    assert info.pruned and out.logits.shape[1] < inputs["input_ids"].shape[1]
    layer = runtime_of(model).layer
    merged = info.selection.hidden  # visionzip rewrites kept rows before layer 0
    photon.detach(model)
    expected = reference_greedy(model, model.model.language_model, inputs, info.keep, layer, evict_all=True, max_new_tokens=2,
                                prompt_embeds=merged if layer < 0 else None)
    assert torch.equal(generated[:, -2:], expected)


def test_pre_llm_pruning_equals_the_stock_reference(ragged_samples):
    loaded = load_tiny(initializer_range=0.3)
    model = loaded.model
    inputs = tiny_batch(loaded.encoder, ragged_samples)
    text_model = model.model.language_model
    captured = capture_text_inputs(model, text_model, inputs)
    photon.attach(model, pruner="divprune", keep_ratio=0.4)
    with torch.no_grad():
        out = model(**inputs)
    info = runtime_of(model).last
    assert runtime_of(model).layer == -1
    ref = reference_logits(model, text_model, captured, info.keep, -1, evict_all=True, prompt_len=info.keep.shape[1])
    for b in range(info.keep.shape[0]):
        positions = info.keep[b].nonzero().squeeze(1)
        torch.testing.assert_close(out.logits[b, info.valid[b]], ref[b, positions], rtol=1e-4, atol=1e-4)


def test_pre_llm_pruning_decodes_like_the_reference(ragged_samples):
    loaded = load_tiny(attn_implementation="eager", initializer_range=0.3)
    model = loaded.model
    inputs = tiny_batch(loaded.encoder, ragged_samples)
    prompt_len = inputs["input_ids"].shape[1]
    photon.attach(model, pruner="divprune", keep_ratio=0.4)
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    keep = runtime_of(model).last.keep
    photon.detach(model)
    new = gen.sequences[:, prompt_len:]
    full = dict(inputs)
    full["input_ids"] = gen.sequences
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
    full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new, dtype=torch.int)], 1)
    text_model = model.model.language_model
    ref = reference_logits(model, text_model, capture_text_inputs(model, text_model, full), keep, -1, evict_all=True, prompt_len=prompt_len)
    for step, logits in enumerate(gen.logits):
        torch.testing.assert_close(logits, ref[:, prompt_len - 1 + step], rtol=1e-4, atol=1e-4)


def test_vision_attention_capture_matches_a_dense_reference_in_token_order():
    """With one (full-attention) ViT block, what enters it depends only on each patch, so the
    capture's window-ordered scores can be checked against a dense computation in token order."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_position_ids

    from tests.conftest import video_sample

    config = qwen.tiny_config(QWEN2_5_VL)
    config.vision_config.depth = 1
    config.vision_config.fullatt_block_indexes = [0]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    encoder = load_tiny().encoder
    # 112 x 224 frames: a 4 x 8 token grid spans two 4 x 4 windows, so window order != token order.
    sample = video_sample(0, 4, 112, 224, "Where is it?")
    inputs = tiny_batch(encoder, [sample])
    capture = spec_for_model(model).make_adapter(model).capture_vision_attention(model)
    with torch.no_grad():
        model(**inputs)
        received, keys = capture.read(inputs["input_ids"])
        visual = model.model.visual
        block = visual.blocks[0]
        grid = inputs["video_grid_thw"]
        x = block.norm1(visual.patch_embed(inputs["pixel_values_videos"]))  # token order
        cos, sin = compat.vision_rope(visual, x, get_vision_position_ids(grid, visual.spatial_merge_size))
        n = x.shape[0]
        q, k, _ = block.attn.qkv(x).reshape(n, 3, block.attn.num_heads, -1).unbind(1)
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        frame = n // int(grid[0, 0])
        expected = torch.zeros(n)
        for f in range(int(grid[0, 0])):
            rows = slice(f * frame, (f + 1) * frame)
            probs = torch.softmax(torch.einsum("qhd,khd->hqk", q[rows], k[rows]) * block.attn.scaling, -1)
            expected[rows] = probs.sum(dim=(0, 1)) / block.attn.num_heads
    capture.remove()
    video = inputs["input_ids"][0] == model.config.video_token_id
    torch.testing.assert_close(received[0, video], expected.view(-1, 4).sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(keys[0, video], k.mean(1).view(-1, 4, k.shape[-1]).mean(1), rtol=1e-4, atol=1e-5)
    assert received[0, ~video].abs().sum() == 0


def test_pruner_rule_prefers_rule_then_name_then_class():
    from photon.core.pruners import pruner_rule

    class WithRule:
        name = "named"

        def rule(self):
            return "theta=0.3"

    class Named:
        name = "fastv"

    class Bare:
        pass

    assert [pruner_rule(p) for p in (WithRule(), Named(), Bare())] == ["theta=0.3", "fastv", "Bare"]


def test_photon_selection_flops_counts_qk_projections_ise_and_saliency():
    from types import SimpleNamespace

    from photon.core.pruners import PhotonPruner

    text = SimpleNamespace(hidden=8, heads=2, kv_heads=1, head_dim=4)
    dims = SimpleNamespace(text=text)
    shape = SimpleNamespace(tokens=10, instruction=3, visual=5)
    # by hand: q and k projections of all 10 tokens, 2 * 10 * 8 * (2 + 1) * 4 = 1920; the instruction's
    # attention over itself and one more key, 2 * 3 * 4 * 2 * 4 = 192; u over 5 visual tokens, 2 * 5 * 2 * 4 = 80
    assert PhotonPruner(hidden_size=8).selection_flops(dims, shape) == 2192.0
    more = SimpleNamespace(tokens=10, instruction=3, visual=6)
    assert PhotonPruner(hidden_size=8).selection_flops(dims, more) == 2192.0 + 16


def test_the_photon_pruner_factory_keeps_the_given_selection_config():
    from photon.core.pruners import make_photon_pruner

    pruner = make_photon_pruner(SelectionConfig(layer=3, theta_scale=0.7), hidden_size=16)
    assert pruner.config.layer == 3 and pruner.predictor.theta_scale == 0.7


@pytest.mark.parametrize("settings, rule", [
    ({"keep": "all", "keep_ratio": 0.3}, "keep=all"),
    ({"keep_ratio": 0.25, "theta": 0.4}, "keep_ratio=0.25"),
    ({"theta": 0.4, "mode": "zero_shot"}, "theta=0.4"),
    ({"mode": "zero_shot", "rule": "mean"}, "zero_shot:mean"),
    ({"mode": "trained"}, "trained"),
])
def test_the_photon_rule_names_the_setting_that_decides(settings, rule):
    from photon.core.pruners import PhotonPruner

    assert PhotonPruner(SelectionConfig(**settings), hidden_size=8).rule() == rule


def test_an_unknown_selection_mode_is_refused_by_name():
    from photon.core.pruners import PhotonPruner

    with pytest.raises(ValueError, match="selection.mode must be 'trained' or 'zero_shot', got 'greedy'"):
        PhotonPruner(SelectionConfig(mode="greedy"), hidden_size=8).rule()


def test_the_selection_layer_defaults_to_the_release_rule_and_must_be_a_decoder_layer():
    from photon.core.pruners import PhotonPruner

    assert [PhotonPruner(hidden_size=8).layer_for(n) for n in (36, 28, 8, 3)] == [8, 6, 1, 0]
    assert PhotonPruner(SelectionConfig(layer=5), hidden_size=8).layer_for(6) == 5
    for layer in (6, -1):
        with pytest.raises(ValueError, match=rf"selection layer {layer} is outside the decoder's layers 0..5"):
            PhotonPruner(SelectionConfig(layer=layer), hidden_size=8).layer_for(6)


def _context(keys, instruction=True):
    """One sample: a text token, four visual tokens whose keys are `keys`, two question tokens
    (keys 1) attending to each other. Every query is 1 and the head width 1, so ITS's weighted
    question query is 1 and u_j is the visual token's key: rho is the keys rescaled to [0, 1]."""
    return _batch_context([keys], instruction=instruction)


@pytest.mark.parametrize("settings, kept, theta", [
    ({"mode": "zero_shot", "keep_ratio": 0.5}, [3, 4], None),
    ({"mode": "zero_shot", "rule": "theta", "theta": 0.2}, [2, 3, 4], 0.2),  # rho 0, 1/3, 2/3, 1
    ({"mode": "zero_shot", "rule": "mean"}, [3, 4], "mean"),
    ({"mode": "zero_shot", "rule": "theta", "theta": 1.5, "min_keep": 2}, [3, 4], 1.5),  # the floor
])
def test_photon_select_keeps_what_each_rule_says_on_a_hand_built_layer(settings, kept, theta):
    from photon.core.pruners import PhotonPruner

    pruner = PhotonPruner(SelectionConfig(**settings), hidden_size=8)
    chosen = pruner.select(_context([0.0, 1.0, 2.0, 3.0]))
    assert torch.nonzero(chosen.keep[0]).flatten().tolist() == kept
    rho = chosen.rho[0, 1:5]
    torch.testing.assert_close(rho, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    assert chosen.rho[0, 0] == 0 and chosen.u.shape == (1, 7) and chosen.fallback == [None] and chosen.rule == pruner.rule() and chosen.q is None
    if theta == "mean":
        torch.testing.assert_close(chosen.theta, rho.mean().reshape(1))
    elif theta is None:
        assert chosen.theta is None
    else:
        assert chosen.theta.tolist() == [pytest.approx(theta)]


def test_photon_select_trained_draws_q_from_the_predictor_and_keeps_all_without_a_signal():
    from photon.core.pruners import PhotonPruner

    pruner = PhotonPruner(SelectionConfig(mode="trained"), hidden_size=8)
    chosen = pruner.select(_context([0.0, 1.0, 2.0, 3.0]))
    assert chosen.q.shape == (1, 7) and chosen.theta.shape == (1,) and 0 < chosen.theta.item() < 0.9
    # theta ~ 0.006 at init: every visual token but the one at rho 0 has q above 0.5
    assert chosen.keep[0].tolist() == [False, False, True, True, True, False, False]
    for context, reason in ((_context([2.0] * 4), "flat saliency"), (_context([0.0, 1.0, 2.0, 3.0], False), "no instruction tokens")):
        fallback = PhotonPruner(SelectionConfig(mode="zero_shot", keep_ratio=0.25), hidden_size=8).select(context)
        assert fallback.keep[0].tolist() == [False, True, True, True, True, False, False] and fallback.fallback == [reason]


def _batch_context(rows, vision=None, instruction=True):
    """`_context` for several samples at once: row b's four visual keys are rows[b]."""
    k = torch.tensor([[0.0, *keys, 1.0, 1.0] for keys in rows]).reshape(len(rows), 1, 7, 1)
    q = torch.ones(len(rows), 1, 7, 1)
    vision = torch.tensor(vision or [[False, True, True, True, True, False, False]] * len(rows))
    asked = torch.tensor([[False] * 5 + [instruction] * 2] * len(rows))
    return SelectionContext(hidden=torch.zeros(len(rows), 7, 8), vision_mask=vision, instruction_mask=asked,
                            attention_mask=torch.ones(len(rows), 7, dtype=torch.bool), layer=1, num_layers=4,
                            compute_query_key=lambda: (q, k))


def test_photon_pruner_builds_its_predictor_from_the_config():
    from photon.core.pruners import PhotonPruner

    pruner = PhotonPruner(SelectionConfig(predictor_hidden_div=4, predictor_bias_init=0.25), hidden_size=8)
    assert pruner.predictor.mlp[0].out_features == 2 and pruner.predictor.mlp[2].bias.item() == 0.25


def test_photon_select_reads_every_numeric_setting_from_the_config():
    from photon.core import its
    from photon.core.pruners import PhotonPruner

    keys = [0.0, 1.0, 2.0, 3.0]
    chosen = PhotonPruner(SelectionConfig(mode="zero_shot", rho_eps=3.0), hidden_size=8).select(_context(keys))
    torch.testing.assert_close(chosen.rho[0, 1:5], torch.tensor(keys) / 6)  # (u - 0) / (3 + rho_eps)
    flat = PhotonPruner(SelectionConfig(mode="zero_shot", flat_saliency_eps=3.0), hidden_size=8).select(_context(keys))
    assert flat.fallback == ["flat saliency"] and flat.keep[0, 1:5].all()
    for settings in ({"mode": "zero_shot", "keep_ratio": 0.25, "min_keep": 2},
                     {"mode": "zero_shot", "rule": "mean", "min_keep": 3}):
        kept = PhotonPruner(SelectionConfig(**settings), hidden_size=8).select(_context(keys)).keep
        assert kept.sum().item() == settings["min_keep"]
    # Trained: theta from features computed with rho_eps, q at the configured tau, the floor applied.
    config = SelectionConfig(mode="trained", rho_eps=3.0, tau=0.05, predictor_bias_init=5.0, min_keep=3)
    pruner = PhotonPruner(config, hidden_size=8)
    chosen = pruner.select(_context(keys))
    with torch.no_grad():
        theta = pruner.predictor(its.threshold_features(chosen.u, _context(keys).vision_mask, 3.0))
    torch.testing.assert_close(chosen.theta, theta)
    torch.testing.assert_close(chosen.q, its.retention(chosen.rho, theta, 0.05))
    assert torch.nonzero(chosen.keep[0]).flatten().tolist() == [2, 3, 4]  # theta ~ 0.9 keeps none by q


def test_photon_select_refuses_the_theta_rule_without_a_theta():
    from photon.core.pruners import PhotonPruner

    with pytest.raises(ValueError, match="needs a theta value"):
        PhotonPruner(SelectionConfig(mode="zero_shot", rule="theta"), hidden_size=8).select(_context([0.0, 1.0, 2.0, 3.0]))


def test_photon_select_treats_each_sample_of_a_batch_on_its_own():
    from photon.core.pruners import PhotonPruner

    vision = [[False, True, True, True, True, False, False], [False, True, True, False, False, False, False],
              [False] * 7]
    chosen = PhotonPruner(SelectionConfig(mode="zero_shot", rule="mean"), hidden_size=8).select(
        _batch_context([[0.0, 1.0, 2.0, 3.0], [0.0, 4.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0]], vision))
    # theta: the mean rho over each sample's own visual tokens (0.5, 0.5 of two tokens, 0 without any)
    torch.testing.assert_close(chosen.theta, torch.tensor([0.5, 0.5, 0.0]))
    assert chosen.keep.tolist() == [[False, False, False, True, True, False, False],
                                    [False, False, True, False, False, False, False], [False] * 7]
    assert chosen.fallback == [None, None, None]  # a sample without visual tokens is no fallback
