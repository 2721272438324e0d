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


def run(args):
    from photon.demo.report import efficiency_table, findings, table, verdicts
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
    if result.get("efficiency"):
        print(efficiency_table(result))
        print()
    for line in findings(result):
        print(f"- {line}")
    print()
    print("targets:")
    for line in verdicts(result):
        print(f"- {line}")
    print()
    print(f"pictures: {', '.join(result['pictures']['kept_tokens'])}; each quadrant asked of one volume: "
          f"{result['pictures']['quadrants']}; retention over training: {result['pictures']['retention']}")
    print(f"all measurements: {cfg.out}/demo.json ({result['seconds']:.0f} s)")
    return 0


@hookimpl
def register_commands(register):
    register("demo", Command(
        "Train the tiny backbone on synthetic CT VQA with and without Photon; compare accuracy, kept tokens, speed, memory.",
        configure, run,
    ))
