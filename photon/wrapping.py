"""Opening a wrapped model for the commands, describing the wrapping, and saving it as a folder.

`photon attach`, `photon infer` and their Python equivalents go through open_model: a
registered backbone, a Hugging Face folder or a Photon checkpoint folder, Photon attached with
the caller's mode and selection overrides (photon.load does the work).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from photon.adapters.base import Loaded, visual_token_count
from photon.core import checkpoint, plugins
from photon.core.api import backbone_spec, runtime_of, spec_for_model
from photon.core.config import PhotonConfig
from photon.core.errors import PhotonError
from photon.core.pruners import pruner_rule
from photon.modalities.config import options_for_backbone

# A still image and a short clip at this side show what the token count of non-volume input is.
EXAMPLE_SIDE = 448
EXAMPLE_FRAMES = 16
RULES = {
    "zero_shot:mean": "instance-adaptive: keep the visual tokens whose saliency is above this sample's mean",
    "trained": "the trained threshold predictor's theta per sample",
    "keep=all": "keep every visual token (unpruned; the selection is still computed and recorded)",
}


@dataclass
class Opened:
    """A wrapped model and where it came from."""

    loaded: Loaded
    source: Path | None  # the local folder the weights were read from, when there is one
    load_s: float = 0.0


def check_backbone_matches(folder: Path, backbone: str) -> None:
    """A checkpoint given with --backbone must wrap that backbone."""
    spec = backbone_spec(backbone)
    if checkpoint.is_photon_folder(folder):
        meta = checkpoint.read_meta(folder)
        wrapped, model_type = meta.get("backbone"), meta.get("model_type")
    else:
        config = folder / "config.json"
        if not config.is_file():
            raise PhotonError(f"checkpoint {folder}: no photon.yaml or config.json; expected a Photon checkpoint folder")
        wrapped, model_type = None, json.loads(config.read_text()).get("model_type")
    if model_type != spec.model_type or (wrapped is not None and wrapped != backbone):
        raise PhotonError(
            f"checkpoint {folder} wraps {wrapped or 'a model'} ({model_type}), not the backbone {backbone} "
            f"({spec.model_type}); drop --backbone to use the checkpoint's own, or pass the matching one"
        )


def local_source(source: str) -> Path | None:
    """The folder holding the weights of `source`: itself when it is a folder, the Hugging Face
    cache's snapshot for a registered hub backbone already downloaded, else None (built in memory)."""
    if Path(source).is_dir():
        return Path(source)
    spec = plugins.backbones().get(source)
    hub_id = spec.obj.source if spec is not None else (source if looks_like_hub_id(source) else None)
    if hub_id is None:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        return None


def decoder_layers(source: str) -> int | None:
    """The decoder's layer count from a registered backbone, or a folder's (or cached hub id's)
    config.json, without loading weights; None when it cannot be told cheaply."""
    registered = plugins.backbones().get(source)
    if registered is not None and registered.obj.num_layers is not None:
        return registered.obj.num_layers
    folder = local_source(source)
    config = folder / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    raw = json.loads(config.read_text())
    text = raw.get("text_config") or raw
    return text.get("num_hidden_layers")


def looks_like_hub_id(source: str) -> bool:
    """owner/name, as the Hugging Face hub names models (not a path that happens to be missing)."""
    import re

    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not source.startswith(".")


