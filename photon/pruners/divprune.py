"""`divprune` (Alvar et al. 2025, "DivPrune: Diversity-based Visual Token Pruning").

Keep the subset of visual tokens that solves the max-min diversity problem greedily, in
cosine distance between their embeddings: first the token farthest from its nearest
neighbour, then repeatedly the token whose distance to the nearest already-kept token is
largest. Before the LLM by default (the paper's setting), on the LLM input embeddings;
selection.layer moves it inside the decoder, on that layer's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from photon.core.config import SelectionConfig
from photon.core.hookspecs import hookimpl
from photon.core.pruners import Selection, SelectionContext
from photon.pruners.budget import keep_counts, keep_ratio_for, layer_from

# Rows of the pairwise-distance block computed at once when finding the first token.
_ROWS = 1024


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) of a greedy max-min diverse subset of features (n, D) in cosine distance."""
    n = features.shape[0]
    k = min(k, n)
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    unit = F.normalize(features.float(), dim=-1)
    nearest = torch.empty(n, dtype=torch.float32, device=features.device)
    for lo in range(0, n, _ROWS):
        distance = 1 - unit[lo : lo + _ROWS] @ unit.T
        rows = torch.arange(distance.shape[0], device=features.device)
        distance[rows, rows + lo] = float("inf")  # a token is not its own neighbour
        nearest[lo : lo + _ROWS] = distance.amin(1)
    chosen = [int(nearest.argmax())]
    # to_kept[j]: distance from token j to its nearest kept token; kept tokens are excluded.
    to_kept = 1 - unit @ unit[chosen[0]]
    to_kept[chosen[0]] = float("-inf")
    for _ in range(k - 1):
        j = int(to_kept.argmax())
        chosen.append(j)
        to_kept = torch.minimum(to_kept, 1 - unit @ unit[j])
        to_kept[j] = float("-inf")
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


class DivPrunePruner:
    name = "divprune"

    def __init__(self, config: SelectionConfig | None = None, **_):
        self.config = config or SelectionConfig()
        self.ratio = keep_ratio_for(self.config, self.name)

    def layer_for(self, num_layers: int) -> int:
        return layer_from(self.config, -1, num_layers, self.name)

    def select(self, ctx: SelectionContext) -> Selection:
        vision = ctx.vision_mask.bool()
        counts = keep_counts(vision, self.ratio, self.config.min_keep)
        keep = torch.zeros_like(vision)
        with torch.no_grad():
            for b in range(vision.shape[0]):
                positions = vision[b].nonzero().squeeze(1)
                keep[b, positions[max_min_diverse(ctx.hidden[b, positions], int(counts[b]))]] = True
        return Selection(keep=keep, rule=f"divprune:{self.ratio:g}")

    def selection_flops(self, dims, shape) -> float:
        d = dims.text.hidden
        return float(2 * shape.visual * shape.visual * d + 2 * max(shape.kept - 1, 0) * shape.visual * d)


@hookimpl
def register_pruners(register):
    register("divprune", DivPrunePruner)
