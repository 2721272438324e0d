"""What `photon app` draws, as plain arrays: slices of a volume in three planes under a CT
window, frames of a video, and the kept tokens over them at their real footprint.

A volume is shown on the model-input grid (D, H, W) in the model-input convention (D inferior
-> superior, H anterior -> posterior, W patient-left -> patient-right), so a token's cells line
up with the pixels it was made from: temporal token r covers slices [r x tp, (r + 1) x tp), a
spatial token a square of H / h by W / w pixels (patch x merge; tp is the temporal patch: 2 for
Qwen's RGB embedding, 14 for Photon's 3D one). Axial images have rows anterior -> posterior and
columns patient-left -> patient-right; coronal and sagittal images put superior at the top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.ct import WINDOW_PRESETS

PLANES = ("axial", "coronal", "sagittal")
# What the display volume holds: HU clipped to the recipe's range, as loaded with windows=[full].
DISPLAY_WINDOW = WINDOW_PRESETS["full"]
VIEW_WINDOWS = ("lung", "mediastinum", "bone", "full")
KEPT_TINT = np.array([255.0, 120.0, 0.0])
KEPT_ALPHA = 0.45
DROPPED_DIM = 0.35
GRID_SHADE = 0.6
SHOWN_SIDE = 384  # small model inputs are enlarged (whole pixels, nearest) to at least this


@dataclass
class Display:
    """The pixels to show: a volume in HU (D, H, W) or frames in [0, 1] (T, H, W, 3)."""

    kind: str  # "volume" | "frames"
    pixels: np.ndarray

    @property
    def depth(self) -> int:
        return int(self.pixels.shape[0])

    def planes(self) -> tuple[str, ...]:
        return PLANES if self.kind == "volume" else ("frames",)

    def slices(self, plane: str) -> int:
        """How many slices the slider runs over in `plane`."""
        if self.kind != "volume":
            return self.depth
        return int(self.pixels.shape[{"axial": 0, "coronal": 1, "sagittal": 2}[check_plane(plane)]])


def check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise PhotonError(f"plane {plane!r}: expected one of {', '.join(PLANES)}")
    return plane


def display_of(media, display_media=None) -> Display:
    """A Display for a loaded Media. Volumes take `display_media`: the same volume loaded with
    windows=[full] (absolute HU on the model grid) so that any window can be applied afterwards."""
    if media.kind == "volume":
        source = display_media if display_media is not None else media
        low, high = DISPLAY_WINDOW
        return Display("volume", (low + source.frames[:, 0] * (high - low)).astype(np.float32))
    frames = media.frames
    if frames.shape[1] == 1:
        frames = np.repeat(frames, 3, axis=1)
    return Display("frames", frames.transpose(0, 2, 3, 1).astype(np.float32))


def window_range(window: str) -> tuple[float, float]:
    if window not in WINDOW_PRESETS:
        raise PhotonError(f"window {window!r}: expected one of {', '.join(VIEW_WINDOWS)}")
    return WINDOW_PRESETS[window]


def cut(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One plane of a (D, H, W, ...) array, superior at the top for coronal and sagittal."""
    if plane == "axial":
        return volume[index]
    if plane == "coronal":
        return volume[::-1, index]
    if plane == "sagittal":
        return volume[::-1, :, index]
    raise PhotonError(f"plane {plane!r}: expected one of {', '.join(PLANES)}")


def slice_image(display: Display, plane: str, index: int, window: str = "full") -> np.ndarray:
    """(rows, columns, 3) uint8: one slice under a CT window, or one frame."""
    index = clamp(index, display.slices(plane))
    if display.kind == "frames":
        return (np.clip(display.pixels[index], 0, 1) * 255).round().astype(np.uint8)
    low, high = window_range(window)
    grey = np.clip((cut(display.pixels, plane, index) - low) / (high - low), 0, 1)
    return (np.repeat(grey[..., None], 3, axis=-1) * 255).round().astype(np.uint8)


def clamp(index: int, count: int) -> int:
    return int(min(max(int(index), 0), count - 1))


def expand_tokens(grid: np.ndarray, shape: tuple[int, int, int], temporal_patch: int, fill=0) -> np.ndarray:
    """A per-token (t, h, w) array spread over the (T, H, W) model input, each token over its footprint;
    frames past the last whole temporal patch belong to no token and get `fill`."""
    t, h, w = grid.shape
    depth, height, width = shape
    if height % h or width % w:
        raise PhotonError(f"token grid {h} x {w} does not tile the {height} x {width} input")
    out = np.repeat(np.repeat(np.repeat(grid, temporal_patch, axis=0), height // h, axis=1), width // w, axis=2)
    if out.shape[0] < depth:
        out = np.concatenate([out, np.full((depth - out.shape[0], height, width), fill, dtype=out.dtype)])
    return out[:depth]


def overlay(image: np.ndarray, kept: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """The slice with kept cells tinted and dropped cells dimmed; token borders shaded."""
    base = image.astype(np.float32)
    out = np.where(kept[..., None], base * (1 - KEPT_ALPHA) + KEPT_TINT * KEPT_ALPHA, base * DROPPED_DIM)
    if cells is not None:
        border = np.zeros(cells.shape, bool)
        border[1:, :] |= cells[1:, :] != cells[:-1, :]
        border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
        out[border] *= GRID_SHADE
    return out.round().clip(0, 255).astype(np.uint8)


def selection_overlay(display: Display, keep: np.ndarray, temporal_patch: int, plane: str, index: int,
                      window: str = "full") -> np.ndarray:
    """slice_image with one question's kept tokens (a (t, h, w) grid) over it, at their footprint."""
    image = slice_image(display, plane, index, window)
    keep = np.asarray(keep, bool)
    shape = display.pixels.shape[:3]
    kept = expand_tokens(keep, shape, temporal_patch, fill=False)
    cells = expand_tokens(np.arange(keep.size).reshape(keep.shape), shape, temporal_patch, fill=-1)
    index = clamp(index, display.slices(plane))
    if display.kind == "frames":
        return overlay(image, kept[index], cells[index])
    return overlay(image, cut(kept, plane, index), cut(cells, plane, index))


def enlarge(image: np.ndarray | None, side: int = SHOWN_SIDE) -> np.ndarray | None:
    """Repeat each pixel so the longest side reaches `side`: token cells stay aligned and sharp."""
    if image is None:
        return None
    factor = max(1, -(-side // max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image
