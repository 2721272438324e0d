"""Instruction-conditioned token scheduling (PHOTON_SPEC sections 3 and 4).

Shapes: B batch, L sequence, Hq query heads, Hkv key/value heads, Dh head size.
Masks are (B, L) bool; per-sample statistics run over that sample's visual positions.
"""

from __future__ import annotations

import torch
from torch import nn

N_FEATURES = 12
_INF_CLAMP = 1e8


def instruction_mask(
    input_ids: torch.Tensor,
    vision_end_id: int,
    im_end_id: int,
    *,
    exclude: torch.Tensor | None = None,
    im_start_id: int | None = None,
    header: int = 2,
) -> torch.Tensor:
    """Positions strictly after each vision-end token and before the next im-end token (the
    release's rule, spec section 3).

    exclude: (B, L) bool of positions that are never instruction (visual tokens inside a
    later visual block, Qwen3-VL's timestamp text between frame blocks).
    im_start_id: when given, a turn whose media are followed by nothing ("What moves?<video>")
    takes its own text tokens instead: every non-excluded token of the turn after
    <|im_start|> and its `header` role tokens ("user", "\n"), before its <|im_end|>.
    """
    B, L = input_ids.shape
    positions = torch.arange(L, device=input_ids.device).expand_as(input_ids)
    is_vision_end = input_ids == vision_end_id
    is_im_end = input_ids == im_end_id
    last_vision_end = torch.where(is_vision_end, positions, -1).cummax(dim=1).values
    last_im_end = torch.where(is_im_end, positions, -1).cummax(dim=1).values
    mask = (last_vision_end > last_im_end) & ~is_vision_end & ~is_im_end
    if exclude is not None:
        mask &= ~exclude.bool()
    if im_start_id is None:
        return mask
    is_im_start = input_ids == im_start_id
    turn = is_im_start.long().cumsum(dim=1)  # 0 before the first turn
    after_media = torch.zeros(B, L + 1, dtype=torch.long, device=input_ids.device).scatter_add_(1, turn, mask.long())
    has_media = torch.zeros(B, L + 1, dtype=torch.long, device=input_ids.device).scatter_add_(1, turn, is_vision_end.long())
    question_first = ((has_media > 0) & (after_media == 0)).gather(1, turn) & (turn > 0)
    turn_start = torch.where(is_im_start, positions, -1).cummax(dim=1).values
    inside = (positions > turn_start + header) & (last_im_end < turn_start) & ~is_vision_end & ~is_im_end
    if exclude is not None:
        inside &= ~exclude.bool()
    return mask | (question_first & inside)


@torch.no_grad()
def instruction_saliency(
    query: torch.Tensor,
    key: torch.Tensor,
    vision_mask: torch.Tensor,
    instruction_mask: torch.Tensor,
) -> torch.Tensor:
    """u_j for every visual token j, zeros elsewhere, (B, L) float32.

    query (B, Hq, L, Dh) and key (B, Hkv, L, Dh) are layer l's states after RoPE. Query
    head h reads key head h // (Hq / Hkv), as in transformers' repeat_kv. The batch is done at
    once: each sample's instruction tokens are packed to the front of a (B, T) block (T: the
    most any sample has) and the padding is masked out, so there is one host sync, not one per
    sample.
    """
    B, Hq, L, Dh = query.shape
    Hkv = key.shape[1]
    group = Hq // Hkv
    scale = Dh**-0.5
    instruction = instruction_mask.bool()
    T = int(instruction.sum(1).max()) if B else 0
    if T == 0:
        return torch.zeros(B, L, dtype=torch.float32, device=query.device)
    # Instruction positions first, in order (a stable sort of "not instruction"), then padding.
    order = torch.sort((~instruction).to(torch.uint8), dim=1, stable=True).indices[:, :T]  # (B, T)
    valid = instruction.gather(1, order)  # (B, T)
    q_t = query.gather(2, order[:, None, :, None].expand(B, Hq, T, Dh)).float().view(B, Hkv, group, T, Dh)
    k_t = key.gather(2, order[:, None, :, None].expand(B, Hkv, T, Dh)).float()  # (B, Hkv, T, Dh)
    scores = torch.einsum("bhgtd,bhsd->bhgts", q_t, k_t) * scale
    pair = valid[:, None, None, :, None] & valid[:, None, None, None, :]
    pair = pair & ~torch.eye(T, dtype=torch.bool, device=query.device)  # t' != t
    scores = torch.where(pair, scores.clamp_min(0), torch.zeros((), device=scores.device))
    c = scores.sum(-1).mean(dim=(1, 2))  # mean over the Hq heads -> (B, T)
    w = c / c.sum(1, keepdim=True).clamp_min(1.0)
    # sum_t w_t <q_t, k_j> = <sum_t w_t q_t, k_j>: one weighted query per head.
    q_bar = torch.einsum("bt,bhgtd->bhgd", w, q_t)
    u = torch.einsum("bhgd,bhld->bl", q_bar, key.float()) * (scale / Hq)
    return torch.where(vision_mask.bool(), u, torch.zeros((), device=u.device))


