"""photon.attach / detach / last_selection: wrap a loaded Qwen-VL model in place (photon.load, which opens a
model first, is photon.opening.load)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from photon.core import plugins
from photon.core.config import PhotonConfig, SelectionConfig, SGPConfig, check_selection
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
    check_selection(overrides, "attach")
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
