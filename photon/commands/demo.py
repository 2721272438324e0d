"""`photon demo`: the offline main job (see photon/demo)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

from photon.cli import Command
from photon.core.hookspecs import hookimpl


def configure(parser):
    parser.add_argument("--quick", action="store_true", help="a smaller set, volume and run: about three minutes on 2 CPU cores")
    parser.add_argument("--out", help="folder for data, runs, pictures and demo.json (default: runs/demo)")
    parser.add_argument("--json", action="store_true", help="print the measurements as one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--spread", nargs="+", metavar="DEMO_JSON",
                        help="train nothing: read finished runs' demo.json (e.g. one per seed) and print every figure as "
                             "its mean [min-max] over them")
    parser.add_argument("--pretrain", action="store_true",
                        help="train nothing for the demo: make the demo backbone it starts from (hours on 2 CPU cores; "
                             "writes photon/demo/backbone.safetensors unless weights=PATH); KEY=VALUE set its own settings")
    parser.add_argument("overrides", nargs="*", help="settings as KEY=VALUE, e.g. steps=400 n_train=512 (docs/config.md)")


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to file descriptor 1 (DeepSpeed's logging too) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def settings(args):
    from photon.core.config import load_config, to_object
    from photon.demo.config import QUICK, DemoConfig

    preset = [f"{k}={json.dumps(v)}" for k, v in QUICK.items()] if args.quick else []
    given = preset + list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    return to_object(load_config(None, given, DemoConfig))


def spread(paths: list[str]) -> int:
    from pathlib import Path

    from photon.core.errors import PhotonError
    from photon.demo.report import spread_report

    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PhotonError(f"{path}: cannot read a demo.json ({exc})") from exc
        if not isinstance(result, dict) or "runs" not in result:
            raise PhotonError(f"{path}: not a finished demo's demo.json (it has no 'runs')")
        results.append(result)
    print(spread_report(results))
    return 0


def pretrain(args) -> int:
    from photon.core.config import load_config, to_object
    from photon.demo.pretrain import PretrainConfig, pretrain as make_backbone

    given = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = to_object(load_config(None, given, PretrainConfig))
    result = make_backbone(cfg)
    last = result["checks"][-1]
    print(f"demo backbone: {result['weights']} ({result['vocabulary_size']} embedding rows); held-out accuracy (prior) at step "
          f"{last['step']}: " + ", ".join(f"{k} {v['accuracy']:.2f} ({v['prior']:.2f})" for k, v in sorted(last["held_out"].items())))
    return 0


def run(args):
    from photon.demo.report import curve_table, efficiency_table, findings, table, verdicts

    if args.spread:
        return spread(args.spread)
    if args.pretrain:
        return pretrain(args)
    from photon.demo.run import run_demo

    cfg = settings(args)
    say = lambda text: print(text, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    with stdout_to_stderr() if args.json else contextlib.nullcontext():
        result = run_demo(cfg, say)
    if args.json:
        print(json.dumps(result))
        return 0
    print()
    print(table(result))
    print()
    for extra in (curve_table(result), efficiency_table(result)):
        if extra:
            print(extra)
            print()
    for line in findings(result):
        print(f"- {line}")
    print()
    print("targets:")
    for line in verdicts(result):
        print(f"- {line}")
    print()
    pictures = result["pictures"]
    print(f"pictures: {', '.join(pictures['kept_tokens'])}; each quadrant asked of one volume: {pictures['quadrants']}; "
          f"retention over training: {pictures['retention']}" + (f"; pruners side by side: {pictures['pruners']}" if pictures.get("pruners") else ""))
    print(f"all measurements: {cfg.out}/demo.json ({result['seconds']:.0f} s)")
    return 0


@hookimpl
def register_commands(register):
    register("demo", Command(
        "Train the tiny backbone on synthetic CT VQA with and without Photon; compare accuracy, kept tokens, speed, memory.",
        configure, run,
    ))
