"""The plugin core: built-ins through the same hooks, throwaway plugins, PHOTON_PLUGINS."""

import json
import types

import pytest

from photon.cli import Command, main
from photon.core import plugins
from photon.core.hookspecs import hookimpl


def test_builtins_are_registered_through_the_hooks():
    names = {(r.kind, r.name) for r in plugins.everything()}
    assert ("pruner", "photon") in names
    assert ("command", "plugins") in names
    sources = {r.source for r in plugins.everything()}
    assert all(source.startswith("photon.") for source in sources)


def test_throwaway_command_plugin_registers_runs_and_unregisters(capsys):
    calls = []

    def configure(parser):
        parser.add_argument("--word", default="hi")

    def run(args):
        calls.append(args.word)
        return 0

    plugin = types.SimpleNamespace(
        register_commands=hookimpl(lambda register: register("echo-test", Command("test", configure, run)))
    )
    plugins.pm.register(plugin, name="throwaway-command")
    try:
        assert main(["echo-test", "--word", "yo"]) == 0
        assert calls == ["yo"]
        assert main(["plugins", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {"name": "echo-test", "kind": "command", "source": "throwaway-command"} in rows
    finally:
        plugins.pm.unregister(name="throwaway-command")
    assert "echo-test" not in plugins.commands()


def test_a_name_registered_twice_is_an_error():
    plugin = types.SimpleNamespace(register_pruners=hookimpl(lambda register: register("photon", object)))
    plugins.pm.register(plugin, name="duplicate")
    try:
        with pytest.raises(ValueError, match="registered twice"):
            plugins.pruners()
    finally:
        plugins.pm.unregister(name="duplicate")


def test_photon_plugins_env_restricts_entry_point_plugins(monkeypatch):
    loaded = []

    class FakeEntryPoint:
        def __init__(self, name):
            self.name = name

        def load(self):
            loaded.append(self.name)
            return types.SimpleNamespace()

    monkeypatch.setattr(
        plugins.importlib.metadata, "entry_points", lambda group: [FakeEntryPoint("a"), FakeEntryPoint("b")]
    )
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setenv("PHOTON_PLUGINS", "b")
    try:
        plugins.load_plugins()
        assert loaded == ["b"]
        assert plugins.pm.get_plugin("photon.core.pruners") is not None  # built-ins still load
    finally:
        if plugins.pm.get_plugin("b") is not None:
            plugins.pm.unregister(name="b")


def test_throwaway_pruner_plugin_runs_end_to_end_through_the_public_api():
    import torch

    import photon
    from photon.adapters.qwen2_5_vl import load_tiny
    from photon.adapters.qwen_inputs import model_inputs
    from photon.core.errors import PhotonError
    from photon.core.pruners import Selection

    from tests.conftest import video_sample

    class EveryOther:
        name = "every-other"

        def __init__(self, config, **context):
            self.config = config

        def layer_for(self, num_layers):
            return 1

        def select(self, ctx):
            positions = torch.arange(ctx.vision_mask.shape[1])
            return Selection(keep=ctx.vision_mask & (positions % 2 == 0), rule="every-other")

    plugin = types.SimpleNamespace(register_pruners=hookimpl(lambda register: register("every-other", EveryOther)))
    loaded = load_tiny()
    batch = loaded.encoder.collate([loaded.encoder.encode(video_sample(0, 2, 56, 56, "Where?"), train=False)])
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    plugins.pm.register(plugin, name="throwaway-pruner")
    try:
        assert ("pruner", "every-other") in {(r.kind, r.name) for r in plugins.everything()}
        photon.attach(loaded.model, pruner="every-other")
        with torch.no_grad():
            tokens = loaded.model.generate(**inputs, max_new_tokens=2, do_sample=False)
        record = photon.last_selection(loaded.model)[0]
        assert record["pruner"] == "every-other" and record["rule"] == "every-other"
        start = int((batch["input_ids"][0] == 151656).nonzero()[0])
        assert record["keep"] == [(start + i) % 2 == 0 for i in range(record["n_visual"])]
        assert tokens.shape[1] == inputs["input_ids"].shape[1] + 2
        photon.detach(loaded.model)
    finally:
        plugins.pm.unregister(name="throwaway-pruner")
    with pytest.raises(PhotonError, match="unknown pruner 'every-other'"):
        photon.attach(loaded.model, pruner="every-other")
