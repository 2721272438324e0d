"""`photon app`: the browser viewer of what a question kept (photon/app.py; `pip install -e ".[app]"`)."""

from __future__ import annotations

import os
import sys

from photon.cli import Command
from photon.commands.model_options import add_model_arguments, check_model_arguments, open_from
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl

DEFAULT_BACKBONE = "qwen2.5-vl-tiny"


def configure(parser):
    add_model_arguments(parser)
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    serving.add_argument("--port", type=int, default=7860)
    serving.add_argument("--data-root", metavar="DIR",
                         help="let the page open server paths under DIR (and nothing outside it); default: uploads only")
    serving.add_argument("--max-upload-mb", type=int, default=2048, help="largest upload accepted (default 2048 MB)")


def app_from(args):
    """The PhotonApp the arguments describe (the model opened as `photon attach` opens it)."""
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise PhotonError('photon app needs Gradio: pip install -e ".[app]"') from exc
    from photon.app import PhotonApp
    from photon.wrapping import random_weights_note

    if not args.backbone and not args.checkpoint:
        args.backbone = DEFAULT_BACKBONE  # offline: the tiny random-weight backbone, and the page says so
    if args.data_root and not os.path.isdir(args.data_root):
        raise PhotonError(f"--data-root {args.data_root}: no such folder")
    if args.max_upload_mb < 1:
        raise PhotonError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    if not 0 < args.port < 65536:
        raise PhotonError(f"--port {args.port}: expected 1-65535")
    check_model_arguments(args)
    opened, options = open_from(args)
    note = random_weights_note(opened.loaded)
    if note and note.startswith("note: "):
        note = note[len("note: "):]
    return PhotonApp(opened.loaded, options, data_root=args.data_root, pruner=args.pruner, note=note,
                     max_new_tokens=args.max_new_tokens)


def run(args):
    from photon.app import serve

    app = app_from(args)
    where = f"http://{args.host}:{args.port}"
    print(f"photon app: {app.loaded.backbone} ({app.mode}) on {where}" + (f", data root {app.data_root}" if app.data_root else ""),
          file=sys.stderr)
    serve(app, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


@hookimpl
def register_commands(register):
    register("app", Command("Open volumes and videos in the browser: ask, and see which tokens each question kept.", configure, run))
