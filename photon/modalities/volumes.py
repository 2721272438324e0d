"""Reading 3D volumes: every format lands in one Volume (voxels + RAS+ affine).

NIfTI through nibabel; DICOM (series folders, zipped series, enhanced multi-frame files) in
dicom.py; MetaImage, NRRD and the rest of SimpleITK's formats in itk.py (optional extra);
arrays without geometry (.npy, .npz) in arrays.py. A Volume holds the voxel array in the
file's own axis order with the affine that maps voxel indices to RAS+ millimetres
(nibabel's convention), so orientation is decided in one place (ct.py) whatever the source
format. Every failure is a PhotonError naming the file and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import explain

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# SimpleITK's own formats that Photon claims by name; any other file SimpleITK recognises is read too.
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".gipl.gz", ".mnc", ".vtk")
ARRAY_SUFFIXES = (".npy", ".npz")
ZIP_SUFFIXES = (".zip",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VOLUME_EXPECTED = (
    "expected a 3D volume: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), a .npy/.npz "
    "array, an enhanced multi-frame DICOM file, or a DICOM series (a folder or a .zip)"
)


@dataclass
class Volume:
    data: np.ndarray  # float32, voxel axes (i, j, k) as stored
    affine: np.ndarray  # 4x4, voxel index -> RAS+ mm
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axcodes(self) -> tuple[str, ...]:
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))

    @property
    def oblique(self) -> bool:
        """True when a voxel axis is not parallel to a patient axis (reorientation is then to the closest one)."""
        directions = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        return bool(np.abs(directions).max(axis=0).min() < 1 - 1e-4)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def is_volume_file(path: Path) -> bool:
    """A single file Photon reads as a volume by its name (DICOM files are told apart by content)."""
    return has_suffix(path, NIFTI_SUFFIXES + ITK_SUFFIXES + ARRAY_SUFFIXES + ZIP_SUFFIXES)


def strip_volume_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(NIFTI_SUFFIXES + ITK_SUFFIXES + ARRAY_SUFFIXES + ZIP_SUFFIXES + (".dcm",), key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_dicom_file(path: Path) -> bool:
    """DICOM part 10 files carry 'DICM' after a 128-byte preamble; bare .dcm files are trusted by name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and is_dicom_file(p)]


def read_volume(path: str | Path, cfg: Any = None) -> Volume:
    """Read any supported volume; anything else is a clear error.

    cfg: the CT options (photon.modalities.config.CTConfig); only arrays without geometry use
    them (array_spacing, array_intensity, array_key).
    """
    from photon.modalities import arrays, dicom, itk

    path = Path(path)
    if not path.exists():
        raise PhotonError(f"{path}: no such file or folder")
    if path.is_dir():
        return dicom.read_dicom_folder(path)
    if is_nifti(path):
        return read_nifti(path)
    if has_suffix(path, ITK_SUFFIXES):
        return itk.read_itk(path)
    if has_suffix(path, ARRAY_SUFFIXES):
        return arrays.read_array(path, cfg)
    if has_suffix(path, ZIP_SUFFIXES):
        return dicom.read_dicom_zip(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise PhotonError(f"{path}: a 2D image file; {VOLUME_EXPECTED}")
    if is_dicom_file(path):
        return dicom.read_dicom_file(path)
    if itk.recognises(path):
        return itk.read_itk(path)
    raise PhotonError(f"{path}: unknown file type; {VOLUME_EXPECTED}")


def read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:
        raise PhotonError(f"{path}: not a readable NIfTI file ({explain(exc)})") from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) > 3:
        raise PhotonError(
            f"{path}: a {len(shape)}D NIfTI of shape {shape}; expected one 3D volume "
            "(extract a single volume first, e.g. nibabel's img.slicer[..., 0])"
        )
    check_3d(shape, path)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise PhotonError(
            f"{path}: cannot read the voxel data ({explain(exc)}); the file is truncated or corrupt"
        ) from exc
    slope, intercept = image.header.get_slope_inter()
    meta = {
        "format": "nifti",
        "stored_dtype": str(image.get_data_dtype()),
        # nibabel applies scl_slope/scl_inter itself; remember that the header did it.
        "header_scaling": slope is not None and (slope, intercept or 0.0) != (1.0, 0.0),
    }
    affine = np.asarray(image.affine, dtype=np.float64)
    check_affine(affine, path)
    return Volume(data, affine, str(path), meta)


def check_affine(affine: np.ndarray, path: Path) -> None:
    """Orientation and spacing come from the voxel-to-mm affine; a singular one (all zero, a zero
    column) gives neither."""
    linear = affine[:3, :3]
    if not np.all(np.isfinite(linear)) or np.any(np.linalg.norm(linear, axis=0) == 0) or abs(np.linalg.det(linear)) < 1e-12:
        raise PhotonError(
            f"{path}: its affine (voxel -> mm) is singular ({'all zero' if not np.any(linear) else 'a zero or degenerate axis'}), "
            "so orientation and spacing are unknown; repair the header's sform/qform (e.g. with the scanner's "
            "original DICOM and dcm2niix) before using it"
        )


def check_3d(shape: tuple[int, ...], path: Path) -> None:
    if len(shape) < 3 or min(shape) < 2:
        raise PhotonError(f"{path}: shape {shape} is a 2D image; {VOLUME_EXPECTED} with at least 2 slices")
