"""DICOM volumes through pydicom: a series of single-frame files (a folder or a .zip), or one
enhanced multi-frame file (Enhanced CT/MR, Legacy Converted Enhanced) whose per-frame
functional groups give each frame's position.

Both become a list of Slice (pixels already in HU where the file says how) stacked along the
slice normal by stack_slices, so sorting, spacing and the LPS+ -> RAS+ turn live in one place.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import explain
from photon.modalities.volumes import VOLUME_EXPECTED, Volume, check_3d, dicom_files, is_dicom_file

# A zipped series is unpacked to a temporary folder; refuse archives that would unpack to more.
MAX_ZIP_BYTES = int(os.environ.get("PHOTON_MAX_ZIP_BYTES", str(8 << 30)))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Slice:
    where: str  # the file (and frame) for messages
    position: np.ndarray  # ImagePositionPatient: the first pixel's centre, LPS+ mm
    orientation: np.ndarray  # ImageOrientationPatient: row direction, then column direction
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) mm
    pixels: np.ndarray  # (rows, columns) float32


def stack_slices(slices: list[Slice], source: str) -> tuple[np.ndarray, np.ndarray]:
    """(voxels (i, j, k), RAS+ affine) from slices in any order: sorted along the slice normal."""
    if len(slices) < 2:
        raise PhotonError(f"{source}: holds one DICOM slice, a 2D image; a volume needs at least 2 slices")
    orientation = slices[0].orientation
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    for item in slices:
        if not np.allclose(item.orientation, orientation, atol=1e-4):
            raise PhotonError(f"{item.where}: its orientation differs from the rest of {source}")
        if item.pixels.shape != slices[0].pixels.shape:
            raise PhotonError(f"{item.where}: slice of {item.pixels.shape} pixels differs from the rest of {source}")
    slices = sorted(slices, key=lambda item: float(normal @ item.position))
    positions = np.stack([item.position for item in slices])
    if np.any(np.abs(np.diff(positions @ normal)) < 1e-4):
        raise PhotonError(f"{source}: two slices share one position; expected one volume with distinct slice positions")
    row_spacing, col_spacing = slices[0].spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine_lps[:3, 3] = positions[0]
    # (columns, rows) per slice: voxel i runs along a row, j down the columns.
    voxels = np.stack([item.pixels.T for item in slices], axis=-1).astype(np.float32)
    return voxels, LPS_TO_RAS @ affine_lps


def _floats(values, where: str, name: str, count: int) -> np.ndarray:
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PhotonError(f"{where}: {name} {values!r} is not {count} numbers") from exc
    if array.shape != (count,):
        raise PhotonError(f"{where}: {name} holds {array.size} numbers; expected {count}")
    return array


def _read(file: Path, **kwargs):
    import pydicom

    try:
        return pydicom.dcmread(str(file), **kwargs)
    except Exception as exc:
        raise PhotonError(f"{file}: not a readable DICOM file ({explain(exc)})") from exc


def _pixels(ds, file: Path) -> np.ndarray:
    try:
        return ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise PhotonError(f"{file}: cannot decode the pixel data ({explain(exc)}); truncated or corrupt?") from exc


def frame_count(ds) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def read_dicom_folder(folder: Path) -> Volume:
    """A folder holding one series of single-frame files, or one multi-frame file."""
    files = dicom_files(folder)
    if not files:
        raise PhotonError(f"{folder}: no DICOM files in this folder; {VOLUME_EXPECTED}")
    if len(files) == 1 and frame_count(_read(files[0], stop_before_pixels=True)) > 1:
        return read_multiframe(files[0])
    return read_series(folder, files)


def read_series(folder: Path, files: list[Path]) -> Volume:
    """One series: slices sorted along the slice normal, slope/intercept applied per slice."""
    datasets = [(file, _read(file)) for file in files]
    for file, ds in datasets:
        if frame_count(ds) > 1:
            raise PhotonError(
                f"{file}: a multi-frame DICOM ({frame_count(ds)} frames) among the single-frame files of {folder}; "
                "give the multi-frame file on its own"
            )
    with_position = [(f, ds) for f, ds in datasets if "PixelData" in ds and "ImagePositionPatient" in ds]
    if not with_position:
        raise PhotonError(f"{folder}: its DICOM files hold no image slices with a position; {VOLUME_EXPECTED}")
    if len(with_position) == 1:
        raise PhotonError(
            f"{folder}: holds one DICOM slice ({with_position[0][0].name}), a 2D image; a volume needs a series of at least "
            "2 slices. To ask about this slice, pass the file itself (it is read as an image)"
        )
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in with_position}
    if len(series) > 1:
        raise PhotonError(f"{folder}: holds {len(series)} DICOM series ({', '.join(sorted(series))}); put each series in its own folder")
    check_3d((2, 2, len(with_position)), folder)
    slices, calibrated = [], False
    for file, ds in with_position:
        pixels = _pixels(ds, file)
        if pixels.ndim != 2:
            raise PhotonError(f"{file}: pixel data of shape {pixels.shape}; expected one grey 2D slice per file")
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            calibrated = True
            pixels = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
        slices.append(Slice(
            str(file), _floats(ds.ImagePositionPatient, str(file), "ImagePositionPatient", 3),
            _floats(ds.get("ImageOrientationPatient", []), str(file), "ImageOrientationPatient", 6),
            tuple(_floats(ds.get("PixelSpacing", []), str(file), "PixelSpacing", 2)), pixels))
    voxels, affine = stack_slices(slices, str(folder))
    first = with_position[0][1]
    meta = {"format": "dicom", "slices": len(slices), "header_scaling": calibrated,
            "series": next(iter(series)), "modality": str(first.get("Modality", ""))}
    return Volume(voxels, affine, str(folder), meta)


def is_multiframe_volume(path: Path) -> bool:
    """A DICOM file with several frames and per-frame positions (enhanced multi-frame), read as a volume."""
    if not path.is_file() or not is_dicom_file(path):
        return False
    try:
        ds = _read(path, stop_before_pixels=True)
    except PhotonError:
        return False
    return frame_count(ds) > 1 and "PerFrameFunctionalGroupsSequence" in ds


def read_dicom_file(file: Path) -> Volume:
    ds = _read(file, stop_before_pixels=True)
    if frame_count(ds) <= 1:
        raise PhotonError(f"{file}: a single DICOM file (one slice); {VOLUME_EXPECTED}")
    return read_multiframe(file)


def _group_value(ds, index: int, sequence: str, attribute: str) -> Any:
    """An attribute from frame `index`'s functional group, else the shared group, else the top level."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and attribute in items[0]:
            return items[0][attribute].value
    return ds.get(attribute)


