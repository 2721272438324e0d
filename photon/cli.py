"""The `photon` command: every sub-command is registered through the register_commands hook."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from photon.core import plugins
from photon.core.errors import PhotonError


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], "int | None"]


def build_parser() -> argparse.ArgumentParser:
    from photon import __version__

    parser = argparse.ArgumentParser(
        prog="photon",
        description="Photon: instruction-conditioned visual token pruning for Qwen-VL models.",
    )
    parser.add_argument("--version", action="version", version=f"photon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, registered in sorted(plugins.commands().items()):
        command = registered.obj
        child = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(child)
        child.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    import os

    # Under a launcher every rank says its own line; the rank tells them apart.
    who = f"photon {args.command}" + (f" [rank {os.environ.get('RANK')}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")
    try:
        return int(args._run(args) or 0)
    except PhotonError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
