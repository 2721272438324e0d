"""`photon eval`: score predictions with a benchmark's published protocol, or compare two runs."""

from __future__ import annotations

import sys
from pathlib import Path

from photon.cli import Command
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.evaluation import bertscore
from photon.evaluation.evaluate import compare_files, evaluate_file
from photon.evaluation.report import compare_markdown, report_markdown, write_json, write_jsonl, write_atomic
from photon.evaluation.scoring import EvalOptions

BENCHMARKS = ("3d-rad", "deeptumorvqa", "slake", "nextqa", "medframeqa")


def configure(parser):
    parser.add_argument("--benchmark", help=f"{', '.join(BENCHMARKS)} or a plugin's (default: the files' 'benchmark' field)")
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--pred", type=Path, help="predictions JSONL written by `photon infer` (docs/records.md)")
    runs.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"), help="two predictions files: B is compared with A")
    parser.add_argument("--ref", type=Path, help="records JSONL (`photon convert`): fills meta and reference by id")
    parser.add_argument("--out", type=Path, help="output folder (default: beside the predictions, <name>_eval/)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--bleu", choices=("corpus", "sentence"), default="corpus",
                        help="3D-RAD BLEU-1: corpus per subtask (paper, default) or mean per case (release script)")
    parser.add_argument("--mra", choices=("continuous", "vsi"), default="continuous",
                        help="DeepTumorVQA numeric score column: continuous MRA (v2 release, default) or VSI-Bench thresholded")
    parser.add_argument("--bertscore-model",
                        help=f"BERTScore model: a local folder or a hub id in the local cache (default {bertscore.DEFAULT_MODEL})")
    parser.add_argument("--bertscore-layer", type=int, default=bertscore.DEFAULT_LAYER,
                        help=f"hidden layer whose embeddings are matched (default {bertscore.DEFAULT_LAYER})")
    parser.add_argument("--bertscore-download", action="store_true", help="allow fetching the BERTScore model from the hub")
    parser.add_argument("--bertscore-batch-size", type=int, default=32, help="pairs per BERTScore batch (default 32)")
    parser.add_argument("--no-bertscore", action="store_true", help="skip BERTScore")
    parser.add_argument("--device", default="auto", help="device for BERTScore: auto, cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when bad records or reference records without a prediction were left out "
                             "(by default the report is written and the exit status is 1)")
    parser.add_argument("--strict", action="store_true",
                        help="stop (exit 2) at the first bad record, or at a reference record without a prediction, "
                             "instead of reporting and leaving it out")


def options_from(args) -> EvalOptions:
    if args.resamples < 1:
        raise PhotonError(f"--resamples must be at least 1, got {args.resamples}")
    model = None if args.no_bertscore else (args.bertscore_model or bertscore.DEFAULT_MODEL)
    return EvalOptions(
        resamples=args.resamples,
        seed=args.seed,
        bertscore_model=model,
        bertscore_layer=args.bertscore_layer,
        bertscore_required=args.bertscore_model is not None and not args.no_bertscore,
        bertscore_download=args.bertscore_download,
        bertscore_batch_size=args.bertscore_batch_size,
        device=args.device,
        bleu=args.bleu,
        mra=args.mra,
    )


def _default_out(path: Path, suffix: str = "_eval") -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + suffix)


def run(args):
    options = options_from(args)
    if args.compare:
        a, b = args.compare
        report = compare_files(a, b, args.benchmark, args.ref, options=options, strict=args.strict)
        out = args.out or _default_out(a, f"_vs_{b.name.removesuffix('.jsonl')}_eval")
        markdown = compare_markdown(report)
        write_json(out / "compare.json", report)
        write_atomic(out / "compare.md", markdown)
        written = ["compare.md", "compare.json"]
        notes = sorted({n for side in ("a", "b") for n in report[side]["notes"] if "skipped" in n})
    else:
        report, per_case = evaluate_file(args.pred, args.benchmark, args.ref, options=options, strict=args.strict)
        out = args.out or _default_out(args.pred)
        markdown = report_markdown(report)
        write_json(out / "report.json", report)
        write_atomic(out / "report.md", markdown)
        write_jsonl(out / "cases.jsonl", per_case)
        written = ["report.md", "report.json", "cases.jsonl"]
        notes = [n for n in report["notes"] if "skipped" in n]
    print(markdown, end="")
    for note in notes:
        print(f"photon eval: {note}", file=sys.stderr)
    print(f"photon eval: wrote {', '.join(str(out / name) for name in written)}", file=sys.stderr)
    # --strict never gets here with anything left out: the first bad or missing record stops it (exit 2).
    left_out = False
    for side in [report[side] for side in ("a", "b")] if args.compare else [report]:
        bad, missing = side["bad_records"]["count"], side["missing_predictions"]["count"]
        if bad or missing:
            left_out = True
            print(f"photon eval: {side['predictions']}: left out {bad} bad record(s) and {missing} reference record(s) "
                  "without a prediction (report: bad_records, missing_predictions; --strict stops at the first, "
                  "--allow-missing exits 0)", file=sys.stderr)
    return 1 if left_out and not args.allow_missing else 0


@hookimpl
def register_commands(register):
    register("eval", Command("Score predictions with a benchmark's published protocol (or compare two runs).", configure, run))
