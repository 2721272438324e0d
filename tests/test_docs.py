"""Every hook, CLI command and config key is documented (datasette-style)."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from photon.core import config as config_module
from photon.core import hookspecs, plugins
from photon.modalities.config import DataConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _hook_names():
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "photon_spec")]


@pytest.mark.parametrize("hook", _hook_names())
def test_hook_is_documented(hook):
    assert re.search(rf"^### {hook}$", (DOCS / "plugins.md").read_text(), re.M), f"docs/plugins.md lacks '### {hook}'"


@pytest.mark.parametrize("command", sorted(plugins.commands()))
def test_command_is_documented(command):
    text = (DOCS / "cli.md").read_text()
    assert re.search(rf"^### photon {re.escape(command)}$", text, re.M), f"docs/cli.md lacks '### photon {command}'"


def _keys(schema, prefix=""):
    for f in dataclasses.fields(schema):
        if prefix == "" and f.name == "photon":
            continue  # TrainConfig.photon is PhotonConfig, documented key by key above
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _keys(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


from photon.demo.config import DemoConfig  # noqa: E402
from photon.demo.pretrain import PretrainConfig  # noqa: E402
from photon.training.config import TrainConfig  # noqa: E402

DOCUMENTED_SCHEMAS = [config_module.PhotonConfig, TrainConfig, DataConfig, DemoConfig, PretrainConfig]


@pytest.mark.parametrize("key", [k for s in DOCUMENTED_SCHEMAS for k in _keys(s)])
def test_config_key_is_documented(key):
    assert f"`{key}`" in (DOCS / "config.md").read_text(), f"docs/config.md lacks `{key}`"


def test_ci_runs_the_readme_test_command():
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci_lines = [line for line in (root / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == test_command
