"""What Photon needs from a backbone: how to load it, and how to count its visual tokens.

The runtime-facing Adapter protocol (decoder layers, layer-l query/key, position slicing)
lives with the runtime; this module holds the data every command can use without
importing transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "qwen2.5-vl" | "qwen3-vl"
    source: str | None  # hub id; None for offline random-initialised test backbones
    description: str
    load: Callable[..., Any]  # load(source_or_folder, **options) -> (model, processor)
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    volume_input: tuple[int, int, int] | None = None  # (D, H, W) the Photon 3D embedding expects
    volume_patch: tuple[int, int, int] | None = None  # (kd, kh, kw) of the Photon 3D embedding
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
