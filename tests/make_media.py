"""Small real files for the loader tests, written on the fly: NIfTI phantoms with a marker at a
known patient position, a DICOM series built from pydicom's CT_small.dcm, an mp4, images."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

# Phantom field of view in RAS+ mm (x to the patient's right, y anterior, z superior),
# centred on the origin; extents differ per axis so that a swapped axis shows.
FOV = np.array([80.0, 72.0, 60.0])
# The marker sits in the left (x < 0), anterior (y > 0), superior (z > 0) octant.
MARKER = np.array([-22.0, 14.0, 17.0])


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


AFFINE_DIRECTIONS = {
    "RAS": np.eye(3),
    "LAS": np.diag([-1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    # voxel axes: i anterior->posterior, j superior->inferior, k left->right (a sagittal stack)
    "PIR": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": rotation(15.0, 10.0) @ np.diag([-1.0, 1.0, 1.0]),
}


def phantom(directions: np.ndarray, spacing: float = 2.0, marker=MARKER, radius: float = 6.0):
    """A nibabel image of air (-1000 HU) holding a bright sphere (+1000 HU) at `marker` (RAS+ mm)."""
    import nibabel as nib

    # Voxel counts per voxel axis: the FOV extent along the patient axis each voxel axis follows.
    along = np.abs(directions).argmax(axis=0)
    shape = tuple(int(FOV[a] / spacing) for a in along)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - np.asarray(marker), axis=-1) < radius
    return nib.Nifti1Image(np.where(inside, 1000, -1000).astype(np.int16), affine)


def expected_model_fractions(marker=MARKER) -> np.ndarray:
    """Where the marker must land in the model input (D, H, W), as fractions of each axis:
    D inferior->superior, H anterior->posterior, W patient-left->patient-right."""
    x, y, z = marker
    half = FOV / 2
    return np.array([(z + half[2]) / FOV[2], (half[1] - y) / FOV[1], (x + half[0]) / FOV[0]])


def centroid_fractions(frames: np.ndarray) -> np.ndarray:
    volume = frames[:, 0]
    weights = volume - volume.min()
    grid = np.indices(volume.shape).reshape(3, -1)
    centre = (grid * weights.reshape(-1)).sum(axis=1) / weights.sum()
    return (centre + 0.5) / np.array(volume.shape)


def dicom_series(folder: Path, n_slices: int = 4, marker_slice: int = 2, shuffle: bool = True) -> Path:
    """A CT series from pydicom's CT_small.dcm: slices 5 mm apart along z, files named out of order;
    slice `marker_slice` (counted from inferior) gets a bright square in its top-left corner."""
    import pydicom
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(n_slices))[::-1] if shuffle else list(range(n_slices))
    for name_index, k in enumerate(order):
        ds = copy.deepcopy(template)
        position = [float(v) for v in template.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 5.0 * k]
        ds.InstanceNumber = k + 1
        pixels = template.pixel_array.copy()
        if k == marker_slice:
            pixels[:8, :8] = 3000  # stored value: 1976 HU after the -1024 intercept
        ds.PixelData = pixels.astype(template.pixel_array.dtype).tobytes()
        ds.SOPInstanceUID = f"{template.SOPInstanceUID}.{k}"
        ds.save_as(str(folder / f"slice_{name_index:03d}.dcm"), enforce_file_format=True)
    return folder


def write_mp4(path: Path, n_frames: int = 25, fps: int = 10, size=(48, 64)) -> Path:
    """Frame n is uniformly grey at level 10 * n, so a decoded frame tells its own index."""
    import av

    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n in range(n_frames):
            frame = np.zeros((height, width, 3), dtype=np.uint8)
            frame[...] = 10 * n
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, size=(60, 90), colour=(255, 0, 0), mode: str = "RGB") -> Path:
    """A grey image with a coloured left half."""
    from PIL import Image

    height, width = size
    array = np.full((height, width, 3), 128, dtype=np.uint8)
    array[:, : width // 2] = colour
    image = Image.fromarray(array)
    image.convert(mode).save(path)
    return path


# ITK direction matrices (columns: where each voxel axis points in LPS+ space).
ITK_DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    # i posterior, j inferior, k patient-left... as ITK writes a sagittal stack
    "PIR": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": rotation(12.0, 8.0),
}


def itk_phantom(direction_lps: np.ndarray, spacing=(2.0, 2.5, 3.0), marker=MARKER, radius: float = 6.0):
    """A SimpleITK image of air holding a bright sphere at `marker` (given in RAS+ mm, as for phantom());
    the voxel-to-mm geometry is ITK's own (TransformIndexToPhysicalPoint), not Photon's arithmetic."""
    import SimpleITK as sitk

    along = np.abs(direction_lps).argmax(axis=0)
    size = [int(FOV[a] / s) for a, s in zip(along, spacing)]
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(direction_lps.flatten().tolist())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    image.SetOrigin(tuple(-centre))  # the FOV centred on the origin, as phantom() does
    marker_lps = np.array([-marker[0], -marker[1], marker[2]])
    voxels = np.full(size[::-1], -1000, dtype=np.int16)  # ITK arrays are [k, j, i]
    for i, j, k in np.ndindex(*size):
        point = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
        if np.linalg.norm(point - marker_lps) < radius:
            voxels[k, j, i] = 1000
    out = sitk.GetImageFromArray(voxels)
    out.CopyInformation(image)
    return out


def enhanced_ct(series: Path, path: Path) -> Path:
    """One Legacy Converted Enhanced CT file (per-frame functional groups) written by highdicom
    from a single-frame series."""
    import highdicom
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = [pydicom.dcmread(str(p)) for p in sorted(series.iterdir())]
    image = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=highdicom.UID(), series_number=99,
                                           sop_instance_uid=highdicom.UID(), instance_number=1)
    image.save_as(str(path))
    return path
