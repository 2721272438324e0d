"""What every modality loader returns, and the dispatch that picks a loader for a path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from photon.core import plugins
from photon.core.errors import PhotonError


@dataclass
class Media:
    """Frames in the model-input convention, ready for a backbone's pixel packing.

    frames: (T, C, H, W) float32 in [0, 1]. For a CT volume T runs inferior -> superior,
    H anterior -> posterior, W patient-left -> patient-right (PHOTON_SPEC section 1), C = 1.
    Images and video frames have C = 3 (RGB) or 1 (grey).
    """

    frames: np.ndarray
    kind: str  # "volume" | "image" | "video"
    source: str
    fps: float | None = None  # frames per second of the sampled frames (video), 1.0 for volumes
    meta: dict[str, Any] = field(default_factory=dict)  # spacing, axcodes, original shape, timestamps...

    def __post_init__(self):
        if self.frames.ndim != 4:
            raise PhotonError(f"{self.source}: expected frames shaped (T, C, H, W), got {self.frames.shape}")


def explain(exc: BaseException) -> str:
    """A library exception as one line for a PhotonError message: its type and text."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@dataclass(frozen=True)
class Modality:
    """A loader to register with register_modalities, plus what `photon inspect` can ask of it.

    Calling it loads (loader(path, **options) -> Media). describe(path) returns facts about
    the file without resizing anything; model_shape(facts, **options) returns the frames
    shape the loader would produce with those options. Plain functions are valid loaders too.
    """

    kind: str  # "volume" | "image" | "video"
    load: Callable[..., Media]
    describe: Callable[..., dict[str, Any]] | None = None
    model_shape: Callable[..., tuple[int, int, int, int]] | None = None

    def __call__(self, path, **options) -> Media:
        return self.load(path, **options)


def choose_loader(path: str | Path, kind: str | None = None) -> tuple[str, Callable[..., Media]]:
    """The registered modality a plugin chooses for `path` (choose_modality hook): (name, loader)."""
    path = Path(path)
    if not path.exists():
        raise PhotonError(f"{path}: no such file or folder")
    pm = plugins.load_plugins()
    name = pm.hook.choose_modality(path=path, kind=kind)
    if name is None:
        raise PhotonError(f"{path}: no registered modality opens this file (kind={kind}); see `photon plugins`")
    registered = plugins.modalities().get(name)
    if registered is None:
        raise PhotonError(f"{path}: modality {name!r} was chosen but is not registered")
    return name, registered.obj


def load_media(path: str | Path, kind: str | None = None, **options) -> Media:
    """Open `path` with the modality a plugin chooses for it (choose_modality hook)."""
    _, loader = choose_loader(path, kind)
    return loader(Path(path), **options)