def _masked_minmax(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    big = torch.finfo(x.dtype).max
    lo = torch.where(mask, x, big).amin(dim=1, keepdim=True)
    hi = torch.where(mask, x, -big).amax(dim=1, keepdim=True)
    return lo, hi


def _sanitize(u: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(u.float(), nan=0.0, posinf=_INF_CLAMP, neginf=-_INF_CLAMP)


def normalized_saliency(u: torch.Tensor, vision_mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """rho = (u - min u) / (max u - min u + eps) per sample over visual tokens, 0 elsewhere."""
    u = _sanitize(u)
    mask = vision_mask.bool()
    lo, hi = _masked_minmax(u, mask)
    rho = (u - lo) / (hi - lo + eps)
    return torch.where(mask, rho, torch.zeros_like(rho))


def saliency_is_flat(u: torch.Tensor, vision_mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B,) True where a sample's visual saliency carries no ordering (all equal or no visual token)."""
    u = _sanitize(u)
    mask = vision_mask.bool()
    lo, hi = _masked_minmax(u, mask)
    return ((hi - lo).squeeze(1) <= eps) | ~mask.any(1)


def threshold_features(u: torch.Tensor, vision_mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, 12) features in spec order; zeros for a sample without visual tokens.

    [mean, std, min, max, q25, median] of rho; [mean, std, min, max] of u;
    [mean, max] of slog(u) = sign(u) log1p(|u|). std is the population std.
    """
    u = _sanitize(u)
    mask = vision_mask.bool()
    rho = normalized_saliency(u, mask, eps)
    rows = []
    for b in range(u.shape[0]):
        m = mask[b]
        if not m.any():
            rows.append(u.new_zeros(N_FEATURES))
            continue
        r, x = rho[b, m], u[b, m]
        slog = torch.sign(x) * torch.log1p(x.abs())
        quantiles = torch.quantile(r, torch.tensor([0.25, 0.5], device=r.device), interpolation="linear")
        rows.append(
            torch.stack(
                [
                    r.mean(), r.std(correction=0), r.min(), r.max(), quantiles[0], quantiles[1],
                    x.mean(), x.std(correction=0), x.min(), x.max(),
                    slog.mean(), slog.max(),
                ]
            )
        )
    return _sanitize(torch.stack(rows))


class ThresholdPredictor(nn.Module):
    """Instance-aware threshold: 12 saliency features -> theta in (0, theta_scale).

    Parameter names (mlp.0, mlp.2) match the released checkpoints' `atp.predictor.mlp.*`.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        hidden_div: int = 8,
        theta_scale: float = 0.9,
        bias_init: float = -5.0,
    ):
        super().__init__()
        width = max(1, hidden_size // hidden_div)
        self.theta_scale = theta_scale
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, width), nn.GELU(), nn.Linear(width, 1))
        with torch.no_grad():
            self.mlp[2].bias.fill_(bias_init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, 12) -> theta (B,)."""
        weight = self.mlp[0].weight
        out = self.mlp(features.to(device=weight.device, dtype=weight.dtype))
        return self.theta_scale * torch.sigmoid(out.squeeze(-1))


def retention(rho: torch.Tensor, theta: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """q = sigmoid((rho - theta) / tau), (B, L); theta is (B,)."""
    return torch.sigmoid((rho.float() - theta.float().unsqueeze(-1)) / tau)


def keep_from_retention(q: torch.Tensor, vision_mask: torch.Tensor) -> torch.Tensor:
    """Hard keep mask over visual tokens: q > 0.5."""
    return (q > 0.5) & vision_mask.bool()


def top_k_by_rho(rho: torch.Tensor, vision_mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep each sample's `counts[b]` highest-rho visual tokens (ties: earlier position first)."""
    mask = vision_mask.bool()
    score = torch.where(mask, rho.float(), torch.full_like(rho, -1.0, dtype=torch.float32))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(rho.shape[1], device=rho.device).expand_as(order))
    return (ranks < counts.unsqueeze(1)) & mask


def enforce_min_keep(keep: torch.Tensor, rho: torch.Tensor, vision_mask: torch.Tensor, min_keep: int = 1) -> torch.Tensor:
    """A sample keeping fewer than min_keep (>= 1) visual tokens also keeps its min_keep highest-rho ones."""
    mask = vision_mask.bool()
    n_visual = mask.sum(1)
    floor = torch.clamp(n_visual, max=max(1, int(min_keep)))
    short = (keep & mask).sum(1) < floor
    if not short.any():
        return keep & mask
    return (keep & mask) | (top_k_by_rho(rho, mask, floor) & short.unsqueeze(1))


def zero_shot_keep(
    rho: torch.Tensor,
    vision_mask: torch.Tensor,
    *,
    rule: str = "mean",
    theta: float | None = None,
    keep_ratio: float | None = None,
    min_keep: int = 1,
) -> torch.Tensor:
    """Training-free keep mask over visual tokens.

    mean: rho strictly above the sample's mean rho (the instance-adaptive default);
    theta: rho above a fixed threshold; keep_ratio: top round(ratio * n_visual) by rho.
    """
    mask = vision_mask.bool()
    rho = rho.float()
    if rule == "mean":
        n = mask.sum(1, keepdim=True).clamp_min(1)
        mean = torch.where(mask, rho, torch.zeros_like(rho)).sum(1, keepdim=True) / n
        keep = (rho > mean) & mask
    elif rule == "theta":
        if theta is None:
            raise ValueError("zero-shot rule 'theta' needs a theta value (selection.theta)")
        keep = (rho > float(theta)) & mask
    elif rule == "keep_ratio":
        if keep_ratio is None or not 0.0 < float(keep_ratio) <= 1.0:
            raise ValueError(f"zero-shot rule 'keep_ratio' needs 0 < keep_ratio <= 1, got {keep_ratio}")
        counts = torch.round(mask.sum(1).float() * float(keep_ratio)).long()
        keep = top_k_by_rho(rho, mask, counts)
    else:
        raise ValueError(f"unknown zero-shot rule {rule!r}; expected mean, theta or keep_ratio")
    return enforce_min_keep(keep, rho, mask, min_keep)
