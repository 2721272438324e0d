"""`visionzip` (Yang et al. 2025, "VisionZip: Longer is Better but Not Necessary").

Before the LLM, each sample keeps two kinds of visual tokens:
- dominant: the tokens that receive the most attention in the vision encoder (Qwen's ViT has
  no [CLS], so: attention received from every patch of the frame, in the last full-attention
  block, summed over the token's merged patches);
- contextual: the remaining tokens, split by uniformly spaced targets; every other remaining
  token joins the target whose vision-encoder key is most similar (cosine), and the target's
  row becomes the mean of its group. It keeps the target's position.
The paper's split is 54 dominant to 10 contextual, which contextual_fraction keeps at any budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from photon.core.config import SelectionConfig
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.core.pruners import Selection, SelectionContext
from photon.pruners.budget import keep_counts, keep_ratio_for, top_k_visual

CONTEXTUAL_FRACTION = 10 / 64


def contextual_count(kept: int, fraction: float) -> int:
    """Contextual tokens among `kept`: round(kept x fraction), leaving at least one dominant token."""
    return min(int(round(kept * fraction)), max(kept - 1, 0))


def merge_contextual(
    hidden: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, n_contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the positions `rest` (sorted) of one sample into n_contextual targets.

    hidden (L, D), keys (L, Dk). Returns the target positions and their merged rows (n, D).
    """
    step = max(1, rest.numel() // n_contextual)
    is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=rest.device)
    is_target[torch.arange(0, rest.numel(), step, device=rest.device)[:n_contextual]] = True
    targets, others = rest[is_target], rest[~is_target]
    rows = hidden[targets].float()
    sizes = torch.ones(targets.numel(), dtype=torch.float32, device=hidden.device)
    if others.numel():
        similarity = F.normalize(keys[others].float(), dim=-1) @ F.normalize(keys[targets].float(), dim=-1).T
        group = similarity.argmax(1)
        rows = rows.index_add(0, group, hidden[others].float())
        sizes = sizes.index_add(0, group, torch.ones_like(group, dtype=torch.float32))
    return targets, (rows / sizes.unsqueeze(1)).to(hidden.dtype)


class VisionZipPruner:
    name = "visionzip"
    needs_vision_attention = True

    def __init__(self, config: SelectionConfig | None = None, *, contextual_fraction: float = CONTEXTUAL_FRACTION, **_):
        self.config = config or SelectionConfig()
        self.ratio = keep_ratio_for(self.config, self.name)
        if self.config.layer not in (None, -1):
            raise PhotonError(f"pruner 'visionzip' selects before the LLM (layer -1), not at layer {self.config.layer}")
        self.contextual_fraction = contextual_fraction

    def layer_for(self, num_layers: int) -> int:
        return -1

    def select(self, ctx: SelectionContext) -> Selection:
        read = ctx.extras.get("vision_attention")
        if read is None:
            raise PhotonError("pruner 'visionzip' needs the vision encoder's attention; attach it with photon.attach")
        received, keys = read()
        vision = ctx.vision_mask.bool()
        counts = keep_counts(vision, self.ratio, self.config.min_keep)
        n_contextual = [contextual_count(int(c), self.contextual_fraction) for c in counts]
        keep = top_k_visual(received, vision, counts - torch.tensor(n_contextual, device=counts.device))
        hidden = ctx.hidden.clone()
        for b, n in enumerate(n_contextual):
            rest = (vision[b] & ~keep[b]).nonzero().squeeze(1)
            if n == 0 or rest.numel() == 0:
                continue
            targets, rows = merge_contextual(ctx.hidden[b], keys[b], rest, n)
            keep[b, targets] = True
            hidden[b, targets] = rows
        return Selection(keep=keep, rule=f"visionzip:{self.ratio:g}", hidden=hidden)

    def selection_flops(self, dims, shape) -> float:
        v = dims.vision
        patches = sum(h * w for h, w in shape.frames)
        scores = sum(2 * (h * w) ** 2 * v.hidden for h, w in shape.frames)  # q.k over each frame, all heads
        contextual = contextual_count(shape.kept, self.contextual_fraction)
        rest = shape.visual - (shape.kept - contextual)
        merge = 2 * rest * contextual * (v.hidden // v.heads)
        return float(2 * patches * v.hidden * 3 * v.hidden + scores + merge)


@hookimpl
def register_pruners(register):
    register("visionzip", VisionZipPruner)
