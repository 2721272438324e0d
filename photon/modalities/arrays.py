"""Volumes stored as bare arrays (.npy, .npz), which carry no geometry.

Axis convention (docs/data.md): the array is (D, H, W), or M3D's (1, D, H, W), already in the
model-input convention: D runs inferior -> superior, H anterior -> posterior, W patient-left
-> patient-right. What the file cannot say comes from the CT options:
- array_spacing [D, H, W] mm: when given, the offline recipe (resample, crop/pad) runs on
  the array as on any volume; when null (default) the array is taken as already prepared
  and is only resized to the model size.
- array_intensity: "unit" (scaled to [0, 1], as M3D ships: mapped onto hu_range, so 0 is
  the window's low end), "hu", or "auto" (unit when every value lies in [0, 1], else hu).
- array_key: which array of an .npz (default: its only array).
What was assumed is recorded in meta["assumed"], which `photon inspect` prints.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import explain
from photon.modalities.volumes import Volume

INTENSITIES = ("auto", "unit", "hu")
ARRAY_CONVENTION = "(D, H, W) = inferior->superior, anterior->posterior, patient-left->patient-right"
DEFAULT_WINDOW = (-1000.0, 1000.0)


def _load(path: Path, key: str | None) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PhotonError(f"{path}: not a readable {path.suffix} array ({explain(exc)}); truncated or corrupt?") from exc
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise PhotonError(f"{path}: array_key {key!r} is for .npz files; a .npy holds one array")
        return loaded
    with loaded:
        keys = list(loaded.files)
        if key is None and len(keys) == 1:
            key = keys[0]
        if key is None or key not in keys:
            wanted = "holds several arrays" if key is None else f"has no array {key!r}"
            raise PhotonError(f"{path}: {wanted} ({', '.join(keys) or 'none'}); choose one with --media ct.array_key=NAME")
        try:
            return loaded[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise PhotonError(f"{path}: cannot read array {key!r} ({explain(exc)}); truncated or corrupt?") from exc


def volume_axes(array: np.ndarray, path: Path) -> np.ndarray:
    """(D, H, W) from a 3D array or M3D's (1, D, H, W); any other rank is an error naming the shape."""
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        what = "a 2D image" if array.ndim == 2 else f"a rank-{array.ndim} array"
        raise PhotonError(f"{path}: shape {tuple(array.shape)} is {what}; expected a volume shaped (D, H, W) or (1, D, H, W)")
    if min(array.shape) < 2:
        raise PhotonError(f"{path}: shape {tuple(array.shape)} has an axis of length {min(array.shape)}; expected at least 2 voxels per axis")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise PhotonError(f"{path}: array of dtype {array.dtype}; expected real numbers")
    return array


def read_array(path: Path, cfg: Any = None) -> Volume:
    spacing = getattr(cfg, "array_spacing", None)
    intensity = getattr(cfg, "array_intensity", "auto")
    window = getattr(cfg, "hu_range", None) or DEFAULT_WINDOW
    dhw = volume_axes(_load(path, getattr(cfg, "array_key", None)), path).astype(np.float32)
    finite = dhw[np.isfinite(dhw)]
    if intensity == "auto":
        intensity = "unit" if finite.size and finite.min() >= 0 and finite.max() <= 1 else "hu"
    assumed = [f"axes {ARRAY_CONVENTION}"]
    if intensity == "unit":
        low, high = (float(v) for v in window)
        dhw = low + dhw * (high - low)
        assumed.append(f"intensity in [0, 1] read as HU {low:g}..{high:g}")
    else:
        assumed.append("intensity in HU")
    if spacing is None:
        assumed.append("spacing unknown: taken as prepared, resized to the model size without the offline recipe")
        d, h, w = 1.0, 1.0, 1.0
    else:
        d, h, w = (float(v) for v in spacing)
        assumed.append(f"spacing (D, H, W) {d:g} x {h:g} x {w:g} mm")
    # Voxel axes (i, j, k) = (W, H, D): i toward the patient's right, j posterior, k superior (axcodes R, P, S).
    data = np.ascontiguousarray(dhw.transpose(2, 1, 0))
    affine = np.diag([w, -h, d, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(data.shape) - 1) / 2)
    meta = {"format": f"array ({path.suffix.lower()[1:]})", "header_scaling": False, "assumed": "; ".join(assumed),
            "prepared": spacing is None, "array_intensity": intensity}
    return Volume(data, affine, str(path), meta)
