"""Opening a model: one path for every front end.

What a user names (a registered alias, a hub id, a model folder, the authors' release folder, a
Photon checkpoint, a training run or its `latest` pointer) is resolved once into a Source: its
kind, the folder to read, its config.json / photon.yaml, what resolving decided on the user's
behalf, and its files verified before any weight loads (the manifest's checksums, the shard index,
every safetensors header, the Photon head). open_source() opens every kind from that value.

The CLI (photon attach / infer), photon.load, the lmms-eval plugin and the trainer each turn their
own arguments into one OpenRequest and call open_model(); nothing here reads CLI arguments or calls
back into a front end. The core (photon/core) does not import this module.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from photon.adapters.base import BackboneSpec, Loaded
from photon.core import checkpoint, plugins
from photon.core.api import attach, backbone_spec, spec_for_model_type
from photon.core.config import PhotonConfig, SelectionConfig, SGPConfig, check_layer, check_selection
from photon.core.errors import PhotonError

KINDS = ("alias", "hub", "model_folder", "release_folder", "photon_checkpoint", "run_folder", "pointer")
# The released checkpoints' names (PHOTON_SPEC 6c): a folder holding either is the authors' release.
_RELEASE_KEY = re.compile(r"(^|\.)vision_patch_embed\.|\.atp\.predictor\.")
PREDICTOR_KEYS = ("predictor.mlp.0.weight", "predictor.mlp.0.bias", "predictor.mlp.2.weight", "predictor.mlp.2.bias")
# Overrides that ask for a selection, so a model without a predictor still prunes when given one.
_SELECTING = {"keep", "keep_ratio", "theta", "rule"}


@dataclass(frozen=True)
class Source:
    """A resolved, verified model source."""

    given: str  # what the user named
    kind: str  # one of KINDS
    spec: BackboneSpec  # the registered backbone whose adapter serves it
    folder: Path | None  # the folder to read; None for a backbone built in memory (the tiny ones)
    config: dict = field(default_factory=dict)  # config.json
    meta: dict | None = None  # photon.yaml (Photon checkpoints)
    alias: str | None = None  # the registered name, when one was given
    notes: tuple[str, ...] = ()  # what resolving decided for the user, to be said

    @property
    def num_layers(self) -> int | None:
        text = self.config.get("text_config") or self.config
        return text.get("num_hidden_layers") or self.spec.num_layers

    @property
    def head(self) -> str | None:
        """The Photon head's weights file this source must bring, if any."""
        if self.meta and self.meta.get("attached") and self.meta.get("pruner", "photon") == "photon":
            return checkpoint.WEIGHTS_FILE
        return None


@dataclass(frozen=True)
class OpenRequest:
    """Everything a front end asks of the opening, as plain values."""

    source: str
    backbone: str | None = None  # given beside a checkpoint: the checkpoint must wrap it
    mode: str | None = None  # None: trained when the source has a trained head, else zero_shot
    pruner: str = "photon"
    overrides: dict[str, Any] = field(default_factory=dict)  # SelectionConfig fields
    device: str | None = None
    dtype: Any = None  # "float32" ... or a torch.dtype; None / "auto": as stored
    attn_implementation: str | None = None
    allow_weight_mismatch: bool = False
    backbone_only: bool = False  # a Photon checkpoint's backbone without its trained head
    attach: bool = True  # False: the backbone alone, nothing attached (the trainer attaches itself)


@dataclass
class Opened:
    """A wrapped model and where it came from."""

    loaded: Loaded
    source: Path | None  # the local folder the weights were read from, when there is one
    load_s: float = 0.0
    resolved: Source | None = None


