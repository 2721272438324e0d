"""ITS functions against PHOTON_SPEC sections 3-4, on hand-checked examples."""

import math

import pytest
import torch

from photon.core import its

VE, IE = 7, 9  # stand-ins for <|vision_end|> and <|im_end|>


def test_instruction_mask_spans_after_vision_end_until_im_end():
    ids = torch.tensor([[1, 5, 5, VE, 2, 3, IE, 4, 4], [5, VE, 2, 2, 2, 2, 2, 2, 2]])
    mask = its.instruction_mask(ids, VE, IE)
    assert mask[0].tolist() == [False, False, False, False, True, True, False, False, False]
    # No im_end: the span runs to the end of the sequence.
    assert mask[1].tolist() == [False, False] + [True] * 7


def test_instruction_mask_excludes_visual_tokens_of_a_later_block():
    ids = torch.tensor([[5, VE, 2, 5, 5, VE, 3, IE]])
    visual = ids == 5
    mask = its.instruction_mask(ids, VE, IE, exclude=visual)
    assert mask[0].tolist() == [False, False, True, False, False, False, True, False]


def _brute_force_saliency(q, k, vis, ins):
    B, Hq, L, Dh = q.shape
    rep = Hq // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    scale = 1 / math.sqrt(Dh)
    u = torch.zeros(B, L)
    for b in range(B):
        T = [t for t in range(L) if ins[b, t]]
        c = []
        for t in T:
            per_head = [
                sum(max(float(q[b, h, t] @ k[b, h, s]) * scale, 0.0) for s in T if s != t) for h in range(Hq)
            ]
            c.append(sum(per_head) / Hq)
        total = max(sum(c), 1.0)
        w = [ci / total for ci in c]
        for j in range(L):
            if vis[b, j]:
                u[b, j] = sum(
                    sum(w[i] * float(q[b, h, t] @ k[b, h, j]) * scale for i, t in enumerate(T)) for h in range(Hq)
                ) / Hq
    return u


def test_instruction_saliency_matches_the_spec_formula_with_gqa():
    torch.manual_seed(0)
    B, Hq, Hkv, L, Dh = 2, 4, 2, 9, 8
    q, k = torch.randn(B, Hq, L, Dh) * 2, torch.randn(B, Hkv, L, Dh) * 2
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[:, 1:5] = True
    ins = torch.zeros(B, L, dtype=torch.bool)
    ins[0, 6:9] = True
    ins[1, 5:7] = True
    u = its.instruction_saliency(q, k, vis, ins)
    torch.testing.assert_close(u, _brute_force_saliency(q, k, vis, ins), rtol=1e-5, atol=1e-5)
    assert u.dtype == torch.float32
    assert (u[~vis] == 0).all()


def test_instruction_saliency_takes_no_gradient():
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    k = torch.randn(1, 1, 5, 4, requires_grad=True)
    vis = torch.tensor([[True, True, False, False, False]])
    ins = torch.tensor([[False, False, False, True, True]])
    assert not its.instruction_saliency(q, k, vis, ins).requires_grad


def test_threshold_features_on_a_hand_example():
    u = torch.tensor([[0.0, 1.0, 3.0, -1.0, 9.0]])
    vis = torch.tensor([[True, True, True, True, False]])
    f = its.threshold_features(u, vis)
    # visual u = [0, 1, 3, -1]; rho = (u + 1) / 4 = [0.25, 0.5, 1.0, 0.0]
    rho = torch.tensor([0.25, 0.5, 1.0, 0.0])
    x = torch.tensor([0.0, 1.0, 3.0, -1.0])
    slog = torch.sign(x) * torch.log1p(x.abs())
    expected = [
        rho.mean(), rho.std(correction=0), 0.0, 1.0, 0.1875, 0.375,  # quantiles of [0, .25, .5, 1]
        0.75, x.std(correction=0), -1.0, 3.0,
        slog.mean(), math.log1p(3.0),
    ]
    torch.testing.assert_close(f[0], torch.tensor([float(e) for e in expected]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "u, vis",
    [
        (torch.full((1, 4), 2.0), torch.ones(1, 4, dtype=torch.bool)),  # all equal
        (torch.tensor([[5.0, 0, 0]]), torch.tensor([[True, False, False]])),  # one visual token
        (torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool)),  # no visual token
        (torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0]]), torch.ones(1, 4, dtype=torch.bool)),
    ],
)
def test_degenerate_saliency_gives_finite_features_and_rho(u, vis):
    f = its.threshold_features(u, vis)
    rho = its.normalized_saliency(u, vis)
    assert torch.isfinite(f).all() and torch.isfinite(rho).all()
    assert ((rho >= 0) & (rho <= 1)).all()


