"""`photon config`: print a config file merged over the defaults, with overrides applied."""

from __future__ import annotations

from omegaconf import OmegaConf

from photon.cli import Command
from photon.core.config import load_config, schema_for
from photon.core.hookspecs import hookimpl


def configure(parser):
    parser.add_argument("file", nargs="?", help="a YAML under configs/ or your own (a training config when it has run/model/"
                                                "data/optim sections); default: the built-in Photon defaults")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. selection.tau=0.1")


def run(args):
    file, overrides = args.file, list(args.overrides)
    if file is not None and "=" in file:  # only overrides were given
        file, overrides = None, [file, *overrides]
    schema = schema_for(file) if file is not None else None
    cfg = load_config(file, overrides, schema) if file is not None else load_config(None, overrides)
    from photon.training.config import TrainConfig, check_train_config

    if schema is TrainConfig:
        check_train_config(cfg)
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


@hookimpl
def register_commands(register):
    register("config", Command("Print the Photon config (defaults, a YAML, and dotlist overrides).", configure, run))
