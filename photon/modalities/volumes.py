"""Reading 3D volumes: NIfTI through nibabel, DICOM series folders through pydicom.

A Volume holds the voxel array in the file's own axis order with the affine that maps
voxel indices to RAS+ millimetres (nibabel's convention), so orientation is decided in
one place (ct.py) whatever the source format. Every failure is a PhotonError naming the
file and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import explain

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VOLUME_EXPECTED = "expected a 3D volume: a NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series"


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


def strip_volume_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".dcm"):
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


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file or a DICOM series folder; anything else is a clear error."""
    path = Path(path)
    if not path.exists():
        raise PhotonError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path)
    if is_nifti(path):
        return read_nifti(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise PhotonError(f"{path}: a 2D image file; {VOLUME_EXPECTED}")
    if is_dicom_file(path):
        raise PhotonError(f"{path}: a single DICOM file (one slice); {VOLUME_EXPECTED}")
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


def read_dicom_series(folder: Path) -> Volume:
    """One DICOM series: slices sorted along the slice normal, slope/intercept applied per slice."""
    import pydicom

    files = dicom_files(folder)
    if not files:
        raise PhotonError(f"{folder}: no DICOM files in this folder; {VOLUME_EXPECTED}")
    slices = []
    for file in files:
        try:
            slices.append((file, pydicom.dcmread(str(file))))
        except Exception as exc:
            raise PhotonError(f"{file}: not a readable DICOM file ({explain(exc)})") from exc
    for file, ds in slices:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise PhotonError(
                f"{file}: a multi-frame DICOM ({frames} frames in one file, e.g. Enhanced CT/MR); Photon reads a series "
                "of one slice per file: convert it to NIfTI (dcm2niix) or split it into single-frame files"
            )
    with_position = [(f, ds) for f, ds in slices if "PixelData" in ds and "ImagePositionPatient" in ds]
    if not with_position:
        raise PhotonError(f"{folder}: its DICOM files hold no image slices with a position; {VOLUME_EXPECTED}")
    slices = with_position
    if len(slices) == 1:
        raise PhotonError(
            f"{folder}: holds one DICOM slice ({slices[0][0].name}), a 2D image; a volume needs a series of at least "
            "2 slices. To ask about this slice, pass the file itself (it is read as an image)"
        )
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise PhotonError(f"{folder}: holds {len(series)} DICOM series ({', '.join(sorted(series))}); put each series in its own folder")
    check_3d((2, 2, len(slices)), folder)

    first = slices[0][1]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda item: float(np.dot(normal, [float(v) for v in item[1].ImagePositionPatient])))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    steps = np.diff(positions @ normal)
    if np.any(np.abs(steps) < 1e-4):
        raise PhotonError(f"{folder}: two slices share one position; expected one series with distinct slice positions")

    planes = []
    calibrated = False
    for file, ds in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise PhotonError(f"{file}: its orientation differs from the rest of the series in {folder}")
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise PhotonError(f"{file}: cannot decode the pixel data ({explain(exc)}); truncated or corrupt?") from exc
        if pixels.ndim != 2:
            raise PhotonError(f"{file}: pixel data of shape {pixels.shape}; expected one grey 2D slice per file")
        if planes and pixels.T.shape != planes[0].shape:
            raise PhotonError(f"{file}: slice of {pixels.shape} pixels differs from the rest of the series in {folder}")
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            calibrated = True
            pixels = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
        planes.append(pixels.T)  # (columns, rows): voxel i runs along a row, j down the columns

    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine_lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # DICOM patient space is LPS+, nibabel's is RAS+
    meta = {"format": "dicom", "slices": len(slices), "header_scaling": calibrated,
            "series": next(iter(series)), "modality": str(first.get("Modality", ""))}
    return Volume(np.stack(planes, axis=-1), affine, str(folder), meta)
