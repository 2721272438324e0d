"""`photon preprocess`: the offline CT recipe over many files, idempotent and resumable.

Each source (a volume file of any format Photon reads, a DICOM series folder, or a folder searched for both) becomes
OUT/<name>.nii.gz, written under a temporary name and renamed, so an interrupted run
leaves no half-written volume. An existing output is never overwritten without
force=True, which makes a second run skip what the first finished. OUT/manifest.jsonl
gets one line per file handled (appended, so it survives interruption; the last line
for an output wins).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from photon.core.errors import PhotonError
from photon.modalities.base import explain
from photon.modalities.config import CTConfig
from photon.modalities.ct import calibrate, check_config, prepare
from photon.modalities.dicom import is_multiframe_volume
from photon.modalities.volumes import Volume, dicom_files, is_volume_file, read_volume, strip_volume_suffix

RECIPE_KEYS = ("axcodes", "spacing", "interpolation", "hu_range", "crop", "pad_value")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return f"{self.done} written, {self.skipped} already done (skipped), {self.failed} failed"


def find_jobs(sources: Iterable[str | Path], out_dir: Path) -> list[Job]:
    """One job per volume; a folder is a DICOM series itself or is searched for NIfTIs and series."""
    jobs = []
    for source in map(Path, sources):
        if source.is_dir() and not dicom_files(source):
            found = [p for p in sorted(source.rglob("*")) if (p.is_file() and (is_volume_file(p) or is_multiframe_volume(p)))
                     or (p.is_dir() and dicom_files(p))]
            if not found:
                raise PhotonError(f"{source}: no volume files (NIfTI, MetaImage, NRRD, .npy/.npz, zip, multi-frame DICOM) or DICOM series folders under it")
            jobs += [Job(p, out_dir / f"{strip_volume_suffix(str(p.relative_to(source)))}.nii.gz") for p in found]
        else:
            jobs.append(Job(source, out_dir / f"{strip_volume_suffix(source.name)}.nii.gz"))
    outputs: dict[Path, Path] = {}
    for job in jobs:
        if job.output in outputs:
            raise PhotonError(f"{outputs[job.output]} and {job.source} would both be written to {job.output}; preprocess them into different --out folders")
        outputs[job.output] = job.source
    return jobs


def read_ctrate_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """CT-RATE's metadata CSV: per VolumeName, RescaleSlope/Intercept and XYSpacing/ZSpacing."""
    path = Path(path)
    table = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for n, row in enumerate(csv.DictReader(handle), start=2):
                name = (row.get("VolumeName") or "").strip()
                if not name:
                    raise PhotonError(f"{path}:{n}: no VolumeName; expected CT-RATE's metadata CSV")
                entry: dict[str, Any] = {}
                if row.get("RescaleSlope") not in (None, "") and row.get("RescaleIntercept") not in (None, ""):
                    entry["slope"], entry["intercept"] = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
                if row.get("XYSpacing") and row.get("ZSpacing"):
                    xy = [float(v) for v in row["XYSpacing"].strip("[]() ").replace(",", " ").split()]
                    entry["spacing"] = [xy[0], xy[-1], float(row["ZSpacing"])]
                table[name] = entry
    except (OSError, ValueError, IndexError) as exc:
        raise PhotonError(f"{path}: cannot read it as CT-RATE metadata ({exc})") from exc
    return table


def with_spacing(volume: Volume, spacing: list[float]) -> Volume:
    """Keep the affine's directions, replace its voxel sizes (for headers that lost them)."""
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(spacing)
    return replace(volume, affine=affine)


def preprocess_file(job: Job, cfg: CTConfig, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the recipe on one source and write its output; returns the manifest entry."""
    import nibabel as nib

    volume = read_volume(job.source, cfg)
    if metadata:
        cfg = replace(cfg, slope=metadata.get("slope", cfg.slope), intercept=metadata.get("intercept", cfg.intercept))
        if "spacing" in metadata:
            volume = with_spacing(volume, metadata["spacing"])
    original = {"shape": list(volume.data.shape), "spacing": [round(s, 6) for s in volume.spacing],
                "axcodes": "".join(volume.axcodes), "oblique": volume.oblique}
    volume = calibrate(volume, cfg)
    original["hu_range"] = [float(volume.data.min()), float(volume.data.max())]
    volume = prepare(volume, cfg)
    fits_int16 = cfg.hu_range is not None and -32768 <= cfg.hu_range[0] and cfg.hu_range[1] <= 32767
    data = np.round(volume.data).astype(np.int16) if fits_int16 else volume.data.astype(np.float32)
    image = nib.Nifti1Image(data, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = job.output.with_name(f".{job.output.name[:-7]}.{os.getpid()}.tmp.nii.gz")
    try:
        image.to_filename(str(temporary))
        os.replace(temporary, job.output)
    finally:
        temporary.unlink(missing_ok=True)
    return {"status": "done", "original": original, "calibration": volume.meta.get("calibration"),
            "shape": list(data.shape), "spacing": [round(s, 6) for s in volume.spacing],
            "axcodes": "".join(volume.axcodes), "dtype": str(data.dtype)}


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    entries = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            entries[entry.get("output")] = entry
    return entries


def append_manifest(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def preprocess_volumes(
    sources: Iterable[str | Path],
    out_dir: str | Path,
    cfg: CTConfig | None = None,
    *,
    metadata: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    strict: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> Outcome:
    from tqdm import tqdm

    cfg = check_config(cfg or CTConfig(), "preprocess options")
    out_dir = Path(out_dir)
    jobs = find_jobs(sources, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST
    previous = read_manifest(manifest)
    recipe = {key: asdict(cfg)[key] for key in RECIPE_KEYS}
    outcome = Outcome()
    for job in tqdm(jobs, desc="preprocess", unit="volume", disable=not progress):
        base = {"source": str(job.source), "output": str(job.output), "options": recipe}
        if job.output.exists() and not force:
            outcome.skipped += 1
            earlier = previous.get(str(job.output))
            if earlier is None or earlier.get("status") != "done":
                append_manifest(manifest, {**base, "status": "done", "note": "output existed before this run"})
            elif earlier.get("options") != recipe:
                report(f"{job.output}: exists but was made with other options {earlier.get('options')}; use --force to redo it")
            continue
        started = time.perf_counter()
        try:
            entry = {**base, **preprocess_file(job, cfg, (metadata or {}).get(job.source.name))}
            outcome.done += 1
        except Exception as exc:  # one bad file must not stop the others
            if not isinstance(exc, PhotonError):
                exc = PhotonError(f"{job.source}: {explain(exc)}")
            entry = {**base, "status": "failed", "error": str(exc)}
            outcome.failed += 1
            report(f"failed: {exc}")
            if strict:
                append_manifest(manifest, entry)
                raise PhotonError(f"{exc} (strict: stopping)") from exc
        entry["seconds"] = round(time.perf_counter() - started, 3)
        append_manifest(manifest, entry)
    return outcome
