"""Every YAML under configs/ opens with the command that uses it and loads over its schema."""

from pathlib import Path

import pytest

from photon.core.config import PhotonConfig, load_config, schema_for, to_object
from photon.core.errors import PhotonError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
YAMLS = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONFIGS)) for p in YAMLS])
def test_yaml_opens_with_its_command_and_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# photon ") or first.startswith("# deepspeed ") or first.startswith("# torchrun "), first
    schema = schema_for(path)
    cfg = load_config(path, schema=schema)
    if schema is not None:
        to_object(cfg)  # every value has the schema's type


def test_dotlist_overrides_apply_and_bad_keys_name_themselves(tmp_path):
    cfg = load_config(CONFIGS / "zero_shot.yaml", ["selection.keep_ratio=0.25", "sgp.beta=0.5"])
    obj = to_object(cfg)
    assert isinstance(obj, PhotonConfig)
    assert obj.selection.mode == "zero_shot" and obj.selection.keep_ratio == 0.25 and obj.sgp.beta == 0.5
    with pytest.raises(PhotonError, match="selection.nope"):
        load_config(None, ["selection.nope=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("selection:\n  tau: warm\n")
    with pytest.raises(PhotonError, match="bad.yaml"):
        load_config(bad)
