"""CT volumes: HU calibration, canonical orientation, the offline recipe and the model input.

Offline recipe (`photon preprocess`, spec section 1): reorient to the configured axcodes,
resample to 1 mm, clip HU, centre crop/pad with air. Load time: the same recipe (a no-op
on a preprocessed file), then [z, y, x] order, trilinear resize, per-volume min-max and
a flip along W. The net model-input convention holds whatever the file's affine:
D runs inferior -> superior, H anterior -> posterior, W patient-left -> patient-right.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.modalities.base import Media, Modality
from photon.modalities.config import CTConfig, options_from
from photon.modalities.resize import resize_volume
from photon.modalities.dicom import is_multiframe_volume
from photon.modalities.itk import recognises
from photon.modalities.volumes import Volume, is_dicom_file, is_volume_file, read_volume

# The array (i, j, k) in these axcodes, read as [k, j, i], is the model's (D, H, W) before
# the W flip: k inferior -> superior, j anterior -> posterior, i right -> left.
MODEL_AXCODES = ("L", "P", "S")
MODEL_CONVENTION = "D inferior->superior, H anterior->posterior, W patient-left->patient-right"
CALIBRATIONS = ("auto", "hu", "raw", "none")
# Window presets as (low, high) HU, from the usual width/level: lung W1500 L-600, mediastinum
# W400 L40, bone W1500 L300, brain W80 L40, abdomen W400 L50; full is the recipe's HU clip.
WINDOW_PRESETS = {"lung": (-1350.0, 150.0), "mediastinum": (-160.0, 240.0), "bone": (-450.0, 1050.0),
                  "brain": (0.0, 80.0), "abdomen": (-150.0, 250.0), "full": (-1000.0, 1000.0)}
_AXIS_OF = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def check_config(cfg: CTConfig, where: str) -> CTConfig:
    axcodes = [str(c).upper() for c in cfg.axcodes]
    if len(axcodes) != 3 or sorted(_AXIS_OF[c] for c in axcodes if c in _AXIS_OF) != [0, 1, 2]:
        raise PhotonError(f"{where}: axcodes {cfg.axcodes} must name each patient axis once, e.g. L P S")
    for name in ("spacing", "size", "crop"):
        value = getattr(cfg, name)
        if value is not None and (len(value) != 3 or min(value) <= 0):
            raise PhotonError(f"{where}: {name} {value} must be 3 positive numbers (or null)")
    if cfg.hu_range is not None and (len(cfg.hu_range) != 2 or cfg.hu_range[0] >= cfg.hu_range[1]):
        raise PhotonError(f"{where}: hu_range {cfg.hu_range} must be [low, high] with low < high (or null)")
    if cfg.calibration not in CALIBRATIONS:
        raise PhotonError(f"{where}: calibration {cfg.calibration!r} must be one of {', '.join(CALIBRATIONS)}")
    if cfg.interpolation not in ("linear", "nearest"):
        raise PhotonError(f"{where}: interpolation {cfg.interpolation!r} must be linear or nearest")
    if cfg.array_spacing is not None and (len(cfg.array_spacing) != 3 or min(cfg.array_spacing) <= 0):
        raise PhotonError(f"{where}: array_spacing {cfg.array_spacing} must be 3 positive numbers [D, H, W] mm (or null)")
    from photon.modalities.arrays import INTENSITIES

    if cfg.array_intensity not in INTENSITIES:
        raise PhotonError(f"{where}: array_intensity {cfg.array_intensity!r} must be one of {', '.join(INTENSITIES)}")
    windows = None if cfg.windows is None else resolve_windows(cfg.windows, where)
    return replace(cfg, axcodes=axcodes, windows=windows)


def resolve_windows(windows, where: str) -> list[list[float]]:
    """Preset names or [low, high] pairs -> [[low, high], ...]; one window (grey) or three (RGB)."""
    resolved = []
    for window in windows:
        if isinstance(window, str):
            if window.lower() not in WINDOW_PRESETS:
                raise PhotonError(f"{where}: window {window!r} is not a preset ({', '.join(WINDOW_PRESETS)}); or give [low, high] HU")
            resolved.append(list(WINDOW_PRESETS[window.lower()]))
            continue
        try:
            low, high = (float(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise PhotonError(f"{where}: window {window!r} must be a preset name or [low, high] HU") from exc
        if low >= high:
            raise PhotonError(f"{where}: window {window!r} must have low < high")
        resolved.append([low, high])
    if len(resolved) not in (1, 3):
        raise PhotonError(f"{where}: {len(resolved)} windows; give 1 (grey) or 3 (one per RGB channel)")
    return resolved


def calibrate(volume: Volume, cfg: CTConfig) -> Volume:
    """Values in HU, exactly once: raw volumes get slope/intercept, HU volumes are left alone.

    "auto" calls a volume raw when its minimum is at least cfg.raw_min: stored values of
    unrescaled CT start at 0, while any CT in HU holds air near -1000.
    """
    data = volume.data
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise PhotonError(f"{volume.source}: {bad} voxels are NaN or infinite; expected finite intensities (repair the file or fill them first)")
    lowest = float(data.min())
    meta = dict(volume.meta)
    if cfg.calibration in ("hu", "none"):
        meta["calibration"] = cfg.calibration
        return replace(volume, meta=meta)
    raw = cfg.calibration == "raw" or lowest >= cfg.raw_min
    if not raw:
        meta["calibration"] = "hu"
        if cfg.slope is not None or cfg.intercept is not None:
            meta["calibration"] = f"hu (minimum {lowest:g}): slope/intercept not applied again"
        return replace(volume, meta=meta)
    if cfg.slope is None or cfg.intercept is None:
        raise PhotonError(
            f"{volume.source}: looks like raw stored values, not HU (minimum {lowest:g} >= {cfg.raw_min:g}); "
            "give slope and intercept (CT-RATE: `photon preprocess --metadata metadata.csv`; attach/infer: "
            "--media ct.slope=S --media ct.intercept=I), or, if it is already in HU, say so: --media ct.calibration=hu "
            "(attach, infer), --calibration hu (preprocess), data.media.ct.calibration=hu (train)"
        )
    sign = "-" if cfg.intercept < 0 else "+"
    meta["calibration"] = f"raw: HU = {cfg.slope:g} * stored {sign} {abs(cfg.intercept):g}"
    return replace(volume, data=(data * np.float32(cfg.slope) + np.float32(cfg.intercept)).astype(np.float32), meta=meta)


def reorient(volume: Volume, axcodes) -> Volume:
    """Permute and flip voxel axes to the closest match of `axcodes` (no resampling: oblique stays oblique)."""
    import nibabel as nib

    current = nib.orientations.io_orientation(volume.affine)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(tuple(axcodes)))
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume
    data = np.ascontiguousarray(nib.orientations.apply_orientation(volume.data, transform))
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.data.shape)
    return replace(volume, data=data, affine=affine)


def resampled_shape(shape, spacing, target) -> tuple[int, ...]:
    """Voxels per axis after resampling to `target` mm: the whole voxels that fit the extent."""
    return tuple(max(1, math.floor(n * (s / t))) for n, s, t in zip(shape, spacing, target))


def resample(volume: Volume, spacing, interpolation: str = "linear") -> Volume:
    """Resample to exactly `spacing` mm per voxel axis, the new grid starting at the old one's edge."""
    current = np.array(volume.spacing)
    if np.allclose(current, spacing, atol=1e-3):
        return volume
    scale = tuple(float(c / t) for c, t in zip(current, spacing))
    data = resize_volume(volume.data, scale=scale, mode="nearest" if interpolation == "nearest" else "trilinear")
    step = 1 / np.array(scale)  # old voxels per new voxel
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(step)
    to_old[:3, 3] = (step - 1) / 2  # new voxel centre m sits at old index step * m + (step - 1) / 2
    return replace(volume, data=data, affine=volume.affine @ to_old)


