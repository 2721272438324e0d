"""The plugin manager: built-ins and third-party plugins go through the same hooks.

Third-party plugins are found through the entry-point group "photon". PHOTON_PLUGINS, when
set, is a comma-separated list of the entry-point plugins allowed to load ("" loads none);
built-ins always load, so the documented backbones and commands stay available.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from photon.core import hookspecs

BUILTIN_PLUGINS = (
    "photon.adapters.qwen2_5_vl",
    "photon.adapters.qwen3_vl",
    "photon.demo.backbone",
    "photon.core.pruners",
    "photon.pruners.random_keep",
    "photon.pruners.ise_topk",
    "photon.pruners.fastv",
    "photon.pruners.visionzip",
    "photon.pruners.divprune",
    "photon.commands.plugins",
    "photon.commands.doctor",
    "photon.commands.config",
    "photon.commands.bench",
    "photon.commands.train",
    "photon.commands.eval",
    "photon.evaluation.benchmarks.rad3d",
    "photon.evaluation.benchmarks.deeptumorvqa",
    "photon.evaluation.benchmarks.slake",
    "photon.evaluation.benchmarks.nextqa",
    "photon.evaluation.benchmarks.medframeqa",
    "photon.commands.inspect",
    "photon.commands.preprocess",
    "photon.commands.convert",
    "photon.commands.attach",
    "photon.commands.infer",
    "photon.commands.launch",
    "photon.commands.demo",
    "photon.commands.app",
    "photon.modalities.ct",
    "photon.modalities.frames",
    "photon.modalities.video",
)

pm = pluggy.PluginManager("photon")
pm.add_hookspecs(hookspecs)
_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register the built-ins, then the allowed entry-point plugins (once per process)."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in BUILTIN_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    allowed = os.environ.get("PHOTON_PLUGINS")
    if allowed is None:
        pm.load_setuptools_entrypoints("photon")
        return pm
    wanted = {name.strip() for name in allowed.split(",") if name.strip()}
    for entry_point in importlib.metadata.entry_points(group="photon"):
        if entry_point.name in wanted and pm.get_plugin(entry_point.name) is None:
            pm.register(entry_point.load(), name=entry_point.name)
    return pm


@dataclass(frozen=True)
class Registered:
    name: str
    kind: str
    source: str
    obj: Any


def _collect(hook_name: str, kind: str) -> dict[str, Registered]:
    load_plugins()
    found: dict[str, Registered] = {}
    # Calling each implementation separately lets every entry name its source plugin.
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        def register(name, obj, _source=impl.plugin_name):
            if name in found:
                raise ValueError(
                    f"{kind} {name!r} is registered twice: by {found[name].source} and by {_source}"
                )
            found[name] = Registered(name, kind, _source, obj)

        impl.function(register=register)
    return found


def backbones() -> dict[str, Registered]:
    return _collect("register_backbones", "backbone")


def pruners() -> dict[str, Registered]:
    return _collect("register_pruners", "pruner")


def modalities() -> dict[str, Registered]:
    return _collect("register_modalities", "modality")


def metrics() -> dict[str, Registered]:
    return _collect("register_metrics", "metric")


def commands() -> dict[str, Registered]:
    return _collect("register_commands", "command")


def everything() -> list[Registered]:
    """All registered names, for `photon plugins`."""
    rows = []
    for collect in (backbones, pruners, modalities, metrics, commands):
        rows.extend(collect().values())
    return rows
