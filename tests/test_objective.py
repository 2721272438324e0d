"""Band, flip and robust losses and the schedule (PHOTON_SPEC section 6)."""

import math
import re

import pytest
import torch

from photon.core import losses
from photon.core.config import ScheduleConfig
from photon.core.schedule import AUGMENTATIONS, Schedule, Stage, batch_generator, plan_batch, robust_augment


@pytest.mark.parametrize("rate, expected", [(0.1, 0.2), (0.3, 0.0), (0.55, 0.0), (0.8, 0.0), (0.95, 0.15)])
def test_band_loss_below_inside_and_above(rate, expected):
    q = torch.full((1, 4), rate)
    vis = torch.tensor([[True, True, True, False]])
    q[0, 3] = 0.0  # a text position must not count
    assert losses.band_loss(q, vis).item() == pytest.approx(expected, abs=1e-6)
    assert bool(losses.band_triggered(q, vis)[0]) == (expected > 0)


def test_band_loss_averages_samples_with_visual_tokens_only():
    q = torch.tensor([[0.1, 0.1], [0.9, 0.9]])
    vis = torch.tensor([[True, True], [False, False]])
    assert losses.band_loss(q, vis).item() == pytest.approx(0.2)


def _logits_for(p_correct, vocab=4):
    # logits with softmax prob p_correct on token 1
    rest = (1 - p_correct) / (vocab - 1)
    return torch.log(torch.tensor([rest, p_correct, rest, rest]))


def test_flip_and_robust_losses_on_hand_values():
    logits = torch.stack([_logits_for(0.5), _logits_for(0.9), _logits_for(0.25)]).unsqueeze(0)  # (1, 3, 4)
    labels = torch.tensor([[-100, 1, 1]])  # rows 0 and 1 predict answer tokens
    assert losses.flip_loss(logits, labels).item() == pytest.approx(
        (-math.log(0.5 + 1e-6) - math.log(0.1 + 1e-6)) / 2, rel=1e-5
    )
    h0 = -(0.5 * math.log(0.5) + 3 * (0.5 / 3) * math.log(0.5 / 3))
    h1 = -(0.9 * math.log(0.9) + 3 * (0.1 / 3) * math.log(0.1 / 3))
    assert losses.robust_entropy_loss(logits, labels).item() == pytest.approx(-(h0 + h1) / 2, rel=1e-5)
    assert losses.causal_lm_loss(logits, labels).item() == pytest.approx((-math.log(0.5) - math.log(0.9)) / 2, rel=1e-5)


def test_losses_without_answer_tokens_are_zero_and_keep_the_graph():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    labels = torch.full((1, 3), -100)
    for fn in (losses.causal_lm_loss, losses.flip_loss, losses.robust_entropy_loss):
        value = fn(logits, labels)
        assert value.item() == 0.0 and value.requires_grad


def test_combine_objective_release_and_paper():
    main, band, flip = torch.tensor(1.0), torch.tensor(0.5), torch.tensor(2.0)
    assert losses.combine_objective(main=main, band=band).item() == 1.5
    assert losses.combine_objective(main=main, band=band, flip=flip).item() == 2.5
    assert losses.combine_objective(main=main, flip=flip, objective="paper").item() == 3.0
    # Before the flip stage the paper's objective is the main loss alone (plus the band).
    assert losses.combine_objective(main=main, band=band, objective="paper").item() == 1.5
    with pytest.raises(ValueError, match="loss.objective must be 'release' or 'paper', got 'adam'"):
        losses.combine_objective(main=main, objective="adam")


def test_stage_boundaries():
    s = Schedule()
    assert [s.stage(t) for t in (0, 3999, 4000, 7999, 8000, 8999, 9000, 10**6)] == [
        Stage.FULL, Stage.FULL, Stage.SOFT, Stage.SOFT, Stage.HARD, Stage.HARD, Stage.FLIP, Stage.FLIP,
    ]
    scaled = Schedule.from_config(ScheduleConfig(scale_with_run=True), total_steps=100)
    assert (scaled.soft_start, scaled.hard_start, scaled.flip_start) == (40, 80, 90)
    with pytest.raises(ValueError):
        Schedule(10, 5, 20)


