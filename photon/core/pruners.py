"""The Pruner protocol, and Photon's own pruner (ITS with a trained or training-free threshold).

A pruner decides which visual tokens survive; the runtime removes the rest. Pruners see a
SelectionContext and return a Selection; they know nothing about files or backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from photon.core import its
from photon.core.config import SelectionConfig
from photon.core.hookspecs import hookimpl


@dataclass
class SelectionContext:
    """What a pruner may look at, at its selection layer."""

    hidden: torch.Tensor  # (B, L, D) input of the selection layer
    vision_mask: torch.Tensor  # (B, L) bool
    instruction_mask: torch.Tensor  # (B, L) bool
    attention_mask: torch.Tensor  # (B, L) bool, False on padding
    layer: int
    num_layers: int
    training: bool = False
    compute_query_key: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    input_ids: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # adapter-provided (vision attention, ...)

    @cached_property
    def query_key(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The selection layer's query (B, Hq, L, Dh) and key (B, Hkv, L, Dh) after RoPE."""
        if self.compute_query_key is None:
            raise RuntimeError("this selection point has no attention query/key (pre-LLM pruning)")
        return self.compute_query_key()


@dataclass
class Selection:
    """A pruner's decision for one forward."""

    keep: torch.Tensor  # (B, L) bool, True for kept visual tokens (non-visual positions ignored)
    rule: str
    q: torch.Tensor | None = None  # (B, L) retention probabilities, differentiable when trainable
    theta: torch.Tensor | None = None  # (B,)
    rho: torch.Tensor | None = None  # (B, L) normalised scores over visual tokens
    u: torch.Tensor | None = None  # (B, L) raw saliency
    fallback: list[str | None] | None = None  # per sample: why everything was kept, if it was
    hidden: torch.Tensor | None = None  # replacement for the selection layer's output rows (merging pruners)


@runtime_checkable
class Pruner(Protocol):
    name: str

    def layer_for(self, num_layers: int) -> int:
        """The decoder layer whose output is pruned; -1 prunes the embeddings before layer 0."""

    def select(self, ctx: SelectionContext) -> Selection: ...


def pruner_rule(pruner) -> str:
    """How a pruner chooses, for records and messages: its rule() when it has one, else its name."""
    return pruner.rule() if hasattr(pruner, "rule") else getattr(pruner, "name", type(pruner).__name__)


def default_layer(num_layers: int) -> int:
    """The release's l = floor(L / 4) - 1 (8 for 36 layers), at least 0."""
    return max(0, num_layers // 4 - 1)


class PhotonPruner(nn.Module):
    """ITS saliency, then the learned instance threshold (trained) or a training-free rule."""

    name = "photon"

    def __init__(self, config: SelectionConfig | None = None, *, hidden_size: int, **_):
        super().__init__()
        self.config = config or SelectionConfig()
        c = self.config
        self.predictor = its.ThresholdPredictor(
            hidden_size, hidden_div=c.predictor_hidden_div, theta_scale=c.theta_scale, bias_init=c.predictor_bias_init
        )

    def layer_for(self, num_layers: int) -> int:
        layer = self.config.layer if self.config.layer is not None else default_layer(num_layers)
        if not 0 <= layer < num_layers:
            raise ValueError(f"selection layer {layer} is outside the decoder's layers 0..{num_layers - 1}")
        return layer

    def rule(self) -> str:
        c = self.config
        if c.keep == "all":
            return "keep=all"
        if c.keep_ratio is not None:
            return f"keep_ratio={c.keep_ratio:g}"
        if c.theta is not None:
            return f"theta={c.theta:g}"
        if c.mode == "zero_shot":
            return f"zero_shot:{c.rule}"
        if c.mode != "trained":
            raise ValueError(f"selection.mode must be 'trained' or 'zero_shot', got {c.mode!r}")
        return "trained"

    def select(self, ctx: SelectionContext) -> Selection:
        c = self.config
        vision = ctx.vision_mask.bool()
        query, key = ctx.query_key
        u = its.instruction_saliency(query, key, vision, ctx.instruction_mask)
        rho = its.normalized_saliency(u, vision, c.rho_eps)
        no_instruction = ~ctx.instruction_mask.bool().any(1)
        flat = its.saliency_is_flat(u, vision, c.flat_saliency_eps)
        rule = self.rule()
        q = theta = None
        if c.keep_ratio is not None:
            keep = its.zero_shot_keep(rho, vision, rule="keep_ratio", keep_ratio=c.keep_ratio, min_keep=c.min_keep)
        elif c.theta is not None:
            keep = its.zero_shot_keep(rho, vision, rule="theta", theta=c.theta, min_keep=c.min_keep)
            theta = torch.full((rho.shape[0],), float(c.theta), device=rho.device)
        elif c.mode == "zero_shot":
            keep = its.zero_shot_keep(rho, vision, rule=c.rule, theta=c.theta, min_keep=c.min_keep)
            if c.rule == "mean":
                theta = (rho * vision).sum(1) / vision.sum(1).clamp_min(1)
        else:
            theta = self.predictor(its.threshold_features(u, vision, c.rho_eps))
            q = its.retention(rho, theta, c.tau)
            keep = its.enforce_min_keep(its.keep_from_retention(q, vision), rho, vision, c.min_keep)
        # Without instruction tokens or with flat saliency there is nothing to rank by: keep all.
        degenerate = (no_instruction | flat) & vision.any(1)
        keep = torch.where(degenerate.unsqueeze(1), vision, keep)
        fallback = [
            ("no instruction tokens" if ni else "flat saliency") if d else None
            for d, ni in zip(degenerate.tolist(), no_instruction.tolist())
        ]
        return Selection(keep=keep, rule=rule, q=q, theta=theta, rho=rho, u=u, fallback=fallback)

    def selection_flops(self, dims, shape) -> float:
        """Multiply-adds x 2 of one sample's selection (photon bench): layer l's q/k, ISE, and u."""
        t = dims.text
        qk = 2 * shape.tokens * t.hidden * (t.heads + t.kv_heads) * t.head_dim
        ise = 2 * shape.instruction * (shape.instruction + 1) * t.heads * t.head_dim
        return float(qk + ise + 2 * shape.visual * t.heads * t.head_dim)


def make_photon_pruner(config: SelectionConfig | None = None, **context) -> PhotonPruner:
    return PhotonPruner(config, **context)


@hookimpl
def register_pruners(register):
    register("photon", make_photon_pruner)
