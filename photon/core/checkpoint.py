"""The Photon checkpoint folder: a wrapped model anyone can load with photon.load(DIR).

    DIR/config.json, model*.safetensors   the backbone (stock key names), save_pretrained; the 3D
                                           patch embedding, when installed, is part of it. With
                                           link=True, the shards are symlinks to the source folder's
    DIR/tokenizer files                    the tokenizer (and the source folder's processor files)
    DIR/photon.yaml                        backbone, adapter, layer, mode, rule, every constant,
                                           the versions that wrote it
    DIR/photon.safetensors                 Photon's own modules (threshold predictor), when present

Written into a temporary sibling and renamed, so a folder is either complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from photon.core import compat
from photon.core.digests import Digests
from photon.core.errors import PhotonError
from photon.core.pruners import pruner_rule

FORMAT = 1
META_FILE = "photon.yaml"
WEIGHTS_FILE = "photon.safetensors"
MANIFEST_FILE = "manifest.json"  # a training checkpoint's SHA-256 of every file (photon.training.state)
_PRUNER_PREFIX = "photon_pruner."
# Image/video processor settings (normalisation, patch geometry) that the tokenizer does not save.
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
)


def is_photon_folder(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def versions() -> dict[str, str]:
    import transformers

    from photon import __version__

    return {"photon": __version__, "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


def describe(model, backbone: str, extra: dict[str, Any] | None = None, config=None) -> dict[str, Any]:
    """photon.yaml's content for an attached (or plain) model.

    config (a PhotonConfig): its schedule and loss constants are recorded too; the selection and
    SGP constants always come from the attached runtime.
    """
    runtime = getattr(model, "_photon", None)
    meta: dict[str, Any] = {"format": FORMAT, "versions": versions(), "backbone": backbone}
    meta["model_type"] = model.config.model_type
    vision = model.config.vision_config
    meta["visual"] = {
        "in_channels": vision.in_channels,
        "temporal_patch_size": vision.temporal_patch_size,
        "patch_size": vision.patch_size,
    }
    if runtime is not None:
        meta["attached"] = True
        meta["adapter"] = runtime.adapter.family
        meta["pruner"] = getattr(runtime.pruner, "name", type(runtime.pruner).__name__)
        meta["layer"] = runtime.layer
        meta["mode"] = runtime.config.mode
        meta["rule"] = pruner_rule(runtime.pruner)
        meta["photon"] = {"selection": asdict(runtime.config), "sgp": asdict(runtime.sgp)}
        if config is not None:
            meta["photon"].update(schedule=asdict(config.schedule), loss=asdict(config.loss))
        meta["hidden_size"] = model.config.get_text_config().hidden_size
    else:
        meta["attached"] = False
    meta.update(extra or {})
    return meta


def write_folder(
    model,
    tokenizer,
    folder: str | Path,
    *,
    backbone: str,
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    config=None,
    source: str | Path | None = None,
    link: bool = False,
) -> None:
    """Write the checkpoint files into an existing folder (callers make it atomic).

    state_dict: the full model state when the live parameters are partitioned (ZeRO-3).
    config: a PhotonConfig whose schedule and loss constants photon.yaml records too.
    source: the local folder the backbone was loaded from; its processor files are copied, and
    with link=True its weight shards are symlinked instead of written (the backbone must hold
    exactly the weights it was loaded with).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    backbone_part = {k: v for k, v in state_dict.items() if not k.startswith(_PRUNER_PREFIX)}
    photon_part = {k[len(_PRUNER_PREFIX):]: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith(_PRUNER_PREFIX)}
    if link:
        if source is None:
            raise PhotonError("linking the weights needs the local folder the backbone was loaded from")
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
        link_shards(Path(source), folder)
    else:
        model.save_pretrained(folder, state_dict=backbone_part, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if source is not None:
        copy_processor_files(Path(source), folder)
    if photon_part:
        save_file(photon_part, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = describe(model, backbone, extra, config)
    (folder / META_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))


def weight_shards(source: Path) -> list[Path]:
    """The backbone's safetensors shards in a model folder (Photon's own file excluded)."""
    return sorted(p for p in source.glob("*.safetensors") if p.name != WEIGHTS_FILE)


def link_shards(source: Path, folder: Path) -> list[Path]:
    """Symlink the source's weight shards into folder (absolute targets, so the folder can move)
    and copy the shard index; returns the links."""
    shards = weight_shards(source)
    if not shards:
        raise PhotonError(f"{source}: no *.safetensors weight files to link; save without --link to write them")
    links = []
    for shard in shards:
        link = folder / shard.name
        link.symlink_to(shard.resolve())
        links.append(link)
    for index in source.glob("*.safetensors.index.json"):
        shutil.copyfile(index, folder / index.name)
    return links


def copy_processor_files(source: Path, folder: Path) -> None:
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and not (folder / name).exists():
            shutil.copyfile(source / name, folder / name)


def save_folder(
    model,
    tokenizer,
    folder: str | Path,
    *,
    backbone: str,
    extra: dict[str, Any] | None = None,
    config=None,
    source: str | Path | None = None,
    link: bool = False,
) -> Path:
    """Write a complete Photon checkpoint folder atomically (an existing folder is replaced).

    config, source and link: as in write_folder.
    """
    folder = Path(folder)
    if source is not None and Path(source).resolve() == folder.resolve():
        raise PhotonError(f"{folder} is the folder the model was loaded from; save to another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        write_folder(model, tokenizer, staging, backbone=backbone, extra=extra, config=config, source=source, link=link)
        share_like_umask(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def share_like_umask(folder: Path) -> None:
    """mkdtemp (and some writers) create private files; give the folder the permissions a plain
    mkdir and open would, so it can be handed to colleagues."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META_FILE
    try:
        meta = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise PhotonError(f"{path}: not a readable Photon checkpoint description ({exc})") from exc
    if meta.get("format") != FORMAT:
        written = (meta.get("versions") or {}).get("photon", "an unknown version")
        raise PhotonError(
            f"{folder} was written by Photon {written} in checkpoint format {meta.get('format')}; this Photon reads "
            f"format {FORMAT}. Re-save it with a matching Photon, or install that version to load it."
        )
    written = (meta.get("versions") or {}).get("transformers")
    running = versions()["transformers"]
    if written and compat.in_range(str(written), compat.TESTED_TRANSFORMERS) is False:
        # Said before loading: a model class that changed between versions fails with shape or key errors.
        warnings.warn(
            f"{folder} was written with transformers {written}, this is {running}; Photon's checkpoints are tested across "
            f"transformers{compat.TESTED_TRANSFORMERS}. If loading fails, load it where transformers {written} is "
            "installed and re-save.",
            stacklevel=2,
        )
    return meta


def check_compatible(meta: dict[str, Any], model, folder: Path) -> None:
    """Clear messages for what would otherwise surface as shape errors."""
    hidden = model.config.get_text_config().hidden_size
    if meta.get("hidden_size") not in (None, hidden):
        raise PhotonError(
            f"{folder}: Photon modules were trained for a {meta['hidden_size']}-wide LLM, but the backbone is "
            f"{hidden} wide ({meta.get('backbone')}); use the backbone the checkpoint was made with"
        )
    if meta.get("model_type") not in (None, model.config.model_type):
        raise PhotonError(
            f"{folder}: checkpoint is for {meta['model_type']}, the backbone is {model.config.model_type}"
        )


def load_photon_weights(folder: str | Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    return load_file(str(path)) if path.is_file() else None


# -- integrity ----------------------------------------------------------------------------
def check_safetensors(path: Path) -> None:
    """A weight file whose header does not parse, or whose data does not cover what the header
    declares (a truncated copy), is a one-line error naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError, OSError: the file is unusable either way
        detail = str(exc).removeprefix("Error while deserializing header: ")
        raise PhotonError(f"{path}: not a readable safetensors file ({detail}); it is truncated or corrupt, "
                          "copy or download it again") from exc


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path) -> None:
    """manifest.json: the SHA-256 of every file the checkpoint holds (symlinked shards by content)."""
    with Digests() as digests:  # the files just written: their digests are cached for the first load
        files = {str(p.relative_to(folder)): digests.file(p) for p in _files_under(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"sha256": files}, indent=1, sort_keys=True))


# What loading a checkpoint reads: its manifest is checked for these only (not the optimiser state).
TRAINING_STATE = ("deepspeed/", "rng/")


def verify_manifest(folder: Path, *, purpose: str = "load it", skip: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose files differ from what its manifest recorded (changed, missing or
    added). Loading reads safetensors only, but a changed weight would answer without a word; resuming
    unpickles DeepSpeed's optimiser state, so a swapped file there would run code. Digests of unchanged
    files (same size and mtime) are cached under PHOTON_CACHE, so large weights are hashed once.
    skip: path prefixes this use does not read (loading skips TRAINING_STATE)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise PhotonError(
            f"{folder}: no {MANIFEST_FILE}; it was not written by this Photon's trainer (or is incomplete), so "
            f"nothing vouches for its files. To {purpose} anyway, start from its weights alone: model.checkpoint={folder} "
            "(that reads only safetensors)"
        )
    try:
        recorded = json.loads(path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PhotonError(f"{path}: not a readable checkpoint manifest ({exc})") from exc
    recorded = {name: digest for name, digest in recorded.items() if not name.startswith(skip)}
    present = {name for name in (str(p.relative_to(folder)) for p in _files_under(folder)) if not name.startswith(skip)}
    missing = sorted(set(recorded) - present)
    extra = sorted(present - set(recorded))
    with Digests() as digests:
        changed = sorted(name for name in set(recorded) & present if digests.file(folder / name) != recorded[name])
    problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for label, names in (("changed", changed), ("missing", missing), ("not in the manifest", extra)) if names]
    if problems:
        raise PhotonError(f"{folder}: files do not match {MANIFEST_FILE} ({'; '.join(problems)}); refusing to {purpose}")
