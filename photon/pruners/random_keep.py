"""`random`: keep a uniform random subset of each sample's visual tokens.

It prunes at Photon's layer (floor(L/4) - 1 unless selection.layer says otherwise), so against
`photon` only the rule differs: the floor any saliency must beat at the same cost.
"""

from __future__ import annotations

import torch

from photon.core.config import SelectionConfig
from photon.core.hookspecs import hookimpl
from photon.core.pruners import Selection, SelectionContext, default_layer
from photon.pruners.budget import keep_counts, keep_ratio_for, layer_from, top_k_visual


class RandomPruner:
    name = "random"

    def __init__(self, config: SelectionConfig | None = None, *, seed: int = 0, **_):
        self.config = config or SelectionConfig()
        self.ratio = keep_ratio_for(self.config, self.name)
        # One generator for the pruner's life: repeated prompts draw different subsets, and a
        # run is reproducible from its seed.
        self.generator = torch.Generator().manual_seed(seed)

    def layer_for(self, num_layers: int) -> int:
        return layer_from(self.config, default_layer(num_layers), num_layers, self.name)

    def select(self, ctx: SelectionContext) -> Selection:
        vision = ctx.vision_mask.bool()
        scores = torch.rand(vision.shape, generator=self.generator).to(vision.device)
        keep = top_k_visual(scores, vision, keep_counts(vision, self.ratio, self.config.min_keep))
        return Selection(keep=keep, rule=f"random:{self.ratio:g}")

    def selection_flops(self, dims, shape) -> float:
        return 0.0


@hookimpl
def register_pruners(register):
    register("random", RandomPruner)
