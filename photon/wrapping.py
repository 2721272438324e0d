"""The commands' side of a wrapped model: opening it from their arguments (one OpenRequest for
photon.opening), describing the wrapping, and saving it as a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from photon import opening
from photon.adapters.base import Loaded, visual_token_count
from photon.core import checkpoint, plugins
from photon.core.api import runtime_of, spec_for_model
from photon.core.config import PhotonConfig
from photon.core.errors import PhotonError
from photon.core.pruners import pruner_rule
from photon.modalities.config import options_for_backbone
from photon.opening import OpenRequest, Opened

# A still image and a short clip at this side show what the token count of non-volume input is.
EXAMPLE_SIDE = 448
EXAMPLE_FRAMES = 16
RULES = {
    "zero_shot:mean": "instance-adaptive: keep the visual tokens whose saliency is above this sample's mean",
    "trained": "the trained threshold predictor's theta per sample",
    "keep=all": "keep every visual token (unpruned; the selection is still computed and recorded)",
}


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
    backbone_only: bool = False,
) -> Opened:
    """The commands' and plugins' way in: `checkpoint_dir` (a Photon checkpoint, training run or
    model folder) or `backbone` (a registered name, hub id or model folder) as one OpenRequest for
    photon.opening.open_model. Given both, the checkpoint must wrap that backbone."""
    if not backbone and not checkpoint_dir:
        raise PhotonError("give --backbone NAME (see `photon plugins`) or --checkpoint DIR")
    request = OpenRequest(
        checkpoint_dir or backbone, backbone=backbone if checkpoint_dir else None, mode=mode, pruner=pruner,
        overrides=dict(overrides or {}), device=device or "auto", dtype=dtype, attn_implementation=attn_implementation,
        allow_weight_mismatch=allow_weight_mismatch, backbone_only=backbone_only,
    )
    return opening.open_model(request)


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
    if registered is None or registered.obj.source is not None or registered.obj.extras.get("weights"):
        return None  # a hub release, or built in memory with shipped weights (the demo backbone)
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
