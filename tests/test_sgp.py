"""SGP (PHOTON_SPEC section 5): forward packing, straight-through, surrogate values and direction."""

import math

import pytest
import torch

from photon.core.config import SGPConfig
from photon.core.sgp import gather_tokens, keep_index, sgp_gather, soft_scale


def test_keep_index_packs_in_original_order_on_either_side():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    index, valid = keep_index(keep, "right")
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert index[0].tolist() == [0, 2, 3] and index[1, 0].item() == 1
    index, valid = keep_index(keep, "left")
    assert valid.tolist() == [[True, True, True], [False, False, True]]
    assert index[0].tolist() == [0, 2, 3] and index[1, 2].item() == 1


def test_gather_tokens_handles_positions_and_caches():
    keep = torch.tensor([[True, False, True], [True, True, True]])
    index, valid = keep_index(keep, "left")
    pos = torch.arange(3).view(1, 1, 3).expand(4, 2, 3)
    out = gather_tokens(pos, index, valid, seq_dim=2, batch_dim=1, fill=1)
    assert out[:, 0].tolist() == [[1, 0, 2]] * 4
    cache = torch.arange(2 * 2 * 3 * 1.0).view(2, 2, 3, 1)
    packed = gather_tokens(cache, index, valid, seq_dim=2)
    assert packed[0, :, :, 0].tolist() == [[0.0, 0.0, 2.0], [0.0, 3.0, 5.0]]


def test_forward_left_packs_kept_rows_zero_padded():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    keep = torch.tensor([[True, False, True, True], [True, False, False, True]])
    vis = torch.tensor([[True, True, True, False], [True, True, True, False]])
    out = sgp_gather(hidden, keep, torch.full((2, 4), 0.5), vis)
    assert out.shape == (2, 3, 2)
    torch.testing.assert_close(out[0], hidden[0, [0, 2, 3]])
    torch.testing.assert_close(out[1, :2], hidden[1, [0, 3]])
    assert (out[1, 2] == 0).all()


def test_hidden_gradient_is_the_scattered_upstream_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 3, requires_grad=True)
    q = torch.rand(2, 5, requires_grad=True)
    keep = torch.tensor([[True, False, True, True, True], [False, True, False, True, True]])
    vis = torch.tensor([[True, True, True, False, False]] * 2)
    out = sgp_gather(hidden, keep, q, vis)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected = torch.zeros(2, 5, 3)
    index, valid = keep_index(keep)
    for b in range(2):
        for slot in range(out.shape[1]):
            if valid[b, slot]:
                expected[b, index[b, slot]] = upstream[b, slot]
    torch.testing.assert_close(hidden.grad, expected)
    assert (q.grad[~vis] == 0).all()


def test_surrogate_values_on_a_hand_computed_example():
    # Two visual tokens (x = 1, 2) and one text token, all kept, D = 1, upstream gradient 1.
    hidden = torch.tensor([[[1.0], [2.0], [3.0]]], requires_grad=True)
    q = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    keep = torch.ones(1, 3, dtype=torch.bool)
    vis = torch.tensor([[True, True, False]])
    sgp_gather(hidden, keep, q, vis).sum().backward()
    # eta = [1, 2]: mu 1.5, sigma 0.5, z = [-1, 1]; d = -0.5 tanh(z); m = [1, 2] -> s = [2/3, 4/3]
    d = [0.5 * math.tanh(1.0), -0.5 * math.tanh(1.0)]
    s = [2 / 3, 4 / 3]
    expected = [0.8 * d[0] * s[0] * 0.25, 0.8 * d[1] * s[1] * 0.25, 0.0]
    torch.testing.assert_close(q.grad[0], torch.tensor(expected))


def test_dropped_tokens_count_in_release_statistics_but_not_in_paper_ones():
    hidden = torch.tensor([[[1.0], [2.0], [4.0]]])
    q = torch.tensor([[0.6, 0.3, 0.7]])
    keep = torch.tensor([[True, False, True]])
    vis = torch.ones(1, 3, dtype=torch.bool)
    grads = {}
    for stats in ("visual", "kept"):
        h, qq = hidden.clone().requires_grad_(), q.clone().requires_grad_()
        sgp_gather(h, keep, qq, vis, config=SGPConfig(statistics=stats, zero_mean=stats == "visual")).sum().backward()
        grads[stats] = qq.grad[0]
    # release: eta = [1, 0, 4] over all three; the dropped token sits below the mean -> pushed to pruning.
    assert grads["visual"][1] > 0 and grads["visual"][2] < 0
    # paper: stats over kept [1, 4]: mu 2.5, sigma 1.5, z = [-1, 1] -> opposite signs for the kept two.
    assert grads["kept"][0] > 0 and grads["kept"][2] < 0
    assert not torch.allclose(grads["visual"], grads["kept"])


