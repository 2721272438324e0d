"""`photon doctor`: what is installed beside Photon, and whether each lies in the range Photon declares
(transformers: the range CI tests) and in the ranges of the tools that share the environment."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, requires

from photon.cli import Command
from photon.core import compat
from photon.core.hookspecs import hookimpl

# What a Photon user's environment may hold, in the order the table shows it.
PACKAGES = ("torch", "transformers", "deepspeed", "accelerate", "flash-attn", "lmms-eval", "ms-swift", "vllm", "av", "decord",
            "SimpleITK", "monai")
# Tools that pin transformers themselves: whether their pin admits the installed release.
CONSTRAINERS = ("lmms-eval", "ms-swift", "vllm")


def _requirements(distribution: str):
    from packaging.requirements import Requirement

    try:
        return [Requirement(text) for text in requires(distribution) or []]
    except PackageNotFoundError:
        return []


def _declared(name: str) -> tuple[str | None, str | None]:
    """(specifier, extra) Photon's own metadata declares for a package, or (None, None)."""
    for requirement in _requirements("photon"):
        if requirement.name.lower() == name.lower():
            extra = None
            if requirement.marker is not None:
                text = str(requirement.marker)
                extra = text.split("extra ==", 1)[1].strip().strip("\"'") if "extra ==" in text else None
            return str(requirement.specifier) or "any", extra
    return None, None


def _transformers_pin(tool: str) -> str | None:
    for requirement in _requirements(tool):
        if requirement.name.lower() == "transformers" and requirement.marker is None:
            return str(requirement.specifier) or None
    return None


def report() -> dict:
    """{"python", "photon", "packages": [{name, installed, declared, extra, status}], "transformers_pins": [...]}."""
    rows = []
    for name in PACKAGES:
        version = compat.installed(name)
        declared, extra = _declared(name)
        if name == "transformers":
            declared = compat.TESTED_TRANSFORMERS
        inside = compat.in_range(version, declared) if declared and declared != "any" else None
        if version is None:
            status = "not installed"
        elif inside is False:
            status = "OUTSIDE the tested range" if name == "transformers" else "outside the declared range"
        elif declared is None:
            status = "installed (not a Photon requirement)"
        else:
            status = "ok"
        rows.append({"name": name, "installed": version, "declared": declared, "extra": extra, "status": status})
    transformers = compat.installed("transformers")
    pins = []
    for tool in CONSTRAINERS:
        pin = _transformers_pin(tool) if compat.installed(tool) else None
        if pin:
            pins.append({"tool": tool, "transformers": pin, "admits_installed": compat.in_range(transformers, pin)})
    return {"python": platform.python_version(), "photon": compat.installed("photon"), "packages": rows, "transformers_pins": pins}


def configure(parser):
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args):
    result = report()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"photon {result['photon']} on Python {result['python']}; transformers tested: {compat.TESTED_TRANSFORMERS}")
    header = ("package", "installed", "photon declares", "status")
    cells = [(r["name"], r["installed"] or "-", (r["declared"] or "-") + (f" [{r['extra']}]" if r["extra"] else ""), r["status"])
             for r in result["packages"]]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]
    for row in [header, *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    for pin in result["transformers_pins"]:
        verdict = "admits" if pin["admits_installed"] else "does NOT admit"
        print(f"{pin['tool']} pins transformers{pin['transformers']}: {verdict} the installed {compat.installed('transformers')}")
    return 0


@hookimpl
def register_commands(register):
    register("doctor", Command("Print the installed torch, transformers, deepspeed, flash-attn, lmms-eval, ms-swift ... "
                               "and whether each lies in the range Photon declares and tests.", configure, run))
