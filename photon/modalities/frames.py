"""2D medical images: a single image (SLAKE), a set of 2-5 frames (MedFrameQA), DICOM slices.

Every frame of one Media is resized to one size on the backbone's patch grid (Qwen's
smart_resize of the largest frame), so a frame set packs like one image per frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.modalities.base import Media, Modality, explain
from photon.modalities.config import FramesConfig, options_from
from photon.modalities.resize import resize_frames, smart_resize
from photon.modalities.dicom import is_multiframe_volume
from photon.modalities.volumes import IMAGE_SUFFIXES, is_dicom_file


def frame_files(path: Path) -> list[Path]:
    """The image files `path` stands for: itself, or a folder's images and DICOM slices in name order."""
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_dicom_file(p))]
        if not files:
            raise PhotonError(f"{path}: no images in this folder; expected {', '.join(IMAGE_SUFFIXES)} or DICOM files")
        return files
    return [path]


def read_image(path: Path, cfg: FramesConfig) -> np.ndarray:
    """(n, C, H, W) float32 in [0, 1]: n = 1 for an ordinary image, the frame count of a multi-frame DICOM."""
    if not path.is_file():
        raise PhotonError(f"{path}: no such image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES and is_dicom_file(path):
        return _read_dicom_image(path, cfg)
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey: no fixed white level
                return _scale_to_unit(np.asarray(image, dtype=np.float32))[None, None]
            if image.mode in ("1", "L", "LA"):
                return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None, None]
            return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
    except PhotonError:
        raise
    except Exception as exc:
        raise PhotonError(f"{path}: not a readable image ({explain(exc)}); truncated or corrupt?") from exc


def _read_dicom_image(path: Path, cfg: FramesConfig) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise PhotonError(f"{path}: not a readable DICOM image ({explain(exc)}); truncated or corrupt?") from exc
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour (ultrasound, photographs)
        frames = pixels if pixels.ndim == 4 else pixels[None]
        return (frames / max(float(frames.max()), 1.0)).transpose(0, 3, 1, 2)
    frames = pixels if pixels.ndim == 3 else pixels[None]
    frames = frames * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    if cfg.window is not None:
        low, high = cfg.window
        frames = (np.clip(frames, low, high) - low) / (high - low)
    else:
        frames = _scale_to_unit(frames)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # stored inverted: high values are dark
        frames = 1.0 - frames
    return frames[:, None]


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise PhotonError("image holds NaN or infinite pixels")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    if frames.shape[1] == channels:
        return frames
    if channels == 3:
        return np.repeat(frames, 3, axis=1)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]  # ITU-R 601 luma
    return (frames * weights).sum(axis=1, keepdims=True)


def target_size(sizes: list[tuple[int, int]], cfg: FramesConfig) -> tuple[int, int]:
    """One grid size for a frame set: smart_resize of its largest frame."""
    height, width = max(sizes, key=lambda hw: hw[0] * hw[1])
    return smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)


def load_frames(path: str | Path | list, **options) -> Media:
    """An image, a folder of frames, or a list of image paths -> Media (T, C, H, W) of kind "image"."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise PhotonError("load_frames: an empty list of image paths")
        paths = [Path(p) for p in path]
        source = str(paths[0].parent)
    else:
        paths, source = frame_files(Path(path)), str(path)
    cfg = options_from(FramesConfig, options, source)
    if cfg.channels not in (1, 3):
        raise PhotonError(f"{source}: channels must be 1 or 3, got {cfg.channels}")
    images = []
    for file in paths:
        try:
            images.append(read_image(file, cfg))
        except PhotonError as exc:
            raise PhotonError(str(exc) if str(file) in str(exc) else f"{file}: {exc}") from exc
    media = frames_from_arrays(images, source, cfg)
    media.meta["files"] = [str(p) for p in paths]
    return media


def frames_from_arrays(images: list[np.ndarray], source: str, cfg: FramesConfig) -> Media:
    """Images already in memory ((n, C, H, W) float in [0, 1] each, e.g. from PIL) -> one Media,
    every frame resized to one size on the backbone's grid, with the configured channels."""
    images = [_to_channels(np.asarray(image, dtype=np.float32), cfg.channels) for image in images]
    sizes = [tuple(image.shape[-2:]) for image in images]
    height, width = target_size(sizes, cfg)
    frames = np.concatenate([resize_frames(image, height, width) for image in images])
    meta = {"original_sizes": [list(s) for s in sizes], "size": [height, width]}
    return Media(frames=frames, kind="image", source=source, fps=None, meta=meta)


def pil_frames(images: list, source: str, **options) -> Media:
    """PIL images (what dataset loaders such as lmms-eval's hand over) -> Media, like load_frames."""
    cfg = options_from(FramesConfig, options, source)
    arrays = []
    for image in images:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        arrays.append(rgb.transpose(2, 0, 1)[None])
    return frames_from_arrays(arrays, source, cfg)


def describe_frames(path: str | Path) -> dict[str, Any]:
    images = [read_image(file, FramesConfig()) for file in frame_files(Path(path))]
    return {"kind": "image", "frames": sum(len(i) for i in images), "sizes": [list(i.shape[-2:]) for i in images],
            "channels": sorted({int(i.shape[1]) for i in images}),
            "intensity_range": [float(min(i.min() for i in images)), float(max(i.max() for i in images))]}


def model_shape(facts: dict[str, Any], **options) -> tuple[int, int, int, int]:
    cfg = options_from(FramesConfig, options, "frames options")
    height, width = target_size([tuple(s) for s in facts["sizes"]], cfg)
    return (facts["frames"], cfg.channels, height, width)


@hookimpl
def register_modalities(register):
    register("frames", Modality(kind="image", load=load_frames, describe=describe_frames, model_shape=model_shape))


@hookimpl
def choose_modality(path, kind):
    if kind not in (None, "image"):
        return None
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "frames"
    if path.is_file() and is_dicom_file(path):
        # An enhanced multi-frame file with per-frame positions is a volume unless asked for as images.
        return "frames" if kind == "image" or not is_multiframe_volume(path) else None
    if path.is_dir() and (kind == "image" or any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())):
        return "frames"
    return None
