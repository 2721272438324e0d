"""`photon inspect FILE`: what a media file holds and what each backbone would get from it;
for a records file (.json, .jsonl), one checking pass over every record."""

from __future__ import annotations

import json

from photon.cli import Command
from photon.core.hookspecs import hookimpl
from photon.modalities.describe import RECORD_SUFFIXES, describe_media, describe_records


def configure(parser):
    parser.add_argument("file", help="a volume (NIfTI, MetaImage, NRRD, .npy/.npz, DICOM series folder or .zip, multi-frame DICOM), image, image folder, video, or records .json/.jsonl")
    parser.add_argument("--kind", choices=("volume", "image", "video"), help="how to read FILE when its type is ambiguous")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--strict", action="store_true", help="records: stop at the first bad record")
    parser.add_argument("--cache-dir", help="records: keep the loaded media here (the training cache)")


def run(args):
    if args.file.lower().endswith(RECORD_SUFFIXES):
        report = describe_records(args.file, strict=args.strict, cache_dir=args.cache_dir)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{report['file']}: {report['usable']} usable records, {report['skipped']} skipped")
            print(f"  benchmarks: {_counts(report['benchmarks'])}")
            print(f"  media: {_counts(report['media'])}")
        return 1 if report["skipped"] else 0
    report = describe_media(args.file, args.kind)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['file']} ({report['modality']})")
    for key, value in report.items():
        if key not in ("file", "modality", "backbones"):
            print(f"  {key}: {value}")
    if not report["backbones"]:
        print("model input: no backbones registered (see `photon plugins`)")
    for row in report["backbones"]:
        shape = " x ".join(map(str, row["shape"]))
        print(f"model input for {row['backbone']}: {row['input']} {shape} (T, C, H, W) -> {row['visual_tokens']} visual tokens")
    return 0


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


@hookimpl
def register_commands(register):
    register("inspect", Command("Show a media file's orientation, spacing, shape and intensities, and the model input per backbone.", configure, run))
