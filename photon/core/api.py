"""photon.attach / detach / last_selection / load: wrap a loaded Qwen-VL model in place."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
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
    return spec_for_model_type(getattr(model.config, "model_type", None))


def spec_for_model_type(model_type: str | None) -> Any:
    """The first registered backbone whose adapter serves this transformers model_type."""
    for registered in plugins.backbones().values():
        if registered.obj.model_type == model_type:
            return registered.obj
    raise PhotonError(f"no registered backbone adapter serves model_type {model_type!r}; see `photon plugins`")


def _source_model_type(source: str) -> str | None:
    """model_type from the config.json of a local folder or, failing that, of a hub repository."""
    path = Path(source) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "config.json"))
        except Exception as exc:
            raise PhotonError(
                f"{source!r} is not a registered backbone, a checkpoint folder with a config.json, or a reachable hub "
                f"repository ({type(exc).__name__}); known backbones: {', '.join(sorted(plugins.backbones()))}"
            ) from exc
    try:
        return json.loads(path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise PhotonError(f"{path}: not valid JSON ({exc})") from exc


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
    predictor_state: dict | None = None,
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
        if predictor_state is not None:
            made.predictor.load_state_dict(predictor_state)
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


def load(source: str, *, backbone: str | None = None, mode: str | None = None, **options) -> Any:
    """Load a backbone by registered name or folder and attach Photon; returns photon.adapters.base.Loaded.

    A folder with released Photon weights attaches in trained mode at the checkpoint's layer.
    """
    name = backbone or (source if source in plugins.backbones() else None)
    if name is not None:
        spec = backbone_spec(name)
        loaded = spec.load(None if source == name else source, **options)
    else:  # a folder or hub id: the family its config.json names loads it, under that name
        loaded = spec_for_model_type(_source_model_type(source)).load(source, **options)
        loaded.backbone = str(source)
    weights = loaded.photon
    overrides = {"layer": weights["layer"]} if weights else {}
    attach(
        loaded.model,
        backbone=None if name is None else name,
        mode=mode or ("trained" if weights else "zero_shot"),
        predictor_state=weights["state"] if weights else None,
        **overrides,
    )
    return loaded
