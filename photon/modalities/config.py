"""Options of the built-in loaders, as structured configs (every key is in docs/config.md).

A loader takes its options as keyword arguments; `options_from` checks them against the
loader's schema so a misspelt option fails loudly instead of being ignored. Defaults are
PHOTON_SPEC section 1 (CT) and Qwen's own processor defaults (images, video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from photon.core.errors import PhotonError


@dataclass
class CTConfig:
    """CT volumes: the offline recipe and the load-time model input (spec section 1)."""

    axcodes: list[str] = field(default_factory=lambda: ["L", "P", "S"])  # what `photon preprocess` writes
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # mm, along the axcodes axes
    interpolation: str = "linear"  # resampling to `spacing`: linear | nearest
    hu_range: list[float] | None = field(default_factory=lambda: [-1000.0, 1000.0])  # clip; null: no clip
    crop: list[int] | None = field(default_factory=lambda: [364, 364, 364])  # centre crop/pad; null: keep
    pad_value: float = -1000.0  # air
    preprocess: bool = True  # run the offline recipe at load time too (a no-op on preprocessed files)
    size: list[int] | None = field(default_factory=lambda: [140, 280, 280])  # model (D, H, W); null: stored
    flip_w: bool = True
    calibration: str = "auto"  # auto | hu | raw | none (see docs/data.md)
    slope: float | None = None  # for raw volumes: HU = slope * stored + intercept
    intercept: float | None = None
    raw_min: float = 0.0  # auto: a volume whose minimum is at least this is raw, not HU
    # Channels from HU windows instead of one min-max grey channel (stock RGB embeddings):
    # preset names (lung, mediastinum, bone, brain, abdomen, full) or [low, high] HU; 1 or 3 of them.
    windows: list[Any] | None = None
    # Arrays without geometry (.npy, .npz; docs/data.md): axes are (D, H, W) in the model-input convention.
    array_spacing: list[float] | None = None  # [D, H, W] mm; null: the array is taken as prepared
    array_intensity: str = "auto"  # auto | unit ([0, 1], mapped onto hu_range) | hu
    array_key: str | None = None  # which array of an .npz (default: its only one)


@dataclass
class FramesConfig:
    """Single images, image sets and single DICOM slices."""

    factor: int = 28  # sides become multiples of this (patch x merge: 28 Qwen2.5-VL, 32 Qwen3-VL)
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    channels: int = 3  # 3: grey images are repeated to RGB; 1: colour images become luminance
    window: list[float] | None = None  # DICOM: HU window [low, high]; null: min-max per image


@dataclass
class VideoConfig:
    """Video files: uniform sampling and per-frame resizing."""

    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4
    max_frames: int = 768
    frame_factor: int = 2  # the sampled count is a multiple of this (Qwen's temporal patch)
    factor: int = 28
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    total_pixels: int | None = None  # budget over all sampled frames (Qwen3-VL's size.longest_edge); null: none
    min_total_pixels: int | None = None  # floor over all sampled frames (Qwen3-VL's size.shortest_edge)
    backend: str = "auto"  # auto (decord when importable, else PyAV) | decord | pyav


@dataclass
class DataConfig:
    """How records become model inputs: one options block per built-in modality."""

    ct: CTConfig = field(default_factory=CTConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    cache_dir: str | None = None  # preprocessed media are kept here between epochs
    cache_dtype: str = "float16"  # float16 halves the cache; float32 keeps frames bit-exact
    media_root: str | None = None  # relative media paths resolve here (default: the records file's folder)


Schema = TypeVar("Schema")


def options_from(schema: type[Schema], options: dict[str, Any], where: str) -> Schema:
    """Build a schema instance from keyword options, naming unknown keys and `where` they came from."""
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PhotonError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return dataclasses.replace(schema(), **values)


def snap_to_grid(length: int, multiple: int) -> int:
    """The nearest multiple of `multiple` (at least one)."""
    return max(multiple, int(round(length / multiple)) * multiple)


def options_for_backbone(spec: Any, data: DataConfig | None = None) -> dict[str, dict[str, Any]]:
    """Loader options per built-in modality for a photon.adapters.base.BackboneSpec.

    Volumes take the backbone's own 3D geometry when it has one; otherwise the configured
    size with H and W snapped to the backbone's patch grid. Images and video frames are
    resized to multiples of the grid.
    """
    data = data or DataConfig()
    grid = spec.grid_multiple
    ct = dataclasses.asdict(data.ct)
    if spec.volume_input is not None:
        ct["size"] = list(spec.volume_input)
    elif ct["size"] is not None:
        depth, height, width = ct["size"]
        ct["size"] = [depth, snap_to_grid(height, grid), snap_to_grid(width, grid)]
    frames = dict(dataclasses.asdict(data.frames), factor=grid)
    video = dict(dataclasses.asdict(data.video), factor=grid)
    return {"ct": ct, "frames": frames, "video": video}
