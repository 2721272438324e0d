"""Photon's objective terms (PHOTON_SPEC section 6).

Logits (B, L, V) and labels (B, L) are aligned as in causal LM training: the logit at t
predicts the label at t + 1; labels of -100 are ignored. Only the answer rows are pushed
through the softmax, so a long visual prefix costs nothing here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def answer_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logit rows that predict answer tokens, and those tokens."""
    shifted_logits = logits[:, :-1]
    targets = labels[:, 1:].to(logits.device)
    valid = targets != IGNORE_INDEX
    return shifted_logits[valid].float(), targets[valid]


def answer_window(labels: torch.Tensor) -> int:
    """How many trailing positions hold every logit a causal loss on `labels` reads: from the
    position before the earliest label to the end (at least 1, at most the length).

    Removing tokens (pruning drops visual tokens, which come before the answers they serve)
    never moves a label further from the end, so the window stays sufficient after pruning.
    """
    valid = (labels != IGNORE_INDEX).any(0).nonzero()
    if valid.numel() == 0:
        return 1
    return min(labels.shape[1], labels.shape[1] - int(valid[0]) + 1)


def _zero(logits: torch.Tensor) -> torch.Tensor:
    # A zero that stays in the graph, so every rank runs the same backward.
    return logits.sum() * 0.0


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    rows, targets = answer_rows(logits, labels)
    if targets.numel() == 0:
        return _zero(logits)
    return F.cross_entropy(rows, targets)


def flip_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """mean over answer tokens of -log(1 - p(y) + eps): the complement of the kept set must not suffice."""
    rows, targets = answer_rows(logits, labels)
    if targets.numel() == 0:
        return _zero(logits)
    p = torch.softmax(rows, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return -torch.log(1 - p + eps).mean()


def robust_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-(mean entropy of the answer-token distributions): corrupted input should leave the model unsure."""
    rows, targets = answer_rows(logits, labels)
    if targets.numel() == 0:
        return _zero(logits)
    log_p = torch.log_softmax(rows, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return -entropy.mean()


def retention_rate(q: torch.Tensor, vision_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r_b = mean of q over sample b's visual tokens, and which samples have any."""
    mask = vision_mask.bool()
    has_visual = mask.any(1)
    n = mask.sum(1).clamp_min(1)
    rate = torch.where(mask, q.float(), torch.zeros_like(q, dtype=torch.float32)).sum(1) / n
    return rate, has_visual


def band_loss(q: torch.Tensor, vision_mask: torch.Tensor, low: float = 0.3, high: float = 0.8) -> torch.Tensor:
    """mean over samples with visual tokens of relu(r - high) + relu(low - r)."""
    rate, has_visual = retention_rate(q, vision_mask)
    per_sample = F.relu(rate - high) + F.relu(low - rate)
    if not has_visual.any():
        return q.sum() * 0.0
    return per_sample[has_visual].mean()


def band_triggered(q: torch.Tensor, vision_mask: torch.Tensor, low: float = 0.3, high: float = 0.8) -> torch.Tensor:
    """(B,) True where a sample's retention rate lies outside [low, high]."""
    rate, has_visual = retention_rate(q.detach(), vision_mask)
    return has_visual & ((rate > high) | (rate < low))


def combine_objective(
    *,
    main: torch.Tensor,
    band: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    objective: str = "release",
) -> torch.Tensor:
    """Assemble the loss of one batch.

    main is L_CE, or L_robust on an augmented batch. release (the default): on a flip
    batch the flip loss replaces the main term; the band is added when given.
    paper: the flip loss is added to the main term.
    """
    if objective == "release":
        total = flip if flip is not None else main
    elif objective == "paper":
        total = main if flip is None else main + flip
    else:
        raise ValueError(f"loss.objective must be 'release' or 'paper', got {objective!r}")
    if band is not None:
        total = total + band
    return total