def crop_or_pad(volume: Volume, shape, fill: float) -> Volume:
    """Centre crop or pad each axis to `shape`, padding with `fill`."""
    if tuple(volume.data.shape) == tuple(shape):
        return volume
    out = np.full(tuple(shape), fill, dtype=np.float32)
    source, target, offset = [], [], np.zeros(3)
    for axis, (have, want) in enumerate(zip(volume.data.shape, shape)):
        if have >= want:
            start = (have - want) // 2
            source.append(slice(start, start + want))
            target.append(slice(0, want))
            offset[axis] = start
        else:
            before = (want - have) // 2
            source.append(slice(0, have))
            target.append(slice(before, before + have))
            offset[axis] = -before
    out[tuple(target)] = volume.data[tuple(source)]
    shift = np.eye(4)
    shift[:3, 3] = offset
    return replace(volume, data=out, affine=volume.affine @ shift)


def preprocess_volume(volume: Volume, cfg: CTConfig) -> Volume:
    """The offline recipe on a calibrated volume: reorient, resample, clip HU, centre crop/pad."""
    volume = reorient(volume, cfg.axcodes)
    volume = resample(volume, cfg.spacing, cfg.interpolation)
    if cfg.hu_range is not None:
        volume = replace(volume, data=np.clip(volume.data, cfg.hu_range[0], cfg.hu_range[1]))
    if cfg.crop is not None:
        volume = crop_or_pad(volume, cfg.crop, cfg.pad_value)
    return volume


