"""`photon plugins`: what is registered, by whom."""

from __future__ import annotations

import json

from photon.cli import Command
from photon.core import plugins
from photon.core.hookspecs import hookimpl


def configure(parser):
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args):
    rows = [{"name": r.name, "kind": r.kind, "source": r.source} for r in plugins.everything()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    widths = [max([len(h)] + [len(row[h]) for row in rows]) for h in ("name", "kind", "source")]
    print("  ".join(h.upper().ljust(w) for h, w in zip(("name", "kind", "source"), widths)))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(("name", "kind", "source"), widths)))
    return 0


@hookimpl
def register_commands(register):
    register("plugins", Command("List registered backbones, pruners, modalities, metrics and commands.", configure, run))