def open_model(
    backbone: str | None = None,
    checkpoint_dir: str | None = None,
    *,
    mode: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    pruner: str = "photon",
    allow_weight_mismatch: bool = False,
) -> Opened:
    """Load and wrap: `checkpoint_dir` (a Photon checkpoint or model folder) or `backbone` (a
    registered name or a model folder). Given both, the checkpoint must wrap that backbone."""
    import time

    import photon

    if not backbone and not checkpoint_dir:
        raise PhotonError("give --backbone NAME (see `photon plugins`) or --checkpoint DIR")
    if checkpoint_dir:
        from photon.training.state import resolve_checkpoint

        folder = resolve_checkpoint(checkpoint_dir)  # a run folder or the `latest` pointer: its newest checkpoint
        if not folder.is_dir():
            raise PhotonError(f"checkpoint {checkpoint_dir}: no such folder")
        checkpoint_dir = str(folder)
        if backbone:
            check_backbone_matches(folder, backbone)
        source = checkpoint_dir
    else:
        source = backbone
        if source not in plugins.backbones() and not Path(source).is_dir() and not looks_like_hub_id(source):
            backbone_spec(source)  # the error lists the known names
    from photon.adapters.hub_folder import check_attention

    check_attention(attn_implementation)
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if allow_weight_mismatch:
        options["allow_weight_mismatch"] = True
    started = time.perf_counter()
    loaded = photon.load(source, mode=mode, overrides=overrides, **options)
    model = loaded.model
    if pruner != "photon":  # a baseline selects instead, in the same runtime
        photon.attach(model, pruner=pruner, mode=mode or "zero_shot", **(overrides or {}))
    if dtype not in (None, "auto"):
        model.to(getattr(torch, dtype))
    model.to(resolve_device(device))
    return Opened(loaded, local_source(source), time.perf_counter() - started)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise PhotonError(f"--device {device}: not a device name; expected auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PhotonError(f"--device {device}: this machine has no CUDA device; use cpu (or auto)")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise PhotonError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved


def spec_of(loaded: Loaded):
    """The BackboneSpec a loaded model was made from: its registered name, else its model type."""
    registered = plugins.backbones().get(loaded.backbone)
    return registered.obj if registered is not None else spec_for_model(loaded.model)


def media_options(loaded: Loaded, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Loader options per modality: Photon's defaults for this model's visual geometry
    (options_for_backbone), then what the model folder's processor configs say (image and video
    pixel limits, frame sampling), then `overrides` ({modality: {option: value}}), which win."""
    options = options_for_backbone(spec_of(loaded))
    for layer in (loaded.media_defaults, overrides or {}):
        for name, given in layer.items():
            options[name] = {**options.get(name, {}), **dict(given)}
    return options


def random_weights_note(loaded: Loaded) -> str | None:
    """What to tell users of the offline test backbones, whose weights are seeded noise."""
    registered = plugins.backbones().get(loaded.backbone)
    if registered is None or registered.obj.source is not None:
        return None
    return f"note: {loaded.backbone} has random seeded weights (an offline test backbone): its answers are meaningless"


def rule_of(model) -> str:
    return pruner_rule(runtime_of(model).pruner)


def explain_rule(rule: str) -> str:
    if rule in RULES:
        return RULES[rule]
    if rule.startswith("keep_ratio="):
        return f"keep the top {float(rule.split('=')[1]):.0%} of visual tokens by saliency"
    if rule.startswith("theta="):
        return f"keep the visual tokens whose normalised saliency is above {rule.split('=')[1]}"
    return rule


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarize(loaded: Loaded, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the wrapping is: adapter, selection layer, mode, rule, Photon's added modules and
    the visual tokens of the default inputs (options: the loader options, as media_options gives)."""
    model = loaded.model
    runtime = runtime_of(model)
    vision = model.config.vision_config
    geometry = (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)
    rule = rule_of(model)
    added = {}
    pruner = getattr(model, "photon_pruner", None)
    if pruner is not None:
        added["threshold predictor"] = _parameters(pruner)
    if vision.in_channels == 1:
        added["3D patch embedding"] = _parameters(runtime.adapter.patch_embedding(model))
    tokens = {}
    ct_size = (options or media_options(loaded))["ct"].get("size")
    if ct_size is not None:
        depth, height, width = ct_size
        tokens[f"CT volume {depth}x{height}x{width}"] = visual_token_count(depth, height, width, *geometry)
    side, frames = EXAMPLE_SIDE, EXAMPLE_FRAMES
    tokens[f"image {side}x{side}"] = visual_token_count(1, side, side, *geometry)
    tokens[f"video {frames} frames {side}x{side}"] = visual_token_count(frames, side, side, *geometry)
    parameter = next(model.parameters())
    return {
        "backbone": loaded.backbone,
        "device": str(parameter.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "adapter": runtime.adapter.family,
        "decoder_layers": runtime.num_layers,
        "selection_layer": runtime.layer,
        "mode": runtime.config.mode,
        "rule": rule,
        "rule_meaning": explain_rule(rule),
        "added_parameters": added,
        "backbone_parameters": _parameters(model) - added.get("threshold predictor", 0),
        "visual_tokens": tokens,
    }


def save_wrapped(opened: Opened, folder: str | Path, *, link: bool = False) -> Path:
    """Write the wrapped model as a Photon checkpoint folder (photon.load and --checkpoint read it)."""
    loaded = opened.loaded
    target = Path(folder)
    if target.exists() and not checkpoint.is_photon_folder(target) and (not target.is_dir() or any(target.iterdir())):
        raise PhotonError(f"--save {target}: exists and is not a Photon checkpoint folder; it would be replaced, choose another")
    if link and opened.source is None:
        raise PhotonError(
            f"--link needs weights in a local folder, and {loaded.backbone} has none (it is built in memory "
            "or not downloaded); save without --link to write the weights"
        )
    return checkpoint.save_folder(
        loaded.model,
        loaded.encoder.tokenizer,
        folder,
        backbone=loaded.backbone,
        config=PhotonConfig(),
        source=opened.source,
        link=link,
    )