def model_frames(volume: Volume, cfg: CTConfig) -> np.ndarray:
    """(D, 1, H, W) float32 in [0, 1] in the model-input convention, from any orientation."""
    canonical = reorient(volume, MODEL_AXCODES)
    zyx = canonical.data.transpose(2, 1, 0)
    if cfg.size is not None:
        zyx = resize_volume(zyx, tuple(cfg.size))
    if cfg.windows:
        # Fixed HU windows, one per channel: absolute intensities, no per-volume min-max.
        scaled = np.stack([np.clip((zyx - low) / (high - low), 0.0, 1.0) for low, high in cfg.windows], axis=1)
    else:
        low, high = float(zyx.min()), float(zyx.max())
        scaled = ((zyx - low) / (high - low) if high > low else np.zeros_like(zyx))[:, None]
    if cfg.flip_w:
        scaled = scaled[..., ::-1]
    return np.ascontiguousarray(scaled, dtype=np.float32)


def prepare(volume: Volume, cfg: CTConfig) -> Volume:
    """The offline recipe, or for an array taken as prepared (no spacing known) only the HU clip."""
    if volume.meta.get("prepared"):
        if cfg.hu_range is None:
            return volume
        return replace(volume, data=np.clip(volume.data, cfg.hu_range[0], cfg.hu_range[1]))
    return preprocess_volume(volume, cfg) if cfg.preprocess else volume


def canonical_volume(path: str | Path, **options) -> Volume:
    """The stored volume in HU, after the offline recipe, in the model's axcodes (L, P, S).

    For backbones that take the volume slice by slice at their own resolution.
    """
    cfg = check_config(options_from(CTConfig, options, str(path)), str(path))
    volume = prepare(calibrate(read_volume(path, cfg), cfg), cfg)
    return reorient(volume, MODEL_AXCODES)


def load_ct(path: str | Path, **options) -> Media:
    cfg = check_config(options_from(CTConfig, options, str(path)), str(path))
    return media_from_volume(read_volume(path, cfg), cfg)


