"""MetaImage (.mha/.mhd), NRRD (.nrrd/.nhdr) and every other format SimpleITK reads (`[itk]` extra).

ITK's physical space is LPS+: point = origin + direction @ diag(spacing) @ index, index in
(x, y, z) = (i, j, k) order, while GetArrayFromImage returns the voxels as [k, j, i]. The
Volume takes the voxels back to (i, j, k) and the affine to nibabel's RAS+ by negating the
first two rows, so an .mha and a NIfTI of the same physical volume load identically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.volumes import VOLUME_EXPECTED, Volume, check_3d, check_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
FORMATS = {".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd", ".nhdr": "nrrd"}
INSTALL = "pip install 'photon[itk]' (SimpleITK)"
# Where a header names a detached data file: NRRD's "data file:" and MetaImage's ElementDataFile.
DETACHED = {".nhdr": re.compile(r"^data ?file:\s*(.+?)\s*$", re.I | re.M),
            ".nrrd": re.compile(r"^data ?file:\s*(.+?)\s*$", re.I | re.M),
            ".mhd": re.compile(r"^ElementDataFile\s*=\s*(.+?)\s*$", re.M),
            ".mha": re.compile(r"^ElementDataFile\s*=\s*(.+?)\s*$", re.M)}


def _sitk(path: Path):
    try:
        import SimpleITK
    except ImportError as exc:
        raise PhotonError(f"{path}: reading {path.suffix or 'this format'} needs SimpleITK: {INSTALL}") from exc
    return SimpleITK


def recognises(path: Path) -> bool:
    """Whether an installed SimpleITK has an image IO for this file (False without SimpleITK)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        return bool(reader.GetImageIOFromFileName(str(path)))
    except RuntimeError:
        return False


def check_detached(path: Path) -> None:
    """A detached header (.nhdr, .mhd) whose data file is missing gets a message naming both files."""
    pattern = DETACHED.get(path.suffix.lower())
    if pattern is None:
        return
    with open(path, "rb") as handle:
        head = handle.read(64 << 10).split(b"\n\n", 1)[0].decode("latin-1")
    match = pattern.search(head)
    if not match:
        return
    name = match.group(1)
    if name.upper() in ("LOCAL",) or name.upper().startswith("LIST") or "%" in name:
        return  # data inline, or a file list / pattern SimpleITK resolves itself
    data = (path.parent / name)
    if not data.exists():
        raise PhotonError(f"{path}: its header names the data file {name!r}, which does not exist ({data}); "
                          "keep the header and its data file side by side")


def _reason(exc: Exception) -> str:
    """ITK's multi-line exception reduced to its description."""
    text = " ".join(str(exc).split())
    found = re.search(r"(?:Description|what\(\)):\s*(.+?)(?:\s*$)", text)
    reason = found.group(1) if found else text
    return reason if len(reason) < 300 else reason[:297] + "..."


def read_itk(path: Path) -> Volume:
    sitk = _sitk(path)
    if path.suffix.lower() in DETACHED:
        check_detached(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        dimension, components = reader.GetDimension(), reader.GetNumberOfComponents()
    except RuntimeError as exc:
        raise PhotonError(f"{path}: not a readable image file ({_reason(exc)}); {VOLUME_EXPECTED}") from exc
    size = tuple(int(n) for n in reader.GetSize())
    if components != 1:
        raise PhotonError(f"{path}: {components} components per voxel (a vector or colour image); expected one intensity per voxel")
    if dimension == 4 and size[3] == 1:
        size = size[:3]
    elif dimension != 3:
        raise PhotonError(f"{path}: a {dimension}D image of size {size}; {VOLUME_EXPECTED}")
    check_3d(size, path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise PhotonError(f"{path}: cannot read the voxel data ({_reason(exc)}); the file is truncated or corrupt") from exc
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    zyx = sitk.GetArrayFromImage(image)
    data = np.ascontiguousarray(zyx.transpose(2, 1, 0), dtype=np.float32)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine_lps[:3, 3] = image.GetOrigin()
    affine = LPS_TO_RAS @ affine_lps
    check_affine(affine, path)
    meta = {"format": FORMATS.get(path.suffix.lower(), f"itk ({path.suffix.lower() or 'no suffix'})"), "stored_dtype": image.GetPixelIDTypeAsString(),
            "header_scaling": False}
    return Volume(data, affine, str(path), meta)