def read_multiframe(file: Path) -> Volume:
    """Enhanced multi-frame DICOM: each frame's position, orientation, spacing and rescale from its
    functional groups (per-frame first, then shared)."""
    ds = _read(file)
    frames = frame_count(ds)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PhotonError(f"{file}: {ds.SamplesPerPixel} samples per pixel (colour); a volume is one grey value per voxel")
    pixels = _pixels(ds, file)
    if pixels.shape[0] != frames or pixels.ndim != 3:
        raise PhotonError(f"{file}: pixel data of shape {pixels.shape}; expected {frames} grey frames")
    slices, calibrated = [], False
    for n in range(frames):
        where = f"{file} frame {n + 1}"
        position = _group_value(ds, n, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise PhotonError(
                f"{where}: no ImagePositionPatient (PlanePositionSequence in the per-frame functional groups); "
                "expected an enhanced multi-frame DICOM whose frames carry their positions"
            )
        orientation = _group_value(ds, n, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group_value(ds, n, "PixelMeasuresSequence", "PixelSpacing")
        if orientation is None or spacing is None:
            raise PhotonError(f"{where}: no {'ImageOrientationPatient' if orientation is None else 'PixelSpacing'}; "
                              "expected plane orientation and pixel measures in the functional groups")
        slope = _group_value(ds, n, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(ds, n, "PixelValueTransformationSequence", "RescaleIntercept")
        frame = pixels[n]
        if slope is not None or intercept is not None:
            calibrated = True
            frame = frame * float(slope if slope is not None else 1.0) + float(intercept or 0.0)
        slices.append(Slice(where, _floats(position, where, "ImagePositionPatient", 3),
                            _floats(orientation, where, "ImageOrientationPatient", 6),
                            tuple(_floats(spacing, where, "PixelSpacing", 2)), frame))
    voxels, affine = stack_slices(slices, str(file))
    meta = {"format": "dicom-multiframe", "slices": frames, "header_scaling": calibrated,
            "series": str(ds.get("SeriesInstanceUID", "")), "modality": str(ds.get("Modality", "")),
            "sop_class": str(ds.get("SOPClassUID", ""))}
    return Volume(voxels, affine, str(file), meta)


def read_dicom_zip(path: Path) -> Volume:
    """A .zip holding one DICOM series (at any depth) or one multi-frame file, unpacked to a temporary folder."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PhotonError(f"{path}: not a readable zip archive ({explain(exc)})") from exc
    with archive, tempfile.TemporaryDirectory(prefix="photon-zip-") as scratch:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for member in members:
            name = Path(member.filename)
            if name.is_absolute() or ".." in name.parts:
                raise PhotonError(f"{path}: member {member.filename!r} would unpack outside the archive's folder; refused")
        total = sum(m.file_size for m in members)
        if total > MAX_ZIP_BYTES:
            raise PhotonError(f"{path}: unpacks to {total / 2**30:.1f} GiB, over the {MAX_ZIP_BYTES / 2**30:.1f} GiB limit "
                              "(PHOTON_MAX_ZIP_BYTES)")
        try:
            archive.extractall(scratch, members)
        except Exception as exc:
            raise PhotonError(f"{path}: cannot unpack ({explain(exc)}); truncated or corrupt?") from exc
        root = Path(scratch)
        folders = sorted({p.parent for p in root.rglob("*") if p.is_file() and is_dicom_file(p)})
        if not folders:
            raise PhotonError(f"{path}: holds no DICOM files; {VOLUME_EXPECTED}")
        if len(folders) > 1:
            names = ", ".join(str(f.relative_to(root)) or "." for f in folders)
            raise PhotonError(f"{path}: holds DICOM files in {len(folders)} folders ({names}); zip one series per archive")
        try:
            volume = read_dicom_folder(folders[0])
        except PhotonError as exc:  # name the archive, not the temporary folder
            raise PhotonError(str(exc).replace(str(folders[0]), f"{path}:{folders[0].relative_to(root)}")) from exc
    volume.source = str(path)
    volume.meta["format"] = f"{volume.meta['format']} (zip)"
    return volume
