"""photon.attach / detach / last_selection / load: wrap a loaded Qwen-VL model in place."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from photon.core import plugins
from photon.core.config import PhotonConfig, SelectionConfig, SGPConfig
from photon.core.errors import PhotonError
from photon.core.runtime import PhotonRuntime

_SELECTION_KEYS = {f.name for f in dataclasses.fields(SelectionConfig)}


def backbone_spec(name: str):
    """The registered BackboneSpec called `name`, or a clear error listing the known ones."""
    known = plugins.backbones()
    if name not in known:
        raise PhotonError(f"unknown backbone {name!r}; known: {', '.join(sorted(known))}")
    return known[name].obj


def spec_for_model(model) -> Any:
    model_type = getattr(model.config, "model_type", None)
    for registered in plugins.backbones().values():
        if registered.obj.model_type == model_type:
            return registered.obj
    raise PhotonError(f"no registered backbone adapter serves model_type {model_type!r}; see `photon plugins`")


def _photon_config(config: Any) -> PhotonConfig:
    if config is None:
        return PhotonConfig()
    if isinstance(config, DictConfig):
        return OmegaConf.to_object(config)
    return config


def attach(
    model: nn.Module,
    *,
    backbone: str | None = None,
    mode: str = "trained",
    pruner: str = "photon",
    config: PhotonConfig | DictConfig | None = None,
    pruner_state: dict | None = None,
    **overrides,
) -> nn.Module:
    """Wrap a Qwen-VL model in place so visual tokens are selected and removed at one layer.

    overrides are SelectionConfig fields: layer, keep ("all"), keep_ratio, theta, rule,
    min_keep, cache ("evict_all" | "keep_early"), tau, ...
    """
    unknown = set(overrides) - _SELECTION_KEYS
    if unknown:
        raise PhotonError(f"unknown override(s) {sorted(unknown)}; known: {', '.join(sorted(_SELECTION_KEYS))}")
    if mode not in ("trained", "zero_shot"):
        raise PhotonError(f"mode must be 'trained' or 'zero_shot', got {mode!r}")
    if getattr(model, "_photon", None) is not None:
        detach(model)
    spec = backbone_spec(backbone) if backbone else spec_for_model(model)
    cfg = _photon_config(config)
    selection = dataclasses.replace(cfg.selection, mode=mode, **overrides)
    pruners = plugins.pruners()
    if pruner not in pruners:
        raise PhotonError(f"unknown pruner {pruner!r}; known: {', '.join(sorted(pruners))}")
    text_config = model.config.get_text_config()
    made = pruners[pruner].obj(selection, hidden_size=text_config.hidden_size, model=model)
    if isinstance(made, nn.Module):
        parameter = next(model.parameters())
        made.to(parameter.device)
        if pruner_state is not None:
            made.load_state_dict(pruner_state)
        elif mode == "trained" and pruner == "photon" and selection.theta is None and selection.keep_ratio is None:
            warnings.warn(
                "trained mode with an untrained threshold predictor keeps nearly every visual token; load a Photon "
                "checkpoint (photon.load) or use mode='zero_shot'",
                stacklevel=2,
            )
        model.photon_pruner = made
    runtime = PhotonRuntime(model, spec.make_adapter(model), made, selection, sgp=cfg.sgp or SGPConfig())
    runtime.install()
    model._photon = runtime
    return model


def detach(model: nn.Module) -> nn.Module:
    """Restore the stock forwards and drop Photon's modules."""
    runtime = getattr(model, "_photon", None)
    if runtime is None:
        return model
    runtime.remove()
    if "photon_pruner" in model._modules:
        del model._modules["photon_pruner"]
    del model._photon
    return model


def runtime_of(model: nn.Module) -> PhotonRuntime:
    runtime = getattr(model, "_photon", None)
    if runtime is None:
        raise PhotonError("this model is not attached; call photon.attach(model) first")
    return runtime