def test_batch_plans_are_reproducible_and_follow_the_probabilities():
    cfg = ScheduleConfig()
    s = Schedule()
    plans = [plan_batch(step, s, cfg) for step in range(9000, 13000)]
    assert plans == [plan_batch(step, s, cfg) for step in range(9000, 13000)]
    robust = sum(p.augment is not None for p in plans) / len(plans)
    flips = sum(p.flip for p in plans) / sum(p.augment is None for p in plans)
    assert 0.12 < robust < 0.18 and 0.03 < flips < 0.07
    assert not any(p.flip and p.augment for p in plans)
    assert {p.augment for p in plans if p.augment} == set(AUGMENTATIONS)
    # No flips before flip_start; no band term on augmented batches.
    assert not any(plan_batch(t, s, cfg).flip for t in range(8000, 9000))
    assert all(not p.band for p in plans if p.augment)
    assert not plan_batch(10, s, cfg).prunes
    assert [p.step for p in plans[:3]] == [9000, 9001, 9002]


@pytest.mark.parametrize("weights", [[1.0] * 5, [1.0, 1.0, 1.0, 1.0, 1.0, -0.5], [0.0] * 6])
def test_batch_plans_refuse_augmentation_weights_that_are_not_six_non_negative_ones(weights):
    cfg = ScheduleConfig(robust_prob=1.0, augment_probs=weights)
    with pytest.raises(ValueError, match=r"needs 6 non-negative weights, not all zero, got \[" + re.escape(", ".join(map(str, weights)))):
        plan_batch(0, Schedule(), cfg)


