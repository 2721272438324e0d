"""`photon convert BENCHMARK SRC OUT.jsonl`: a benchmark's published files -> records (docs/records.md)."""

from __future__ import annotations

from photon.cli import Command
from photon.core.hookspecs import hookimpl
from photon.modalities.convert import CONVERTERS, convert


def configure(parser):
    parser.add_argument("benchmark", choices=sorted(CONVERTERS))
    parser.add_argument("src", help="the benchmark's files as published (see docs/data.md for each)")
    parser.add_argument("out", help="records file to write (.jsonl)")
    parser.add_argument("--volumes", help="3d-rad: CT-RATE root; deeptumorvqa: folder of <image_id>/ct.nii.gz")
    parser.add_argument("--videos", help="nextqa: folder holding NExTVideo/")
    parser.add_argument("--map", dest="video_map", help="nextqa: map_vid_vidorID.json (default: beside SRC or the videos)")
    parser.add_argument("--split", help="3d-rad: test (default), train or all; slake: test (default), train or validation")
    parser.add_argument("--lang", help="slake: en (default), zh or all")
    parser.add_argument("--format", help="deeptumorvqa: mc (default), free or both")
    parser.add_argument("--version", type=int, choices=(1, 2), help="deeptumorvqa: force the release version (default: detect)")
    parser.add_argument("--media-dir", help="medframeqa: where to write the frames (default: OUT's name + _frames)")
    parser.add_argument("--strict", action="store_true", help="stop at the first row that cannot be converted")


def run(args):
    options = {key: getattr(args, key) for key in ("volumes", "videos", "video_map", "split", "lang", "format", "version", "media_dir")}
    outcome = convert(args.benchmark, args.src, args.out, strict=args.strict, **options)
    print(f"photon convert {args.benchmark}: {outcome} -> {args.out}")
    return 1 if outcome.skipped else 0


@hookimpl
def register_commands(register):
    register("convert", Command("Convert a benchmark's published files to Photon records (JSONL).", configure, run))