def media_from_volume(stored: Volume, cfg: CTConfig) -> Media:
    """A read volume (any format, or a MONAI MetaTensor) -> the model input: calibrate, recipe, frames."""
    facts = {"shape": list(stored.data.shape), "spacing": [round(s, 6) for s in stored.spacing],
             "axcodes": list(stored.axcodes), "oblique": stored.oblique}
    volume = calibrate(stored, cfg)
    facts["hu_range"] = [float(volume.data.min()), float(volume.data.max())]
    volume = prepare(volume, cfg)
    frames = model_frames(volume, cfg)
    meta = {**volume.meta, **facts, "preprocessed_shape": list(volume.data.shape),
            "preprocessed_spacing": [round(s, 6) for s in volume.spacing], "convention": MODEL_CONVENTION}
    if cfg.windows:
        meta["windows"] = cfg.windows
    return Media(frames=frames, kind="volume", source=stored.source, fps=1.0, meta=meta)


def describe_ct(path: str | Path) -> dict[str, Any]:
    """Header and intensity facts, without calibrating or resizing."""
    volume = read_volume(path)
    finite = np.isfinite(volume.data)
    bad = int(volume.data.size - np.count_nonzero(finite))
    low = float(volume.data[finite].min()) if bad < volume.data.size else float("nan")
    high = float(volume.data[finite].max()) if bad < volume.data.size else float("nan")
    facts = {
        "kind": "volume", "format": volume.meta.get("format"), "shape": list(volume.data.shape),
        "spacing": [round(s, 4) for s in volume.spacing], "axcodes": "".join(volume.axcodes),
        "oblique": volume.oblique, "intensity_range": [low, high], "non_finite_voxels": bad,
        "looks_raw": low >= CTConfig().raw_min, "header_scaling": volume.meta.get("header_scaling"),
    }
    if "assumed" in volume.meta:  # arrays without geometry: what the loader took them to be
        facts.update(assumed=volume.meta["assumed"], prepared=volume.meta["prepared"])
    return facts


def model_shape(facts: dict[str, Any], **options) -> tuple[int, int, int, int]:
    """The (D, 1, H, W) frames load_ct gives for a file with these `facts` (from describe_ct)."""
    cfg = check_config(options_from(CTConfig, options, "ct options"), "ct options")
    channels = len(cfg.windows) if cfg.windows else 1
    if cfg.size is not None:
        depth, height, width = cfg.size
        return (depth, channels, height, width)
    shape = _shape_in(facts["shape"], facts["axcodes"], cfg.axcodes)
    if cfg.preprocess and not facts.get("prepared"):
        spacing = _shape_in(facts["spacing"], facts["axcodes"], cfg.axcodes)
        shape = cfg.crop or resampled_shape(shape, spacing, cfg.spacing)
    i, j, k = _shape_in(shape, cfg.axcodes, MODEL_AXCODES)
    return (k, channels, j, i)


def _shape_in(values, from_axcodes, to_axcodes) -> list:
    """Per-axis values (shape, spacing) listed in the axis order of `to_axcodes`."""
    where = {_AXIS_OF[c]: n for n, c in enumerate(from_axcodes)}
    return [values[where[_AXIS_OF[c]]] for c in to_axcodes]


@hookimpl
def register_modalities(register):
    register("ct", Modality(kind="volume", load=load_ct, describe=describe_ct, model_shape=model_shape))


@hookimpl
def choose_modality(path, kind):
    if kind not in (None, "volume", "video"):
        return None
    path = Path(path)
    if is_volume_file(path):
        return "ct"
    if path.is_dir() and _holds_dicom(path):
        return "ct"
    if is_multiframe_volume(path):
        return "ct"
    # Asked for a volume: answer, so that load_ct can say why this file is not one.
    if kind == "volume":
        return "ct"
    # Records name volumes under `videos`: a file SimpleITK reads is a volume there too.
    return "ct" if path.is_file() and kind in (None, "video") and recognises(path) else None


def _holds_dicom(folder: Path) -> bool:
    for n, child in enumerate(folder.iterdir()):
        if child.is_file() and is_dicom_file(child):
            return True
        if n > 64:  # a DICOM series folder has DICOM files among its first entries
            return False
    return False
