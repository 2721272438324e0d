"""MONAI both ways (`[monai]` extra): Photon's CT recipe as a MONAI Compose, and MONAI
MetaTensors as Photon inputs.

Into MONAI: `ct_recipe()` is the offline recipe of `photon preprocess` (calibrate, reorient,
resample to 1 mm, HU clip, centre crop/pad with air) over channel-first MetaTensors, so a
MONAI pipeline can produce what Photon reads. It uses MONAI's own transforms where they
give the same voxels (Orientation, ThresholdIntensity) and Photon's where
MONAI's differ (docs/data.md has the measurements): MONAI's Spacing keeps the first voxel's
centre and fits (n - 1) x old / new + 1 voxels, the recipe's grid starts at the old grid's
edge with floor(n x old / new); MONAI's centre crop starts at centre - want // 2, the
recipe's at (have - want) // 2, one voxel apart when the two sizes differ in parity.

Out of MONAI: a MetaTensor (C=1 or no channel axis, its affine in RAS+ unless its meta says
LPS) becomes a Volume, then Media through the same calibration and recipe as a file; `ask`
and `infer` take them wherever they take a path.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import Media
from photon.modalities.config import CTConfig, options_from
from photon.modalities.volumes import Volume, check_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL = "pip install 'photon[monai]'"


def is_metatensor(value: Any) -> bool:
    """A MONAI MetaTensor (checked by type name, so MONAI need not be importable to ask)."""
    return any(cls.__name__ == "MetaTensor" and cls.__module__.startswith("monai.") for cls in type(value).__mro__)


def volume_from_metatensor(tensor: Any, source: str | None = None) -> Volume:
    """(C=1, i, j, k) or (i, j, k) MetaTensor -> Volume with the affine in RAS+."""
    meta = getattr(tensor, "meta", {}) or {}
    source = source or str(meta.get("filename_or_obj") or "MetaTensor")
    array = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise PhotonError(f"{source}: MetaTensor of shape {tuple(array.shape)}; expected one channel-first volume (1, i, j, k) or (i, j, k)")
    affine = np.asarray(tensor.affine.detach().cpu().numpy() if hasattr(tensor.affine, "detach") else tensor.affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise PhotonError(f"{source}: MetaTensor affine of shape {affine.shape}; expected one 4x4 (unbatched) affine")
    space = str(meta.get("space", "RAS")).upper()
    if space not in ("RAS", "LPS"):
        raise PhotonError(f"{source}: MetaTensor space {space!r}; expected RAS or LPS")
    if space == "LPS":
        affine = LPS_TO_RAS @ affine
    check_affine(affine, source)
    return Volume(np.ascontiguousarray(array), affine, source, {"format": "monai MetaTensor", "header_scaling": False})


def media_from_metatensor(tensor: Any, **options) -> Media:
    """The model input from a MetaTensor, with the CT options a file would get (its affine decides orientation)."""
    from photon.modalities.ct import check_config, media_from_volume

    volume = volume_from_metatensor(tensor)
    cfg = check_config(options_from(CTConfig, options, volume.source), volume.source)
    return media_from_volume(volume, cfg)


def metatensor_digest(tensor: Any) -> str:
    """Content digest of an in-memory volume (voxels, shape and affine), for infer's resume records."""
    volume = volume_from_metatensor(tensor)
    digest = hashlib.sha256()
    digest.update(str(volume.data.shape).encode())
    digest.update(volume.data.tobytes())
    digest.update(np.round(volume.affine, 6).tobytes())
    return digest.hexdigest()


def _monai():
    try:
        import monai  # noqa: F401
    except ImportError as exc:
        raise PhotonError(f"the MONAI recipe needs MONAI: {INSTALL}") from exc
    import monai.transforms

    return monai.transforms


def _back(tensor, volume: Volume):
    """The Volume's voxels and affine as a channel-first MetaTensor carrying the input's meta."""
    import torch
    from monai.data import MetaTensor

    meta = dict(getattr(tensor, "meta", {}) or {})
    meta["space"] = "RAS"
    meta.pop("affine", None)  # MetaTensor keeps the affine it is given beside the meta
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.data))[None], affine=affine, meta=meta)


def ct_recipe(cfg: CTConfig | None = None, *, load: bool = True, **options):
    """`photon preprocess`'s recipe as a monai.transforms.Compose.

    load=True: the Compose takes a file path (read by Photon's readers: MONAI's LoadImage reads
    MetaImage/NRRD only with the `itk` package and no enhanced multi-frame DICOM) and returns a (1, i, j, k) MetaTensor in HU in cfg.axcodes with its affine;
    load=False: it takes such a MetaTensor. Options are the CT options (docs/config.md).
    """
    from photon.modalities.ct import calibrate, check_config, crop_or_pad, resample
    from photon.modalities.volumes import read_volume

    transforms = _monai()
    cfg = check_config(cfg or options_from(CTConfig, options, "ct_recipe"), "ct_recipe")

    class Calibrate(transforms.Transform):
        """HU exactly once (photon.modalities.ct.calibrate)."""

        def __call__(self, tensor):
            volume = calibrate(volume_from_metatensor(tensor), cfg)
            return _back(tensor, volume)

    class Resample(transforms.Transform):
        """To cfg.spacing on the recipe's grid (photon.modalities.ct.resample)."""

        def __call__(self, tensor):
            return _back(tensor, resample(volume_from_metatensor(tensor), cfg.spacing, cfg.interpolation))

    class CropOrPad(transforms.Transform):
        """Centre crop/pad with air (photon.modalities.ct.crop_or_pad)."""

        def __call__(self, tensor):
            return _back(tensor, crop_or_pad(volume_from_metatensor(tensor), cfg.crop, cfg.pad_value))

    class LoadVolume(transforms.Transform):
        """A path through Photon's readers (every format of docs/data.md) -> (1, i, j, k) MetaTensor."""

        def __call__(self, path):
            volume = read_volume(path, cfg)
            tensor = _back(None, volume)
            tensor.meta["filename_or_obj"] = str(path)
            return tensor

    steps = [LoadVolume()] if load else []
    steps += [Calibrate(), transforms.Orientation(axcodes="".join(cfg.axcodes), labels=None), Resample()]
    if cfg.hu_range is not None:
        low, high = cfg.hu_range
        steps += [transforms.ThresholdIntensity(threshold=low, above=True, cval=low),
                  transforms.ThresholdIntensity(threshold=high, above=False, cval=high)]
    if cfg.crop is not None:
        steps.append(CropOrPad())
    return transforms.Compose(steps)