# -- resolving ------------------------------------------------------------------------------
def looks_like_hub_id(text: str) -> bool:
    """owner/name, as the Hugging Face hub names models (not a path that happens to be missing)."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.startswith(".")


def resolve_source(text: str, *, backbone: str | None = None, verify: bool = True, backbone_only: bool = False) -> Source:
    """What `text` names, its files checked (verify) before anything loads. backbone_only: the
    Photon head will not be read, so its absence or damage is not checked."""
    if not text:
        raise PhotonError("give a backbone (a registered name, `photon plugins`), a hub id or a model folder")
    known = plugins.backbones()
    path = Path(text).expanduser()
    if text in known and not path.exists():
        source = _alias(text, known[text].obj)
    elif path.exists():
        source = _local(text, path)
    elif text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise PhotonError(f"{text}: no such file or folder")
    elif looks_like_hub_id(text):
        from photon.adapters import hub_folder

        folder = hub_folder.resolve(text)
        source = _folder_source(text, folder, kind="hub")
    else:
        raise PhotonError(f"unknown backbone {text!r}: not a registered name ({', '.join(sorted(known))}), a folder or a hub id")
    if backbone is not None:
        check_backbone_matches(source, backbone)
        source = replace(source, alias=source.alias or backbone)
    if verify:
        verify_source(source, head=not backbone_only)
    return source


def _alias(name: str, spec: BackboneSpec) -> Source:
    if spec.source is None:  # built in memory from a seeded config
        return Source(name, "alias", spec, None, alias=name)
    from photon.adapters import hub_folder

    folder = hub_folder.resolve(spec.source, alias=name)
    return replace(_folder_source(name, folder, kind="alias"), alias=name, spec=spec)


def _local(text: str, path: Path) -> Source:
    from photon.training import state

    if path.is_file():
        if path.name != "latest":
            raise PhotonError(f"{text}: a file, not a model folder (or a training run's checkpoints/latest pointer)")
        folder, notes = state.latest_complete(path.parent.parent)
        return replace(_folder_source(text, folder), kind="pointer", notes=notes)
    run_root = path if (path / "checkpoints").is_dir() else path.parent if path.name == "checkpoints" else None
    if run_root is not None and not (path / checkpoint.META_FILE).is_file():
        folder, notes = state.latest_complete(run_root)
        return replace(_folder_source(text, folder), kind="run_folder", notes=notes)
    return _folder_source(text, path)


def _folder_source(text: str, folder: Path, kind: str | None = None) -> Source:
    from photon.adapters import hub_folder

    if checkpoint.is_photon_folder(folder):
        meta = checkpoint.read_meta(folder)
        config = hub_folder.read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        return Source(text, kind or "photon_checkpoint", spec_for_model_type(meta["model_type"]), folder, config, meta)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PhotonError(f"{folder}: no config.json or photon.yaml; expected a Qwen-VL model folder, a Photon checkpoint "
                          "or a training run")
    config = hub_folder.read_json(config_path)
    spec = spec_for_model_type(config.get("model_type"))
    released = any(_RELEASE_KEY.search(key) for key in _weight_keys(folder))
    return Source(text, kind or ("release_folder" if released else "model_folder"), spec, folder, config)


def _weight_keys(folder: Path) -> list[str]:
    from photon.adapters import hub_folder

    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        return list(hub_folder.read_json(index[0]).get("weight_map", {}))
    from safetensors import safe_open

    keys = []
    for shard in checkpoint.weight_shards(folder):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                keys.extend(handle.keys())
        except Exception:  # reported by verify_source, naming the file
            continue
    return keys


def check_backbone_matches(source: Source, backbone: str) -> None:
    """A checkpoint given with --backbone must wrap that backbone."""
    spec = backbone_spec(backbone)
    wrapped = (source.meta or {}).get("backbone")
    model_type = (source.meta or {}).get("model_type") or source.config.get("model_type")
    if source.kind == "alias" and source.alias == backbone:
        return
    if model_type != spec.model_type or (wrapped is not None and wrapped != backbone):
        raise PhotonError(
            f"checkpoint {source.folder or source.given} wraps {wrapped or 'a model'} ({model_type}), not the backbone "
            f"{backbone} ({spec.model_type}); drop --backbone to use the checkpoint's own, or pass the matching one"
        )


# -- verifying ------------------------------------------------------------------------------
def verify_source(source: Source, *, head: bool = True) -> None:
    """Every file the source's weights need is there and whole, before anything loads: the
    manifest's checksums (training checkpoints), the shards an index names, each safetensors
    header, and a Photon head where the checkpoint has one."""
    folder = source.folder
    if folder is None:
        return
    if (folder / checkpoint.MANIFEST_FILE).is_file():
        checkpoint.verify_manifest(folder, purpose="load it", skip=checkpoint.TRAINING_STATE)
    from photon.adapters import hub_folder

    hub_folder.check_shards(folder)
    for shard in sorted(folder.glob("*.safetensors")):
        checkpoint.check_safetensors(shard)
    if not head:
        return
    if source.head and not (folder / source.head).is_file():
        raise PhotonError(
            f"{folder}: no {source.head}, the trained Photon head (threshold predictor) its photon.yaml says it has; the "
            "checkpoint is incomplete. Pass --backbone-only (backbone_only=True) to open its backbone without the head"
        )
    if source.kind == "release_folder":
        keys = [k for k in _weight_keys(folder) if ".atp.predictor." in k]
        if keys:
            present = {"predictor." + k.split(".atp.predictor.", 1)[1] for k in keys}
            missing = [k for k in PREDICTOR_KEYS if k not in present]
            if missing:
                raise PhotonError(
                    f"{folder}: the released threshold predictor is incomplete (missing {', '.join(missing)} under "
                    "model.layers.{l}.atp.); pass --backbone-only to open the backbone without it"
                )


# -- checking a request before loading ---------------------------------------------------------
def check_request(request: OpenRequest, source: Source | None = None, where: str = "selection") -> None:
    """The request's selection settings, by name, type and range (the layer against the model's own
    decoder, read from its config), before any weight loads."""
    known = {f.name for f in fields(SelectionConfig)}
    unknown = sorted(set(request.overrides) - known)
    if unknown:
        raise PhotonError(f"unknown selection setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    check_selection(request.overrides, where)
    if request.mode not in (None, "trained", "zero_shot"):
        raise PhotonError(f"mode {request.mode!r}: expected trained or zero_shot")
    if request.pruner not in plugins.pruners():
        raise PhotonError(f"unknown pruner {request.pruner!r}; known: {', '.join(sorted(plugins.pruners()))}")
    if source is not None:
        check_layer(request.overrides.get("layer"), source.num_layers, source.given, where)


# -- opening --------------------------------------------------------------------------------
def open_source(source: Source, request: OpenRequest) -> Loaded:
    """The loaded (and, unless request.attach is False, wrapped) model the source describes."""
    options: dict[str, Any] = {}
    if request.attn_implementation:
        options["attn_implementation"] = request.attn_implementation
    if request.allow_weight_mismatch:
        options["allow_weight_mismatch"] = True
    if request.dtype is not None and not isinstance(request.dtype, str):
        options["dtype"] = request.dtype  # a torch.dtype: read the weights in it
    overrides = dict(request.overrides)
    if source.folder is None:
        loaded = source.spec.load(None, **options)
    else:
        label = {"backbone": source.alias} if source.alias else {"backbone": source.given} if source.kind == "hub" else {}
        loaded = source.spec.load_folder(str(source.folder), **label, **options)
    if not request.attach:
        return loaded
    meta = source.meta
    if meta is not None:
        loaded.backbone = meta.get("backbone", loaded.backbone)
        if not meta.get("attached"):
            return loaded
        checkpoint.check_compatible(meta, loaded.model, source.folder)
        saved = meta["photon"]["selection"]
        head = None if request.backbone_only else checkpoint.load_photon_weights(source.folder)
        mode = request.mode or ("zero_shot" if request.backbone_only else saved["mode"])
        overrides = {**{k: v for k, v in saved.items() if k != "mode"}, **overrides}
        config = PhotonConfig(selection=SelectionConfig(**saved), sgp=SGPConfig(**meta["photon"]["sgp"]))
        attach(loaded.model, mode=mode, pruner=meta.get("pruner", "photon"), config=config, pruner_state=head, **overrides)
    else:
        weights = None if request.backbone_only else loaded.photon
        overrides = {**({"layer": weights["layer"]} if weights else {}), **overrides}
        if weights is None and request.mode is None and is_photon_embedding(loaded.model) and not _SELECTING.intersection(overrides):
            # Photon-S1 (3D embedding, no threshold predictor): the authors evaluate it unpruned.
            overrides["keep"] = "all"
        attach(loaded.model, backbone=source.alias, mode=request.mode or ("trained" if weights else "zero_shot"),
               pruner_state=weights["state"] if weights else None, **overrides)
    if request.pruner != "photon":  # a baseline selects instead, in the same runtime
        attach(loaded.model, pruner=request.pruner, mode=request.mode or "zero_shot", **request.overrides)
    return loaded


def is_photon_embedding(model) -> bool:
    """The model takes volumes through Photon's grey 3D patch embedding (Photon-S1/S2, phase-1 output)."""
    return getattr(model.config.vision_config, "in_channels", 3) == 1


