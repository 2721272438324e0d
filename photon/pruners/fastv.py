"""`fastv` (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2").

Rule: after the first K decoder layers (K = 2), rank visual tokens by the attention the last
prompt token pays them in layer K's attention (softmax over every key, averaged over heads)
and keep the top ones; layers K+1.. see only those. In this runtime's 0-based terms the
ranking layer and the pruned output are layer K - 1 = 1; selection.layer overrides it.
"""

from __future__ import annotations

import torch

from photon.core.config import SelectionConfig
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.core.pruners import Selection, SelectionContext
from photon.pruners.budget import keep_counts, keep_ratio_for, layer_from, top_k_visual

FASTV_K = 2


def last_token_attention(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) float32: the last real token's attention probabilities, averaged over query heads.

    query (B, Hq, L, Dh) and key (B, Hkv, L, Dh) after RoPE; query head h reads key head
    h // (Hq / Hkv). Padding keys get no attention.
    """
    B, Hq, L, Dh = query.shape
    real = attention_mask.bool()
    positions = torch.arange(L, device=query.device).expand(B, L)
    last = torch.where(real, positions, -1).amax(1)
    q_last = query[torch.arange(B, device=query.device), :, last].float()  # (B, Hq, Dh)
    k = key.float().repeat_interleave(Hq // key.shape[1], dim=1)  # (B, Hq, L, Dh)
    logits = torch.einsum("bhd,bhld->bhl", q_last, k) * Dh**-0.5
    logits = logits.masked_fill(~real.unsqueeze(1), float("-inf"))
    return torch.softmax(logits, dim=-1).mean(1)


class FastVPruner:
    name = "fastv"

    def __init__(self, config: SelectionConfig | None = None, **_):
        self.config = config or SelectionConfig()
        self.ratio = keep_ratio_for(self.config, self.name)

    def layer_for(self, num_layers: int) -> int:
        layer = layer_from(self.config, FASTV_K - 1, num_layers, self.name)
        if layer < 0:
            raise PhotonError("pruner 'fastv' ranks by a decoder layer's attention: its layer must be >= 0")
        return layer

    def select(self, ctx: SelectionContext) -> Selection:
        query, key = ctx.query_key
        scores = last_token_attention(query, key, ctx.attention_mask)
        vision = ctx.vision_mask.bool()
        keep = top_k_visual(scores, vision, keep_counts(vision, self.ratio, self.config.min_keep))
        return Selection(keep=keep, rule=f"fastv:{self.ratio:g}")

    def selection_flops(self, dims, shape) -> float:
        t = dims.text
        projections = 2 * t.hidden * t.heads * t.head_dim + 2 * shape.tokens * t.hidden * t.kv_heads * t.head_dim
        return float(projections + 2 * shape.tokens * t.heads * t.head_dim)


@hookimpl
def register_pruners(register):
    register("fastv", FastVPruner)