def test_sgp_direction_property_of_appendix_a13():
    torch.manual_seed(1)
    B, L, D = 3, 40, 8
    hidden = torch.randn(B, L, D, requires_grad=True)
    q = torch.rand(B, L).clamp(0.1, 0.9).requires_grad_()
    vis = torch.zeros(B, L, dtype=torch.bool)
    vis[:, 2:34] = True
    keep = torch.rand(B, L) > 0.3
    keep |= ~vis
    out = sgp_gather(hidden, keep, q, vis, config=SGPConfig(zero_mean=False))
    upstream = torch.randn_like(out)
    out.backward(upstream)
    g = hidden.grad
    eta = (hidden.detach() * g).sum(-1)
    for b in range(B):
        mean = eta[b, vis[b]].mean()
        above = vis[b] & (eta[b] > mean + 1e-6)
        below = vis[b] & (eta[b] < mean - 1e-6)
        assert (q.grad[b, above] < 0).all() and (q.grad[b, below] > 0).all()


def test_soft_scale_weights_visual_rows_only():
    hidden = torch.ones(1, 3, 2)
    q = torch.tensor([[0.25, 0.5, 0.9]])
    vis = torch.tensor([[True, False, True]])
    out = soft_scale(hidden, q, vis)
    assert out[0, :, 0].tolist() == [0.25, 1.0, 0.8999999761581421]
    # A bf16 model's hidden states stay bf16 when the predictor's q is fp32.
    low = soft_scale(hidden.bfloat16(), q, vis)
    assert low.dtype == torch.bfloat16 and low[0, :, 0].tolist() == [0.25, 1.0, 0.8984375]


def test_kept_statistics_ignore_dropped_tokens_and_visual_statistics_do_not():
    from photon.core.config import SGPConfig
    from photon.core.sgp import surrogate_q_grad

    torch.manual_seed(0)
    x, g = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    q = torch.full((1, 6), 0.5, dtype=torch.bfloat16)
    vision = torch.tensor([[False, True, True, True, True, True]])
    keep = torch.tensor([[True, True, True, True, False, False]])  # tokens 4 and 5 dropped
    moved = x.clone()
    moved[0, 5] *= 7.0  # only a dropped token's eta and magnitude change
    for statistics, others_move in (("kept", False), ("visual", True)):
        config = SGPConfig(statistics=statistics)
        before, after = (surrogate_q_grad(v, g, q, keep, vision, config) for v in (x, moved))
        assert before.dtype == torch.bfloat16 and before[0, 0] == 0  # text rows get no gradient
        assert torch.equal(before[0, 1:5], after[0, 1:5]) != others_move, statistics
    with pytest.raises(ValueError, match="sgp.statistics must be 'visual' or 'kept', got 'all'"):
        surrogate_q_grad(x, g, q, keep, vision, SGPConfig(statistics="all"))


def test_masked_means_count_only_the_masked_entries():
    from photon.core.sgp import _masked_mean

    x = torch.tensor([[3.0, 10.0, 5.0], [2.0, 4.0, 6.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    assert _masked_mean(x, mask).flatten().tolist() == [3.0, 4.0, 0.0]  # an empty row: 0, not NaN


@pytest.mark.parametrize("hidden_grad, q_grad", [(True, False), (False, True), (True, True)])
def test_sgp_gather_returns_each_gradient_that_is_asked_for(hidden_grad, q_grad):
    hidden = torch.arange(12.0).reshape(1, 4, 3).requires_grad_(hidden_grad)
    q = torch.tensor([[0.5, 0.4, 0.7, 0.6]], requires_grad=q_grad)
    vision = torch.tensor([[False, True, True, True]])
    keep = torch.tensor([[True, True, False, True]])
    packed = sgp_gather(hidden, keep, q, vision)
    (packed * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    if hidden_grad:  # the kept rows get the upstream gradient, the dropped row none
        assert hidden.grad[0].tolist() == [[1.0, 2.0, 3.0]] * 2 + [[0.0, 0.0, 0.0]] + [[1.0, 2.0, 3.0]]
    if q_grad:
        assert q.grad[0, 0] == 0 and q.grad[0, 1:].abs().sum() > 0
    assert (hidden.grad is None) != hidden_grad and (q.grad is None) != q_grad


def test_keep_index_edge_cases():
    with pytest.raises(ValueError) as err:
        keep_index(torch.ones(1, 2, dtype=torch.bool), "middle")
    assert str(err.value) == "pad_side must be 'right' or 'left', got 'middle'"
    for side in ("right", "left"):  # an empty batch packs to zero columns
        index, valid = keep_index(torch.zeros(0, 5, dtype=torch.bool), side)
        assert index.shape == valid.shape == (0, 0)
    # Left padding when one sample keeps nothing and the other one token: M = 1.
    index, valid = keep_index(torch.tensor([[False, False, False], [False, False, True]]), "left")
    assert valid.tolist() == [[False], [True]] and index[1].tolist() == [2]


def test_sgp_gather_honours_left_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    keep = torch.tensor([[True, True, True], [False, True, False]])
    vis = torch.ones(2, 3, dtype=torch.bool)
    out = sgp_gather(hidden, keep, torch.full((2, 3), 0.5), vis, pad_side="left")
    assert (out[1, :2] == 0).all()
    torch.testing.assert_close(out[1, 2], hidden[1, 1])