def open_model(request: OpenRequest) -> Opened:
    """Resolve, check and open what the request names; dtype and device applied."""
    import torch

    from photon.adapters import hub_folder

    hub_folder.check_attention(request.attn_implementation)
    if isinstance(request.dtype, str) and request.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise PhotonError(f"dtype {request.dtype!r}: expected auto, float32, bfloat16 or float16")
    device = resolve_device(request.device) if request.device is not None else None
    check_request(request)  # names and types, before resolving touches the disk or the hub
    started = time.perf_counter()
    source = resolve_source(request.source, backbone=request.backbone, backbone_only=request.backbone_only)
    check_request(request, source)  # the layer against this model's decoder
    loaded = open_source(source, request)
    if isinstance(request.dtype, str) and request.dtype != "auto":
        loaded.model.to(getattr(torch, request.dtype))
    if device is not None:
        loaded.model.to(device)
    return Opened(loaded, source.folder, time.perf_counter() - started, source)


def resolve_device(device: str | None):
    import torch

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


def load(source: str, *, backbone: str | None = None, mode: str | None = None, overrides: dict[str, Any] | None = None,
         pruner: str = "photon", backbone_only: bool = False, **options) -> Loaded:
    """photon.load: open a registered backbone, hub id, model folder, release folder, Photon checkpoint,
    training run or `latest` pointer, with Photon attached (see open_model). options: device, dtype,
    attn_implementation, allow_weight_mismatch."""
    unknown = set(options) - {"device", "dtype", "attn_implementation", "allow_weight_mismatch"}
    if unknown:
        raise PhotonError(f"photon.load: unknown option(s) {', '.join(sorted(unknown))}; known: device, dtype, "
                          "attn_implementation, allow_weight_mismatch")
    request = OpenRequest(str(source), backbone=backbone, mode=mode, pruner=pruner, overrides=dict(overrides or {}),
                          backbone_only=backbone_only, **options)
    opened = open_model(request)
    for note in opened.resolved.notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    return opened.loaded
