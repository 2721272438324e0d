"""`photon attach`: wrap a backbone with Photon; ask about an input, save the wrapped model, or
print what the wrapping is. The work is in photon.wrapping, photon.inference, photon.visualize."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from photon.cli import Command
from photon.commands.model_options import add_model_arguments, check_model_arguments, open_from
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.inference import Asked, ask, check_question
from photon.wrapping import explain_rule, random_weights_note, save_wrapped, summarize


def configure(parser):
    add_model_arguments(parser)
    asking = parser.add_argument_group("asking")
    asking.add_argument("--input", action="append", default=[], metavar="FILE",
                        help="a volume (NIfTI, MetaImage, NRRD, .npy/.npz, DICOM series folder or .zip, multi-frame DICOM), image, image folder or video; repeat for several")
    asking.add_argument("--question", help="what to ask about the input")
    asking.add_argument("--json", action="store_true", help="print one JSON object")
    asking.add_argument("--baseline", action="store_true", help="also answer with the unpruned model, side by side")
    asking.add_argument("--save-selection", metavar="DIR", help="write selection.json and overlay PNGs of the kept tokens")
    saving = parser.add_argument_group("saving")
    saving.add_argument("--save", metavar="DIR", help="write the wrapped model as a Photon checkpoint folder")
    saving.add_argument("--link", action="store_true", help="with --save: symlink the source folder's weights instead of copying")


def _check(args) -> None:
    if args.input:
        check_question(args.question)
        for path in args.input:
            if not Path(path).exists():
                raise PhotonError(f"--input {path}: no such file or folder")
    else:
        for flag, value in (("--question", args.question), ("--baseline", args.baseline), ("--save-selection", args.save_selection)):
            if value:
                raise PhotonError(f"{flag} needs --input FILE")
    if args.link and not args.save:
        raise PhotonError("--link needs --save DIR")
    check_model_arguments(args)


def run(args):
    _check(args)
    opened, options = open_from(args)
    loaded = opened.loaded
    report = {}
    if args.save:
        folder = save_wrapped(opened, args.save, link=args.link)
        report["saved"] = str(folder)
        print(f"photon attach: wrote {folder}" + (" (weights linked)" if args.link else ""), file=sys.stderr)
    if not args.input:
        if not args.save:
            _print_summary(summarize(loaded, options), args.json)
        elif args.json:
            print(json.dumps(report))
        return 0
    asked = ask(loaded, args.input, args.question, max_new_tokens=args.max_new_tokens, media_options=options,
                baseline=args.baseline)
    report.update(asked.as_dict(), load_s=round(opened.load_s, 6))
    if args.save_selection:
        from photon.visualize import save_selection

        context = {"input": [str(p) for p in args.input], "question": args.question, "answer": asked.result.answer,
                   "backbone": loaded.backbone}
        paths = save_selection(args.save_selection, asked.result.selection, asked.media,
                               temporal_patch=loaded.encoder.geometry.temporal_patch_size, context=context)
        report["selection_files"] = [str(p) for p in paths]
    if args.json:
        print(json.dumps(report))
    else:
        _print_answer(asked, report)
    note = random_weights_note(loaded)
    if note:
        print(note, file=sys.stderr)
    return 0


def _print_answer(asked: Asked, report: dict) -> None:
    r, b = asked.result, asked.baseline
    ratio = f" ({r.keep_ratio:.1%})" if r.keep_ratio is not None else ""
    theta = f", theta {r.theta:.4g}" if r.theta is not None else ""
    if b is None:
        print(f"answer: {r.answer}")
    else:
        print(f"photon answer:   {r.answer}")
        print(f"unpruned answer: {b.answer}")
    print(f"visual tokens: kept {r.n_kept} of {r.n_visual}{ratio}{theta}")
    print(f"rule: {asked.rule} ({explain_rule(asked.rule)}); mode {asked.mode}, selection layer {asked.layer}")
    print(f"time: load {report['load_s']:.2f} s, input {report['media_s']:.2f} s, "
          f"prefill {r.prefill_s:.3f} s, decode {r.decode_s:.3f} s, total {r.total_s:.3f} s")
    if b is not None:
        rows = [("", "photon", "unpruned"), ("visual tokens", f"{r.n_kept}/{r.n_visual}", f"{b.n_kept}/{b.n_visual}"),
                ("prefill (s)", f"{r.prefill_s:.3f}", f"{b.prefill_s:.3f}"), ("decode (s)", f"{r.decode_s:.3f}", f"{b.decode_s:.3f}"),
                ("total (s)", f"{r.total_s:.3f}", f"{b.total_s:.3f}")]
        for row in rows:
            print(f"{row[0]:<15}{row[1]:>14}{row[2]:>14}")
    for path in report.get("selection_files", []):
        print(f"wrote {path}")


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(f"backbone: {summary['backbone']} ({summary['backbone_parameters']:,} parameters, {summary['dtype']} on {summary['device']})")
    print(f"adapter: {summary['adapter']}")
    print(f"selection layer: {summary['selection_layer']} of decoder layers 0..{summary['decoder_layers'] - 1} "
          "(its output is pruned; later layers see only the kept tokens)")
    print(f"mode: {summary['mode']}")
    print(f"rule: {summary['rule']} ({summary['rule_meaning']})")
    added = [f"{name} {count:,} parameters" for name, count in summary["added_parameters"].items()]
    if summary["mode"] != "trained" and "threshold predictor" in summary["added_parameters"]:
        added[0] += " (used in trained mode)"
    print("added modules: " + (", ".join(added) or "none"))
    print("visual tokens per default input: " + ", ".join(f"{name} -> {n:,}" for name, n in summary["visual_tokens"].items()))


@hookimpl
def register_commands(register):
    register("attach", Command("Wrap a backbone with Photon: ask about a volume, image or video, save the wrapped "
                               "model, or show the wrapping.", configure, run))
