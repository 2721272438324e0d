"""Resizing to a backbone's patch grid (Qwen's rule) and the trilinear volume resize.

torch is imported inside the functions so that registering the loaders stays cheap.
"""

from __future__ import annotations

import math

import numpy as np

from photon.core.errors import PhotonError

MAX_ASPECT = 200  # Qwen's processors refuse images more elongated than this


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen-VL's target size: both sides multiples of `factor`, area within [min_pixels, max_pixels].

    Sides are first rounded to the nearest multiple; when the area then falls outside the
    bounds, both sides are scaled by the same factor (keeping the aspect ratio) and
    snapped down (too large) or up (too small).
    """
    if height <= 0 or width <= 0:
        raise PhotonError(f"cannot resize an image of {height}x{width} pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise PhotonError(f"an image of {height}x{width} is more elongated than {MAX_ASPECT}:1; Qwen-VL cannot take it")

    def multiple(length: float, snap) -> int:
        return snap(length / factor) * factor

    new_h, new_w = multiple(height, round), multiple(width, round)
    if new_h * new_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_h = max(factor, multiple(height / shrink, math.floor))
        new_w = max(factor, multiple(width / shrink, math.floor))
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h, new_w = multiple(height * grow, math.ceil), multiple(width * grow, math.ceil)
    return new_h, new_w


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, C, h, w) float in [0, 1] -> (T, C, height, width), bicubic with antialiasing (as Qwen's processor)."""
    if frames.shape[-2:] == (height, width):
        return np.ascontiguousarray(frames, dtype=np.float32)
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)), size=(height, width),
                            mode="bicubic", antialias=True, align_corners=False)
    # Bicubic overshoots at edges; frames must stay in [0, 1].
    return resized.clamp_(0.0, 1.0).numpy()


def resize_volume(volume: np.ndarray, shape: tuple[int, int, int] | None = None, *, scale: tuple[float, float, float] | None = None,
                  mode: str = "trilinear") -> np.ndarray:
    """A 3D array resized to `shape`, or by `scale` per axis (output floor(n * scale) voxels whose
    centres sit exactly 1 / scale input voxels apart), trilinear or nearest."""
    if scale is None and tuple(volume.shape) == tuple(shape):
        return np.ascontiguousarray(volume, dtype=np.float32)
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    size = None if scale is not None else tuple(shape)
    scale = tuple(float(s) for s in scale) if scale is not None else None
    if mode == "nearest":
        out = F.interpolate(tensor, size=size, scale_factor=scale, mode="nearest-exact", recompute_scale_factor=False if scale else None)
    else:
        out = F.interpolate(tensor, size=size, scale_factor=scale, mode="trilinear", align_corners=False,
                            recompute_scale_factor=False if scale else None)
    return out[0, 0].numpy()


def frame_pixel_bounds(min_pixels: int, max_pixels: int, total_pixels: int | None, min_total_pixels: int | None,
                       frames: int) -> tuple[int, int]:
    """Per-frame (min, max) pixels when a budget covers all `frames` frames together."""
    low, high = min_pixels, max_pixels
    if total_pixels is not None:
        high = min(high, total_pixels // max(frames, 1))
    if min_total_pixels is not None:
        low = max(low, math.ceil(min_total_pixels / max(frames, 1)))
    return low, max(high, low)