def last_selection(model: nn.Module) -> list[dict]:
    """One record per sample of the last prefill: keep mask over its visual tokens in sequence
    order, theta, rho, n_visual, n_kept, rule, layer, fallback and the visual grids."""
    return runtime_of(model).records


def spec_for_model_type(model_type: str):
    """The registered backbone that loads folders of this config.json model_type."""
    for registered in plugins.backbones().values():
        if registered.obj.model_type == model_type and registered.obj.load_folder is not None:
            return registered.obj
    raise PhotonError(f"no registered backbone loads model_type {model_type!r}; see `photon plugins`")


def load(
    source: str,
    *,
    backbone: str | None = None,
    mode: str | None = None,
    overrides: dict[str, Any] | None = None,
    **options,
) -> Any:
    """Load a registered backbone, a Hugging Face folder, or a Photon checkpoint folder, and attach Photon.

    Returns photon.adapters.base.Loaded. A Photon checkpoint folder (photon.yaml) rebuilds the
    wrapped model it describes; a folder with released Photon weights attaches in trained mode
    at the checkpoint's layer; anything else attaches in zero-shot mode unless `mode` says so.
    overrides are SelectionConfig fields applied over what the source says (as in attach).
    """
    from pathlib import Path

    from photon.core import checkpoint

    overrides = dict(overrides or {})
    if Path(source).exists():  # a training run, or its checkpoints/latest pointer: the newest checkpoint
        from photon.training.state import resolve_checkpoint

        source = str(resolve_checkpoint(source))

    if checkpoint.is_photon_folder(source):
        meta = checkpoint.read_meta(source)
        spec = spec_for_model_type(meta["model_type"])
        loaded = spec.load_folder(source, **options)
        loaded.backbone = meta.get("backbone", loaded.backbone)
        if not meta.get("attached"):
            return loaded
        checkpoint.check_compatible(meta, loaded.model, Path(source))
        saved = meta["photon"]["selection"]
        overrides = {**{k: v for k, v in saved.items() if k != "mode"}, **overrides}
        config = PhotonConfig(selection=SelectionConfig(**saved), sgp=SGPConfig(**meta["photon"]["sgp"]))
        attach(
            loaded.model,
            mode=mode or saved["mode"],
            pruner=meta.get("pruner", "photon"),
            config=config,
            pruner_state=checkpoint.load_photon_weights(source),
            **overrides,
        )
        return loaded
    name = backbone or (source if source in plugins.backbones() else None)
    if name is not None:
        spec = backbone_spec(name)
        loaded = spec.load(None if source == name else source, **options)
    else:
        from photon.adapters.hub_folder import read_json, resolve

        folder = resolve(source)  # a local folder, or a hub id through the Hugging Face cache
        raw = folder / "config.json"
        if not raw.is_file():
            raise PhotonError(f"{source}: no config.json; expected a Qwen-VL checkpoint folder or a Photon checkpoint")
        label = {} if Path(source).is_dir() else {"backbone": source}
        loaded = spec_for_model_type(read_json(raw).get("model_type")).load_folder(str(folder), **label, **options)
    weights = loaded.photon
    overrides = {**({"layer": weights["layer"]} if weights else {}), **overrides}
    if weights is None and mode is None and is_photon_embedding(loaded.model) and not _SELECTING.intersection(overrides):
        # Photon-S1 (3D embedding, no threshold predictor): the authors evaluate it unpruned.
        overrides["keep"] = "all"
    attach(
        loaded.model,
        backbone=name,
        mode=mode or ("trained" if weights else "zero_shot"),
        pruner_state=weights["state"] if weights else None,
        **overrides,
    )
    return loaded


# Overrides that ask for a selection, so a model without a predictor still prunes when given one.
_SELECTING = {"keep", "keep_ratio", "theta", "rule"}


def is_photon_embedding(model) -> bool:
    """The model takes volumes through Photon's grey 3D patch embedding (Photon-S1/S2, phase-1 output)."""
    return getattr(model.config.vision_config, "in_channels", 3) == 1
