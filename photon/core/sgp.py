"""Surrogate gradient propagation for the hard token drop (PHOTON_SPEC section 5).

One keep index per sample gathers every per-token tensor: keep_index() builds it,
gather_tokens() applies it without a surrogate (positions, masks, labels, caches), and
sgp_gather() applies it to layer l's output with the surrogate gradient to q.
"""

from __future__ import annotations

import torch

from photon.core.config import SGPConfig


def keep_index(keep: torch.Tensor, pad_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Kept positions per sample in original order, packed to the batch's largest count.

    Returns index (B, M) long and valid (B, M) bool. pad_side "right" puts padding after a
    sample's kept rows (spec section 5); "left" puts it before them, so the last real token
    stays last, which generate() relies on.
    """
    if pad_side not in ("right", "left"):
        raise ValueError(f"pad_side must be 'right' or 'left', got {pad_side!r}")
    keep = keep.bool()
    B, L = keep.shape
    positions = torch.arange(L, device=keep.device).expand(B, L)
    counts = keep.sum(1)
    M = int(counts.max()) if B else 0
    # Kept positions sort first, each group in original order (the keys are unique).
    order = torch.argsort((~keep).long() * L + positions, dim=1)[:, :M]
    slots = torch.arange(M, device=keep.device).expand(B, M)
    if pad_side == "right":
        return order, slots < counts.unsqueeze(1)
    shift = (M - counts).unsqueeze(1)
    index = torch.gather(order, 1, (slots - shift) % max(M, 1))
    return index, slots >= shift


def gather_tokens(
    x: torch.Tensor,
    index: torch.Tensor,
    valid: torch.Tensor,
    *,
    seq_dim: int = 1,
    batch_dim: int = 0,
    fill: float | int | bool = 0,
) -> torch.Tensor:
    """Gather x's sequence axis with a keep index; padding slots get `fill`.

    Works for hidden states (B, L, D), masks and labels (B, L), M-RoPE positions
    (3 or 4, B, L) with batch_dim=1, and caches (B, H, L, Dh) with seq_dim=2.
    """
    seq_dim %= x.dim()
    batch_dim %= x.dim()
    shape = [1] * x.dim()
    shape[batch_dim], shape[seq_dim] = index.shape
    idx = index.view(shape).expand(*[index.shape[1] if d == seq_dim else s for d, s in enumerate(x.shape)])
    out = torch.gather(x, seq_dim, idx)
    pad = ~valid.view(shape).expand_as(out)
    return out.masked_fill(pad, fill)


def scatter_tokens(packed: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of gather_tokens for (B, M, D): rows back to original positions, zeros elsewhere."""
    B, M, D = packed.shape
    out = packed.new_zeros(B, length, D)
    rows = packed.masked_fill(~valid.unsqueeze(-1), 0)
    # Padding slots point at some real position; they add zeros there.
    out.scatter_add_(1, index.unsqueeze(-1).expand(B, M, D), rows)
    return out


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum(1, keepdim=True).clamp_min(1)
    return torch.where(mask, x, torch.zeros_like(x)).sum(1, keepdim=True) / n


def surrogate_q_grad(
    x: torch.Tensor,
    g: torch.Tensor,
    q: torch.Tensor,
    keep: torch.Tensor,
    vision_mask: torch.Tensor,
    config: SGPConfig,
) -> torch.Tensor:
    """dL/dq at visual positions given layer l's output x and the scattered gradient g."""
    vision = vision_mask.bool()
    stats = vision & keep.bool() if config.statistics == "kept" else vision
    if config.statistics not in ("kept", "visual"):
        raise ValueError(f"sgp.statistics must be 'visual' or 'kept', got {config.statistics!r}")
    prod = x.float() * g.float()
    eta = prod.sum(-1)
    magnitude = prod.abs().sum(-1)
    mu = _masked_mean(eta, stats)
    sigma = _masked_mean((eta - mu) ** 2, stats).sqrt().clamp_min(config.sigma_floor)
    z = ((eta - mu) / sigma).clamp(-config.z_clip, config.z_clip)
    direction = 0.5 - (0.5 + 0.5 * torch.tanh(z))
    if config.zero_mean:
        direction = direction - _masked_mean(direction, stats)
    scale = (magnitude / _masked_mean(magnitude, stats).clamp_min(config.scale_eps)).clamp(
        config.scale_min, config.scale_max
    )
    qf = q.float()
    slope = (qf * (1 - qf)).clamp_min(config.slope_floor)
    grad = config.beta * direction * scale * slope
    return torch.where(vision, grad, torch.zeros_like(grad)).to(q.dtype)


class _SGPGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, q, keep, vision_mask, index, valid, config):
        ctx.save_for_backward(hidden, q, keep, vision_mask, index, valid)
        ctx.config = config
        return gather_tokens(hidden, index, valid)

    @staticmethod
    def backward(ctx, grad_packed):
        hidden, q, keep, vision_mask, index, valid = ctx.saved_tensors
        g = scatter_tokens(grad_packed, index, valid, hidden.shape[1])
        grad_q = None
        if ctx.needs_input_grad[1]:
            grad_q = surrogate_q_grad(hidden.detach(), g, q.detach(), keep, vision_mask, ctx.config)
        grad_hidden = g.to(hidden.dtype) if ctx.needs_input_grad[0] else None
        return grad_hidden, grad_q, None, None, None, None, None


def sgp_gather(
    hidden: torch.Tensor,
    keep: torch.Tensor,
    q: torch.Tensor,
    vision_mask: torch.Tensor,
    *,
    config: SGPConfig | None = None,
    pad_side: str = "right",
    index: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Hard-gather the kept rows of hidden (B, L, D) into (B, M, D) with the SGP backward.

    keep is True for kept visual tokens and for every non-visual token; q (B, L) is read at
    visual positions. The gradient to hidden is the scattered upstream gradient; q gets the
    surrogate of spec section 5. Pass index=keep_index(keep, pad_side) to reuse one index.
    """
    config = config or SGPConfig()
    if index is None:
        index = keep_index(keep, pad_side)
    return _SGPGather.apply(hidden, q, keep.bool(), vision_mask.bool(), index[0], index[1], config)


def soft_scale(hidden: torch.Tensor, q: torch.Tensor, vision_mask: torch.Tensor) -> torch.Tensor:
    """Soft stage: visual rows times q, text rows times 1, full length."""
    weight = torch.where(vision_mask.bool(), q.to(hidden.dtype), torch.ones_like(hidden[..., 0]))
    return hidden * weight.unsqueeze(-1)
