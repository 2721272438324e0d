"""Every hook Photon calls. Each is documented in docs/plugins.md (a test checks it)."""

import pluggy

hookspec = pluggy.HookspecMarker("photon")
hookimpl = pluggy.HookimplMarker("photon")


@hookspec
def register_backbones(register):
    """Add backbones: call register(name, spec) with a photon.adapters.base.BackboneSpec."""


@hookspec
def register_pruners(register):
    """Add token pruners: call register(name, factory); factory(config) returns a Pruner."""


@hookspec
def register_modalities(register):
    """Add input modalities: call register(name, loader), loader(path, **options) -> Media."""


@hookspec
def register_metrics(register):
    """Add benchmark scorers: call register(benchmark, scorer)."""


@hookspec
def register_commands(register):
    """Add CLI commands: call register(name, photon.cli.Command(help, configure, run)).

    configure(parser) adds arguments to an argparse sub-parser; run(args) returns an exit code.
    """


@hookspec(firstresult=True)
def choose_modality(path, kind):
    """Name the registered modality that opens `path` (kind: "volume", "image", "video" or None), or None."""


@hookspec
def selection_made(model, records):
    """Observe each pruning decision: records is photon.last_selection(model) for that forward."""
