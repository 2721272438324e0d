"""What every fixed-ratio pruner shares: the keep budget, the top-k over visual tokens, the layer."""

from __future__ import annotations

import torch

from photon.core.config import SelectionConfig
from photon.core.errors import PhotonError


def keep_ratio_for(config: SelectionConfig, pruner: str) -> float:
    """The configured keep ratio, or a clear error: baselines have no threshold of their own."""
    ratio = config.keep_ratio
    if ratio is None:
        raise PhotonError(f"pruner {pruner!r} keeps a fixed fraction of visual tokens: set keep_ratio (0 < keep_ratio <= 1)")
    if not 0.0 < float(ratio) <= 1.0:
        raise PhotonError(f"pruner {pruner!r}: keep_ratio must lie in (0, 1], got {ratio}")
    return float(ratio)


def keep_counts(vision_mask: torch.Tensor, ratio: float, min_keep: int = 1) -> torch.Tensor:
    """(B,) visual tokens to keep: round(ratio x n_visual), at least min(min_keep, n_visual).

    Rounds like Photon's keep_ratio rule (half to even), so every pruner keeps the same count.
    """
    n_visual = vision_mask.sum(1)
    counts = torch.round(n_visual.float() * ratio).long()
    return torch.maximum(counts, n_visual.clamp(max=max(1, int(min_keep))))


def top_k_visual(scores: torch.Tensor, vision_mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: each sample's counts[b] highest-scoring visual tokens (ties: earlier first)."""
    mask = vision_mask.bool()
    ranked = torch.where(mask, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (ranks < counts.unsqueeze(1)) & mask


def layer_from(config: SelectionConfig, default: int, num_layers: int, pruner: str) -> int:
    """selection.layer when set (-1: before the LLM), else the pruner's own default."""
    layer = default if config.layer is None else int(config.layer)
    if not -1 <= layer < num_layers:
        raise PhotonError(f"pruner {pruner!r}: selection layer {layer} is outside -1..{num_layers - 1}")
    return layer
