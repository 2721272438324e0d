"""What Photon needs from a backbone: how to load it, and how to count its visual tokens.

BackboneSpec is plain data every command can use without importing transformers; the
Adapter protocol is what the runtime (photon/core/runtime.py) asks of a loaded model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "qwen2.5-vl" | "qwen3-vl"
    source: str | None  # hub id; None for offline random-initialised test backbones
    description: str
    load: Callable[..., Any]  # load(source_or_folder, **options) -> (model, encoder)
    model_type: str = ""  # transformers config.model_type this backbone's adapter serves
    make_adapter: Callable[[Any], "Adapter"] | None = None  # make_adapter(model) -> Adapter
    load_folder: Callable[..., Any] | None = None  # load_folder(path, **options) -> Loaded, for checkpoint folders
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    volume_input: tuple[int, int, int] | None = None  # (D, H, W) the Photon 3D embedding expects
    volume_patch: tuple[int, int, int] | None = None  # (kd, kh, kw) of the Photon 3D embedding
    num_layers: int | None = None  # decoder layers, so options can be checked before loading
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_multiple(self) -> int:
        """Image sides must be multiples of this (patch x spatial merge)."""
        return self.patch_size * self.merge_size

    def visual_tokens(self, frames: int, height: int, width: int, *, volume: bool = False) -> int:
        """LLM visual tokens for frames already resized to the patch grid."""
        if volume and self.volume_patch is not None:
            kd, kh, kw = self.volume_patch
            return visual_token_count(frames, height, width, kh, self.merge_size, kd)
        return visual_token_count(frames, height, width, self.patch_size, self.merge_size, self.temporal_patch_size)


def visual_token_count(frames: int, height: int, width: int, patch: int, merge: int, temporal_patch: int) -> int:
    """ceil(T / temporal_patch) x (H / patch / merge) x (W / patch / merge)."""
    return math.ceil(frames / temporal_patch) * (height // patch // merge) * (width // patch // merge)


class LayerExtras(Protocol):
    """Per-token side inputs a backbone adds inside the decoder (Qwen3-VL's DeepStack)."""

    def apply(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """Called after decoder layer layer_idx; returns the (possibly updated) hidden states."""

    def gather(self, index: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> "LayerExtras":
        """The same extras after the sequence was packed with a keep index."""


class Adapter(Protocol):
    """What the backbone-agnostic runtime needs from a backbone: data, not control flow."""

    family: str
    merge_size: int  # spatial merge of the vision encoder (visual tokens per grid side)

    def text_model(self, model: nn.Module) -> nn.Module:
        """The module whose forward the runtime replaces (stock decoder layers, rotary, norm)."""

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The vision encoder (trained at its own learning rate in phase 2)."""

    def patch_embedding(self, model: nn.Module) -> nn.Module:
        """The patch embedding (the only module phase 1 trains)."""

    def install_volume_embedding(self, model: nn.Module, *, init: str, seed: int = 0) -> nn.Module:
        """Put Photon's grey 3D patch embedding in place of the backbone's RGB one."""

    def query_key(self, layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer's attention query (B, Hq, L, Dh) and key (B, Hkv, L, Dh) after RoPE, from its input."""

    def visual_kinds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) long: 1 at image placeholders, 2 at video placeholders, 0 elsewhere."""

    def instruction_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the instruction tokens ITS reads (spec section 3)."""

    def split_extras(self, kwargs: dict) -> tuple[LayerExtras | None, dict]:
        """Take the per-token side inputs out of the text model's kwargs."""

    # Optional: adapters that implement it serve pruners with `needs_vision_attention = True`.
    def capture_vision_attention(self, model: nn.Module) -> "VisionAttention":
        """Hook the vision encoder so a pruner can read the attention its tokens received there."""


class VisionAttention(Protocol):
    """What capture_vision_attention returns; the runtime removes it on detach."""

    def read(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) attention received in the vision encoder and (B, L, Dk) keys, at visual positions."""

    def remove(self) -> None: ...


@dataclass
class Loaded:
    """A loaded backbone: the stock model, Photon's input encoder, and Photon weights if any."""

    model: Any
    encoder: Any  # photon.adapters.qwen_inputs.QwenEncoder (SampleEncoder protocol)
    backbone: str
    photon: dict[str, Any] | None = None  # {"layer": l, "state": pruner state dict, ...} from a checkpoint
    # Loader options the folder's processor configs imply ({"frames": {...}, "video": {...}}):
    # over Photon's defaults, under the user's own (photon.wrapping.media_options).
    media_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
