"""`ise-topk`: Photon's instruction-aware saliency (ISE, spec section 3) ranked at a fixed ratio.

The training-free half of ITS without the instance threshold: the same layer and the same
scores as `photon`, keeping the top round(keep_ratio x n_visual) tokens whatever the mode.
`photon` given a keep_ratio selects exactly these tokens; this name pins the rule down.
"""

from __future__ import annotations

import dataclasses

from photon.core.config import SelectionConfig
from photon.core.hookspecs import hookimpl
from photon.core.pruners import PhotonPruner, Selection, SelectionContext
from photon.pruners.budget import keep_ratio_for


class IseTopKPruner:
    name = "ise-topk"

    def __init__(self, config: SelectionConfig | None = None, *, hidden_size: int, **_):
        config = config or SelectionConfig()
        self.ratio = keep_ratio_for(config, self.name)
        self.config = dataclasses.replace(config, mode="zero_shot", rule="keep_ratio", theta=None)
        # Composition, not inheritance: this pruner is not a module, so attaching it adds no
        # (unused) threshold predictor to the model's state dict.
        self._its = PhotonPruner(self.config, hidden_size=hidden_size)

    def layer_for(self, num_layers: int) -> int:
        return self._its.layer_for(num_layers)

    def select(self, ctx: SelectionContext) -> Selection:
        selection = self._its.select(ctx)
        selection.rule = f"ise-topk:{self.ratio:g}"
        return selection

    def selection_flops(self, dims, shape) -> float:
        return self._its.selection_flops(dims, shape)


@hookimpl
def register_pruners(register):
    register("ise-topk", IseTopKPruner)