def test_a_zero_weight_turns_one_augmentation_off():
    cfg = ScheduleConfig(robust_prob=1.0, augment_probs=[0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    drawn = {plan_batch(t, Schedule(), cfg).augment for t in range(300)}
    assert drawn == set(AUGMENTATIONS[1:])


def test_robust_augmentations():
    torch.manual_seed(0)
    x = torch.rand(500, 40) + 1.0
    gen = lambda: batch_generator(3, 7)  # noqa: E731
    perm = robust_augment(x, "permute_patches", gen())
    assert torch.equal(perm.sort(0).values, x.sort(0).values) and not torch.equal(perm, x)
    both = robust_augment(x, "permute_patches_features", gen())
    assert torch.allclose(both.sum(), x.sum()) and not torch.equal(both.sort(0).values, x.sort(0).values)
    kept_rows = (robust_augment(x, "zero_patches", gen()).abs().sum(1) > 0).float().mean()
    assert 0.12 < kept_rows < 0.28
    kept_cols = (robust_augment(x, "zero_features", gen()).abs().sum(0) > 0).float().mean()
    assert kept_cols <= 0.25
    noise = robust_augment(x, "noise", gen())
    assert noise.min() >= x.min() and noise.max() <= x.max() and not torch.equal(noise, x)
    assert (robust_augment(x, "zeros", gen()) == 0).all()
    assert torch.equal(robust_augment(x, "noise", gen()), robust_augment(x, "noise", gen()))


def test_answer_window_spans_the_logits_a_causal_loss_reads():
    ignore = losses.IGNORE_INDEX
    labels = torch.tensor([[ignore, ignore, ignore, 5, 6, ignore], [ignore, ignore, ignore, ignore, 7, ignore]])
    # the earliest label is at 3: its logit is at 2, so the last 4 positions
    assert losses.answer_window(labels) == 4
    assert losses.answer_window(torch.full((2, 5), ignore)) == 1
    assert losses.answer_window(torch.tensor([[1, 2, 3]])) == 3  # never more than the length
    logits = torch.randn(2, 6, 11)
    window = losses.answer_window(labels)
    for fn in (losses.causal_lm_loss, losses.robust_entropy_loss, losses.flip_loss):
        torch.testing.assert_close(fn(logits[:, -window:], labels[:, -window:]), fn(logits, labels))


def test_a_training_forward_computes_logits_for_the_answer_window_only():
    """With labels, the wrapped model's loss equals stock's, from logits over the answer window."""
    import photon
    from photon.adapters.qwen2_5_vl import load_tiny
    from photon.adapters.qwen_inputs import model_inputs
    from tests.conftest import video_sample

    loaded = load_tiny()
    model = loaded.model.train()
    samples = [video_sample(0, 2, 56, 56, "Is there a lesion?", "Yes, on the left."), video_sample(1, 4, 56, 84, "Count them.", "Two.")]
    inputs = model_inputs(loaded.encoder.collate([loaded.encoder.encode(s, train=True) for s in samples]))
    stock = model(**inputs)
    photon.attach(model, mode="zero_shot", keep="all")
    wrapped = model(**inputs)
    window = losses.answer_window(inputs["labels"])
    assert wrapped.logits.shape[1] == window < inputs["input_ids"].shape[1]
    torch.testing.assert_close(wrapped.loss, stock.loss)
    torch.testing.assert_close(wrapped.logits, stock.logits[:, -window:])


def test_band_loss_without_visual_tokens_is_a_zero_that_keeps_the_graph():
    q = torch.tensor([[0.9, 0.7]], requires_grad=True)
    value = losses.band_loss(q, torch.tensor([[False, False]]))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert q.grad.tolist() == [[0.0, 0.0]]


def test_an_unscaled_schedule_takes_the_configured_boundaries_and_a_scaled_one_needs_the_run_length():
    cfg = ScheduleConfig(soft_start=10, hard_start=30, flip_start=35)
    assert Schedule.from_config(cfg, total_steps=100) == Schedule(10, 30, 35)  # scale_with_run is off
    with pytest.raises(ValueError, match="schedule.scale_with_run needs the run's total number of steps"):
        Schedule.from_config(ScheduleConfig(scale_with_run=True))


def test_batch_generators_differ_by_seed_and_by_step():
    draws = {(seed, step): batch_generator(seed, step).initial_seed() for seed in (0, 1, 7) for step in range(300)}
    assert len(set(draws.values())) == len(draws)
    assert batch_generator(7, 12).initial_seed() == batch_generator(7, 12).initial_seed()


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_robust_augmentations_follow_their_generator_and_keep_the_dtype(kind):
    x = (torch.rand(64, 12, generator=torch.Generator().manual_seed(1)) + 1.0).bfloat16()
    one, two = (robust_augment(x, kind, batch_generator(3, 7)) for _ in range(2))
    other = robust_augment(x, kind, batch_generator(3, 8))
    assert one.dtype == torch.bfloat16 and one.shape == x.shape and torch.equal(one, two)
    if kind != "zeros":  # the one augmentation that draws nothing
        assert not torch.equal(one, other)
    if kind == "noise":  # each row drawn on its own, within the matrix's range
        assert len({tuple(row.tolist()) for row in one}) == 64 and x.min() <= one.min() <= one.max() <= x.max()


def test_an_unknown_augmentation_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown augmentation 'blur'; expected one of " + ", ".join(AUGMENTATIONS)):
        robust_augment(torch.ones(2, 2), "blur", batch_generator(0, 0))


def test_flip_loss_stays_finite_when_the_model_is_certain():
    logits = torch.tensor([[[0.0, 200.0], [0.0, 200.0]]])  # p(answer) rounds to exactly 1 in float32
    loss = losses.flip_loss(logits, torch.tensor([[-100, 1]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-math.log(1e-6), rel=1e-3)
