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
