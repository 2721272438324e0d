"""`photon preprocess SRC... --out DIR`: the offline CT recipe (reorient, resample, clip, crop/pad)."""

from __future__ import annotations

from dataclasses import replace

from photon.cli import Command
from photon.core.hookspecs import hookimpl
from photon.modalities.config import CTConfig
from photon.modalities.preprocess import preprocess_volumes, read_ctrate_metadata


def configure(parser):
    defaults = CTConfig()
    parser.add_argument("sources", nargs="+", metavar="SRC", help="volume files (NIfTI, MetaImage, NRRD, .npy/.npz, multi-frame DICOM, zipped series), DICOM series folders, or folders holding them")
    parser.add_argument("--out", required=True, help="output folder (gets <name>.nii.gz per volume and manifest.jsonl)")
    parser.add_argument("--axcodes", default="".join(defaults.axcodes), help="voxel axis directions to write (default LPS: R->L, A->P, I->S)")
    parser.add_argument("--spacing", type=float, nargs=3, default=defaults.spacing, metavar="MM", help="voxel size (default 1 1 1)")
    parser.add_argument("--interpolation", choices=("linear", "nearest"), default=defaults.interpolation)
    parser.add_argument("--hu-range", type=float, nargs=2, default=defaults.hu_range, metavar="HU", help="clip range (default -1000 1000)")
    parser.add_argument("--no-clip", action="store_true", help="keep the full intensity range")
    parser.add_argument("--crop", type=int, nargs=3, default=defaults.crop, metavar="N", help="centre crop/pad shape (default 364 364 364)")
    parser.add_argument("--no-crop", action="store_true", help="keep the resampled shape")
    parser.add_argument("--pad-value", type=float, default=defaults.pad_value, help="padding value (default -1000, air)")
    parser.add_argument("--calibration", choices=("auto", "hu", "raw", "none"), default=defaults.calibration,
                        help="auto: detect raw stored values and rescale them once (see docs/data.md)")
    parser.add_argument("--slope", type=float, help="for raw volumes: HU = slope * stored + intercept")
    parser.add_argument("--intercept", type=float)
    parser.add_argument("--metadata", help="CT-RATE metadata CSV: per-volume slope, intercept and spacing by VolumeName")
    parser.add_argument("--force", action="store_true", help="redo and overwrite outputs that exist")
    parser.add_argument("--strict", action="store_true", help="stop at the first file that fails")


def run(args):
    cfg = replace(
        CTConfig(), axcodes=list(args.axcodes.upper()), spacing=list(args.spacing), interpolation=args.interpolation,
        hu_range=None if args.no_clip else list(args.hu_range), crop=None if args.no_crop else list(args.crop),
        pad_value=args.pad_value, calibration=args.calibration, slope=args.slope, intercept=args.intercept,
    )
    metadata = read_ctrate_metadata(args.metadata) if args.metadata else None
    outcome = preprocess_volumes(args.sources, args.out, cfg, metadata=metadata, force=args.force, strict=args.strict)
    print(f"photon preprocess: {outcome}; manifest: {args.out}/manifest.jsonl")
    return 1 if outcome.failed else 0


@hookimpl
def register_commands(register):
    register("preprocess", Command("Reorient, resample to 1 mm, clip HU and crop/pad CT volumes (resumable).", configure, run))