def test_threshold_predictor_starts_by_keeping_almost_everything():
    pred = its.ThresholdPredictor(2048)
    assert pred.mlp[0].out_features == 256
    theta = pred(torch.randn(3, 12) * 0.01)
    # theta = 0.9 * sigmoid(~-5) ~ 0.006
    assert torch.allclose(theta, torch.full((3,), 0.9 * torch.sigmoid(torch.tensor(-5.0)).item()), atol=2e-3)
    rho = torch.tensor([[0.0, 0.01, 0.5, 1.0]])
    q = its.retention(rho, theta[:1], tau=0.2)
    assert its.keep_from_retention(q, torch.ones_like(rho, dtype=torch.bool)).tolist() == [[False, True, True, True]]


def test_zero_shot_rules_and_min_keep():
    rho = torch.tensor([[0.0, 0.2, 0.9, 1.0, 0.5, 0.0]])
    vis = torch.tensor([[True, True, True, True, True, False]])
    mean_keep = its.zero_shot_keep(rho, vis, rule="mean")  # mean 0.52
    assert mean_keep.tolist() == [[False, False, True, True, False, False]]
    assert its.zero_shot_keep(rho, vis, rule="theta", theta=0.3).tolist() == [[False, False, True, True, True, False]]
    assert its.zero_shot_keep(rho, vis, rule="keep_ratio", keep_ratio=0.4).tolist() == [
        [False, False, True, True, False, False]
    ]
    # theta above every rho keeps nothing by the rule, min_keep restores the best ones.
    assert its.zero_shot_keep(rho, vis, rule="theta", theta=2.0, min_keep=2).sum().item() == 2
    assert its.zero_shot_keep(rho, vis, rule="theta", theta=2.0).tolist() == [[False, False, False, True, False, False]]
    with pytest.raises(ValueError, match="unknown zero-shot rule"):
        its.zero_shot_keep(rho, vis, rule="median")


def test_threshold_features_of_a_batch_whose_first_sample_has_no_visual_tokens():
    u = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 1.5]])
    vis = torch.tensor([[False, False, False], [True, True, True]])
    f = its.threshold_features(u, vis)
    assert f.shape == (2, its.N_FEATURES) and f[0].eq(0).all()
    torch.testing.assert_close(f[1], its.threshold_features(u[1:], vis[1:])[0])


def test_top_k_breaks_ties_by_position_and_never_keeps_text():
    rho = torch.tensor([[0.5, 0.2, 0.5, 0.5, 0.9, 0.5]])
    vis = torch.tensor([[True, True, True, True, False, True]])  # the 0.9 is a text token
    keep = its.top_k_by_rho(rho, vis, torch.tensor([2]))
    assert keep[0].tolist() == [True, False, True, False, False, False]


def test_retention_is_the_spec_sigmoid_with_its_temperature_and_keeps_above_one_half():
    rho = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.2, 0.6]])
    theta = torch.tensor([0.5, 0.2])
    q = its.retention(rho, theta, tau=0.1)  # sigmoid((rho - theta) / tau), theta per sample
    expected = [[1 / (1 + math.exp(4.0)), 0.5, 1 / (1 + math.exp(-4.0))], [0.5, 0.5, 1 / (1 + math.exp(-4.0))]]
    torch.testing.assert_close(q, torch.tensor(expected))
    keep = its.keep_from_retention(q, torch.ones_like(rho, dtype=torch.bool))
    assert keep.tolist() == [[False, False, True], [False, False, True]]  # exactly 0.5 is dropped


IS = 8  # stand-in for <|im_start|>


def test_instruction_mask_takes_the_turns_own_text_when_the_media_come_last():
    # A system turn, then a user turn asking before its media ("What moves?<video>"), then the
    # assistant: the question is the user turn's text after "<|im_start|>user\n", and nothing else.
    #            0   1  2  3  4   5   6  7  8  9 10 11 12  13  14  15 16 17  18
    first = [IS, 1, 2, 3, IE, IS, 1, 2, 4, 4, 5, 5, VE, IE, IS, 1, 2, 6, IE]
    # The same without a system turn, and a user turn that asks after its media (the usual rule).
    second = [IS, 1, 2, 4, 4, 5, 5, VE, IE, IS, 1, 2, 5, 5, VE, 4, 4, IE, 0]
    ids = torch.tensor([first, second])
    visual = ids == 5
    mask = its.instruction_mask(ids, VE, IE, exclude=visual, im_start_id=IS)
    assert torch.nonzero(mask[0]).flatten().tolist() == [8, 9]
    assert torch.nonzero(mask[1]).flatten().tolist() == [3, 4, 15, 16]
    # Without `exclude` the media's own tokens count as the turn's text; with a longer header
    # the role tokens' successor is skipped too.
    unexcluded = its.instruction_mask(ids, VE, IE, im_start_id=IS)
    assert torch.nonzero(unexcluded[0]).flatten().tolist() == [8, 9, 10, 11]
    assert torch.nonzero(its.instruction_mask(ids, VE, IE, exclude=visual, im_start_id=IS, header=3)[0]).flatten().tolist() == [9]


