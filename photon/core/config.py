"""Structured configs (OmegaConf over dataclasses) holding every Photon constant.

Defaults are PHOTON_SPEC.md's; every field is documented in docs/config.md (a test checks it).
YAML files under configs/ are merged over these schemas, then dotlist overrides
(`selection.tau=0.1`) over the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from photon.core.errors import PhotonError


@dataclass
class SelectionConfig:
    """Where and how visual tokens are chosen (spec sections 2-4)."""

    layer: int | None = None  # None: floor(num_layers / 4) - 1
    mode: str = "trained"  # trained: the threshold predictor; zero_shot: a training-free rule
    rule: str = "mean"  # zero-shot rule: mean (rho above the sample's mean) | theta | keep_ratio
    theta: float | None = None  # fixed threshold on rho (rule theta, or overriding the predictor)
    keep_ratio: float | None = None  # top-k by rho at this fraction of the visual tokens
    keep: str | None = None  # "all": selection runs and is recorded but nothing is dropped
    min_keep: int = 1  # floor on kept visual tokens per sample
    tau: float = 0.2  # temperature of q = sigmoid((rho - theta) / tau)
    theta_scale: float = 0.9  # theta = theta_scale * sigmoid(MLP(features))
    predictor_bias_init: float = -5.0  # last MLP bias at init: theta ~ 0.006, keep almost all
    predictor_hidden_div: int = 8  # MLP width = LLM hidden size / this
    rho_eps: float = 1e-8  # rho = (u - min) / (max - min + rho_eps)
    flat_saliency_eps: float = 1e-12  # max u - min u below this counts as no signal: keep all
    cache: str = "evict_all"  # evict_all: every layer's cache holds kept tokens; keep_early: layers <= l keep all


@dataclass
class SGPConfig:
    """Surrogate gradient of the hard gather (spec section 5 and 6b)."""

    beta: float = 0.8
    sigma_floor: float = 3e-3
    z_clip: float = 1.5
    scale_min: float = 0.5
    scale_max: float = 2.0
    scale_eps: float = 1e-6
    slope_floor: float = 5e-3  # floor on q (1 - q)
    statistics: str = "visual"  # visual (release): stats over every visual token; kept (paper)
    zero_mean: bool = True  # release: subtract the mean direction over the statistics tokens


@dataclass
class ScheduleConfig:
    """Stage by training step and the per-batch draws (spec section 6)."""

    soft_start: int = 4000
    hard_start: int = 8000
    flip_start: int = 9000
    flip_prob: float = 0.05
    robust_prob: float = 0.15
    # Order: permute_patches, permute_patches_features, zero_patches, zero_features, noise, zeros.
    augment_probs: list[float] = field(default_factory=lambda: [0.16, 0.16, 0.16, 0.16, 0.16, 0.20])
    zero_patches_keep: float = 0.2
    zero_features_keep: float = 0.1
    # The paper gives absolute boundaries; with scale_with_run the boundaries become
    # fractions of reference_steps (this project's choice, the paper states no run length)
    # applied to the run's own length.
    scale_with_run: bool = False
    reference_steps: int = 10000
    seed: int = 0


@dataclass
class LossConfig:
    """Objective terms (spec section 6)."""

    band_low: float = 0.3
    band_high: float = 0.8
    flip_eps: float = 1e-6
    objective: str = "release"  # release: (CE | robust | flip) + band; paper: (CE + band | robust) + flip


@dataclass
class PhotonConfig:
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    sgp: SGPConfig = field(default_factory=SGPConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def check_selection(selection: Any, where: str = "selection") -> None:
    """Values of a SelectionConfig (or a dict of its fields) a run could not use, named with what is
    allowed: checked before any model loads."""
    get = selection.get if isinstance(selection, dict) else lambda k, d=None: getattr(selection, k, d)

    def bad(key: str, allowed: str) -> PhotonError:
        return PhotonError(f"{where}.{key}={get(key)!r}: expected {allowed}")

    ratio, theta = get("keep_ratio"), get("theta")
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):  # NaN fails this too
        raise bad("keep_ratio", "a fraction in (0, 1]")
    if theta is not None and not (isinstance(theta, (int, float)) and 0 <= theta <= 1):
        raise bad("theta", "a threshold on normalised saliency in [0, 1]")
    if ratio is not None and theta is not None:
        raise PhotonError(f"{where}: keep_ratio={ratio} and theta={theta} both choose the kept tokens; give one")
    choices = {"mode": ("trained", "zero_shot"), "rule": ("mean", "theta", "keep_ratio"), "cache": ("evict_all", "keep_early"),
               "keep": (None, "all")}
    for key, allowed in choices.items():
        if get(key, allowed[0]) not in allowed:
            raise bad(key, " or ".join(str(a) for a in allowed))
    if get("min_keep", 1) is not None and get("min_keep", 1) < 1:
        raise bad("min_keep", "at least 1")
    tau = get("tau", 0.2)
    if tau is not None and not tau > 0:
        raise bad("tau", "a temperature above 0")
    check_layer(get("layer"), None, where=where)


def check_layer(layer: Any, num_layers: int | None, name: str = "the model", where: str = "selection") -> None:
    """The one selection-layer rule everywhere (CLI, Python API, lmms-eval, ms-swift): a whole number
    in -1..L-2, -1 being before the first decoder layer; the last layer's output is not pruned (it
    would save nothing). num_layers None: only what can be told without the model."""
    if layer is None:
        return
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise PhotonError(f"{where}.layer={layer!r}: expected a whole decoder-layer index (0-based), not a {type(layer).__name__}")
    upper = None if num_layers is None else num_layers - 2
    if layer < -1 or (upper is not None and layer > upper):
        of = f"{name}'s {num_layers} decoder layers" if num_layers is not None else "the decoder layers"
        choose = f"-1..{upper}" if upper is not None else "-1 or above"
        raise PhotonError(f"{where}.layer={layer}: outside {of}; choose {choose} (-1: before the first layer; "
                          "the last layer's output is not pruned)")


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    schema: Any = PhotonConfig,
) -> DictConfig:
    """Merge a YAML file and dotlist overrides over a structured schema.

    Unknown keys and wrongly typed values raise PhotonError naming the file or override.
    schema=None merges free-form (DeepSpeed's own config files).
    """
    merged = OmegaConf.structured(schema) if schema is not None else OmegaConf.create({})
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise PhotonError(f"config file {path} does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
    except PhotonError:
        raise
    except Exception as exc:  # omegaconf's own errors name the key; add the file
        raise PhotonError(f"config file {path}: {exc}") from exc
    if overrides:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        except Exception as exc:
            raise PhotonError(f"config override {' '.join(overrides)}: {exc}") from exc
    if schema is not None and "selection" in merged:
        check_selection(OmegaConf.to_container(merged.selection), "selection")
    if schema is not None and "photon" in merged and "selection" in merged.photon:
        check_selection(OmegaConf.to_container(merged.photon.selection), "photon.selection")
    return merged


def to_object(cfg: DictConfig) -> Any:
    """The dataclass instance behind a merged config."""
    return OmegaConf.to_object(cfg)


# Which schema a YAML under configs/ is merged over, by its folder. Values are import paths
# so this module stays free of the training and evaluation packages.
SCHEMAS_BY_FOLDER = {
    "configs": "photon.core.config:PhotonConfig",
    "train": "photon.training.config:TrainConfig",
    "deepspeed": None,  # DeepSpeed's own JSON schema, merged by the trainer as is
}


def schema_for(path: str | Path) -> Any:
    """The structured schema for a YAML under configs/, chosen by its folder."""
    import importlib

    path = Path(path)
    if not path.is_file():
        raise PhotonError(f"config file {path} does not exist")
    folder = path.resolve().parent.name
    target = SCHEMAS_BY_FOLDER[folder] if folder in SCHEMAS_BY_FOLDER else _schema_by_content(path)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _schema_by_content(path: Path) -> str | None:
    """A user's own YAML outside configs/: a training config when it has a training section
    (run, model, data, optim, deepspeed), DeepSpeed's own when it sets zero_optimization, else
    Photon's method config."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:
        raise PhotonError(f"config file {path}: not readable YAML ({exc})") from exc
    keys = set(raw) if isinstance(raw, dict) else set()
    if keys & {"run", "model", "data", "optim", "deepspeed"}:
        return SCHEMAS_BY_FOLDER["train"]
    if keys & {"zero_optimization", "train_micro_batch_size_per_gpu", "bf16", "fp16"}:
        return None
    return SCHEMAS_BY_FOLDER["configs"]
