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


def opening_command(path: Path) -> list[str]:
    import shlex

    return shlex.split(path.read_text().splitlines()[0].removeprefix("#").strip())


# Arguments of an opening command that name the user's own files; the test gives its own instead.
USER_FILES = ("data.train=", "model.checkpoint=")


@pytest.mark.slow
@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(CONFIGS)) for p in YAMLS])
def test_each_yaml_runs_the_command_it_opens_with(path, tmp_path, monkeypatch, capsys):
    """The first line of every YAML is a command; run it as written (from the repository root, as
    the paths in it are), swapping only the user's data and output folder, the backbone for the
    offline tiny one, the media size and the step count."""
    import json

    import yaml
    from omegaconf import OmegaConf

    from photon.cli import main

    argv = opening_command(path)
    assert argv[:1] == ["photon"], argv
    monkeypatch.chdir(CONFIGS.parent)
    if argv[1] == "config":
        assert main(argv[1:]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        written = OmegaConf.to_container(OmegaConf.load(path))

        def leaves(tree, prefix=()):
            for key, value in tree.items():
                if isinstance(value, dict):
                    yield from leaves(value, prefix + (key,))
                else:
                    yield prefix + (key,), value

        for keys, value in leaves(written):  # every value the file sets is in the merged config
            node = printed
            for key in keys:
                node = node[key]
            assert node == value, keys
        return
    assert argv[1] == "train", argv
    pytest.importorskip("deepspeed", reason="training needs the train extra (DeepSpeed)")
    from tests.test_training import write_records

    records = write_records(tmp_path, n=2)
    out = tmp_path / "out"
    kept = [a for a in argv[1:] if not a.startswith(USER_FILES)]
    assert main([*kept, "model.backbone=qwen2.5-vl-tiny", f"data.train={records}", "data.media={ct: {size: [28, 56, 56]}}",
                 "run.max_steps=3", f"run.output_dir={out}", "run.progress=false"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    shipped = yaml.safe_load(path.read_text()) if "train" in path.parts else yaml.safe_load((CONFIGS / "train" / "phase2.yaml").read_text())
    assert len(rows) == 3 * shipped["run"]["grad_accum"]
    final = out / "checkpoints" / "step-00000003"
    assert (final / "manifest.json").is_file()
    if shipped["run"]["phase"] == 2:
        # The schedule, scaled to 3 steps, reaches the stages the file configures; gradient
        # checkpointing (phase2.yaml sets it) ran.
        assert {"full", "soft"} <= {r["stage"] for r in rows}
        import photon

        assert photon.load(str(final)).model._photon.config.mode == "trained"
    if "deepspeed" in path.parts:
        used = yaml.safe_load((out / "config.yaml").read_text())["deepspeed"]["preset"]
        assert used == str(path.relative_to(CONFIGS.parent))