def test_normalized_saliency_is_per_sample_and_maps_nan_and_infinities_into_range():
    vis = torch.tensor([[True, True, True, False], [True, True, True, True]])
    u = torch.tensor([[0.0, 1.0, 2.0, 50.0], [10.0, 20.0, 30.0, 40.0]])
    rho = its.normalized_saliency(u, vis)
    torch.testing.assert_close(rho, torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 1 / 3, 2 / 3, 1.0]]))
    # nan counts as 0, +-inf as +-1e8: the order survives and rho stays finite in [0, 1].
    odd = torch.tensor([[float("nan"), float("inf"), float("-inf"), 0.0]])
    rho = its.normalized_saliency(odd, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(rho, torch.tensor([[0.5, 1.0, 0.0, 0.5]]))
    assert its.saliency_is_flat(odd, torch.ones(1, 4, dtype=torch.bool)).tolist() == [False]


def test_saliency_is_flat_per_sample_with_an_inclusive_tolerance():
    vis = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    u = torch.tensor([[1.0, 1.5, 9.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    assert its.saliency_is_flat(u, vis).tolist() == [False, True, True]
    assert its.saliency_is_flat(u, vis, eps=0.5).tolist() == [True, True, True]  # a range of exactly eps is flat
    assert its.saliency_is_flat(u, vis, eps=0.25).tolist() == [False, True, True]


def test_threshold_features_pass_their_eps_to_rho():
    u = torch.tensor([[0.0, 1.0]])
    vis = torch.ones(1, 2, dtype=torch.bool)
    # rho = u / (1 + eps): with eps = 1 the max rho is 0.5.
    assert its.threshold_features(u, vis, eps=1.0)[0, 3].item() == pytest.approx(0.5)


def test_threshold_predictor_width_floor_and_dtype():
    assert its.ThresholdPredictor(4, hidden_div=8).mlp[0].out_features == 1
    assert its.ThresholdPredictor(64, hidden_div=8).mlp[0].out_features == 8
    half = its.ThresholdPredictor(64).to(torch.bfloat16)
    theta = half(torch.rand(3, its.N_FEATURES))  # fp32 features meet bf16 weights
    assert theta.dtype == torch.bfloat16 and theta.shape == (3,)


def test_retention_defaults_to_the_spec_temperature():
    rho, theta = torch.tensor([[0.7]]), torch.tensor([0.5])
    assert its.retention(rho, theta).item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())


def test_enforce_min_keep_per_sample_and_only_below_the_floor():
    rho = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]])
    vis = torch.ones(2, 3, dtype=torch.bool)
    keep = torch.tensor([[True, False, False], [False, False, False]])
    # Sample 0 already keeps one token (not its best): left alone. Sample 1 keeps none: its best is added.
    assert its.enforce_min_keep(keep, rho, vis).tolist() == [[True, False, False], [False, False, True]]
    # Below the floor a sample also keeps its min_keep best tokens (a union, so 3 here).
    assert its.enforce_min_keep(keep, rho, vis, 2).tolist() == [[True, True, True], [True, False, True]]


def test_zero_shot_keep_mean_is_strict_and_per_sample():
    vis = torch.tensor([[True, True, True, False], [True, True, False, False]])
    rho = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    # sample 0: mean 0.5, the token at exactly the mean is dropped; sample 1: mean 0.5 over 2 tokens
    assert its.zero_shot_keep(rho, vis).tolist() == [[False, False, True, False], [False, True, False, False]]
    assert its.zero_shot_keep(rho, vis, rule="theta", theta=0.5).tolist() == [[False, False, True, False], [False, True, False, False]]


@pytest.mark.parametrize("settings, message", [
    ({"rule": "theta"}, "zero-shot rule 'theta' needs a theta value (selection.theta)"),
    ({"rule": "keep_ratio"}, "zero-shot rule 'keep_ratio' needs 0 < keep_ratio <= 1, got None"),
    ({"rule": "keep_ratio", "keep_ratio": 0.0}, "zero-shot rule 'keep_ratio' needs 0 < keep_ratio <= 1, got 0.0"),
    ({"rule": "keep_ratio", "keep_ratio": 1.5}, "zero-shot rule 'keep_ratio' needs 0 < keep_ratio <= 1, got 1.5"),
])
def test_zero_shot_keep_refuses_missing_or_out_of_range_settings(settings, message):
    with pytest.raises(ValueError) as err:
        its.zero_shot_keep(torch.rand(1, 4), torch.ones(1, 4, dtype=torch.bool), **settings)
    assert str(err.value) == message


def test_zero_shot_keep_ratio_one_keeps_every_visual_token():
    vis = torch.tensor([[True, True, False]])
    assert its.zero_shot_keep(torch.rand(1, 3), vis, rule="keep_ratio", keep_ratio=1.0).tolist() == [[True, True, False]]


def test_nan_saliency_counts_as_zero():
    rho = its.normalized_saliency(torch.tensor([[float("nan"), -1.0, 3.0]]), torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(rho, torch.tensor([[0.25, 0.0, 1.0]]))
