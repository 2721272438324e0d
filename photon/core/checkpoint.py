"""The Photon checkpoint folder: a wrapped model anyone can load with photon.load(DIR).

    DIR/config.json, model*.safetensors   the backbone (stock key names), save_pretrained
    DIR/tokenizer files                    the tokenizer
    DIR/photon.yaml                        backbone, adapter, layer, mode, rule, every constant,
                                           the versions that wrote it
    DIR/photon.safetensors                 Photon's own modules (threshold predictor), when present

Written into a temporary sibling and renamed, so a folder is either complete or absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from photon.core.errors import PhotonError

FORMAT = 1
META_FILE = "photon.yaml"
WEIGHTS_FILE = "photon.safetensors"
_PRUNER_PREFIX = "photon_pruner."


def is_photon_folder(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def versions() -> dict[str, str]:
    import transformers

    from photon import __version__

    return {"photon": __version__, "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


def describe(model, backbone: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """photon.yaml's content for an attached (or plain) model."""
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
        meta["rule"] = runtime.pruner.rule() if hasattr(runtime.pruner, "rule") else meta["pruner"]
        meta["photon"] = {"selection": asdict(runtime.config), "sgp": asdict(runtime.sgp)}
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
) -> None:
    """Write the checkpoint files into an existing folder (callers make it atomic).

    state_dict: the full model state when the live parameters are partitioned (ZeRO-3).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    backbone_part = {k: v for k, v in state_dict.items() if not k.startswith(_PRUNER_PREFIX)}
    photon_part = {k[len(_PRUNER_PREFIX):]: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith(_PRUNER_PREFIX)}
    model.save_pretrained(folder, state_dict=backbone_part, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if photon_part:
        save_file(photon_part, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = describe(model, backbone, extra)
    (folder / META_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))


def save_folder(model, tokenizer, folder: str | Path, *, backbone: str, extra: dict[str, Any] | None = None) -> Path:
    """Write a complete Photon checkpoint folder atomically (an existing folder is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        write_folder(model, tokenizer, staging, backbone=backbone, extra=extra)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


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
