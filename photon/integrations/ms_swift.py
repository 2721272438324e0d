"""Photon inside ms-swift (the framework the method's authors trained with): `swift infer`,
`swift sft` and `swift deploy` run a Photon-wrapped Qwen-VL through ms-swift's own plugin
mechanism, `--external_plugins FILE`, which imports FILE before the model loads.

    swift infer --model Qwen/Qwen2.5-VL-3B-Instruct --model_type photon_qwen2_5_vl \\
        --external_plugins $(python -m photon.integrations.ms_swift) \\
        --infer_backend transformers --val_dataset records.jsonl
    PHOTON_ATTACH="mode=zero_shot,keep_ratio=0.25" swift sft --model_type photon_qwen2_5_vl ...

Importing this file registers two ms-swift model types, `photon_qwen2_5_vl` and `photon_qwen3_vl`:
ms-swift's own model types for the stock families (their loader, processor, chat template and
architecture keys), with Photon attached to the model once it is loaded. They claim no hub ids or
architectures, so a model is Photon-wrapped only when --model_type names it.

Environment (read when the model loads):
- PHOTON_ATTACH: comma-separated selection settings, as `photon attach` takes them
  (mode, pruner, keep_ratio, theta, layer, rule, cache, ...); default `mode=zero_shot`, or
  `mode=trained` when the model folder holds a Photon threshold predictor (the released layout).
- PHOTON_RECORDS: a JSONL file that receives one line per prefill (kept / visual tokens, theta,
  rule, layer per sample), so a run shows what Photon kept.

Needs ms-swift and what its Qwen-VL types need (qwen_vl_utils, hence torchvision); see
docs/serving.md for the versions that share an environment with Photon.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from photon.core import plugins
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl

MODEL_TYPES = {"photon_qwen2_5_vl": "qwen2_5_vl", "photon_qwen3_vl": "qwen3_vl"}
_PRUNER_KEY = "pruner"


def attach_options(text: str | None) -> dict:
    """PHOTON_ATTACH ("mode=zero_shot,keep_ratio=0.25") -> photon.attach keywords, checked by name
    and type before any model loads."""
    from omegaconf import OmegaConf

    from photon.core.config import SelectionConfig, check_selection, load_config

    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    bad = [item for item in items if "=" not in item]
    if bad:
        raise PhotonError(f"PHOTON_ATTACH: {bad[0]!r} is not KEY=VALUE; e.g. PHOTON_ATTACH='mode=zero_shot,keep_ratio=0.25'")
    pruner = [item.split("=", 1)[1] for item in items if item.split("=", 1)[0] == _PRUNER_KEY]
    selection = [item for item in items if item.split("=", 1)[0] != _PRUNER_KEY]
    merged = load_config(None, selection, schema=SelectionConfig)  # unknown keys and bad types fail here, by name
    given = {k: v for k, v in OmegaConf.to_container(OmegaConf.from_dotlist(selection)).items()}
    options = {k: merged[k] for k in given}
    check_selection(options, "PHOTON_ATTACH")
    if pruner:
        options["pruner"] = pruner[-1]
    return options


def attach_loaded(model, model_dir: str | os.PathLike | None, environ=os.environ):
    """Attach Photon to a model ms-swift loaded from model_dir, as PHOTON_ATTACH says."""
    import photon
    from photon.adapters.qwen import photon_weights

    options = attach_options(environ.get("PHOTON_ATTACH"))
    pruner = options.pop("pruner", "photon")
    release = photon_weights(Path(model_dir)) if model_dir and pruner == "photon" else None
    mode = options.pop("mode", "trained" if release else "zero_shot")
    if release is not None and mode == "trained":
        options.setdefault("layer", release["layer"])
    photon.attach(model, mode=mode, pruner=pruner, pruner_state=release["state"] if release and mode == "trained" else None,
                  **options)
    records = environ.get("PHOTON_RECORDS")
    if records:
        plugins.load_plugins().register(SelectionLog(model, Path(records)))
    return model


class SelectionLog:
    """A `selection_made` hook (photon.core.hookspecs) appending each prefill's selection summary
    of one model to a JSONL file."""

    def __init__(self, model, path: Path):
        self.model, self.path = model, path
        path.parent.mkdir(parents=True, exist_ok=True)

    @hookimpl
    def selection_made(self, model, records):
        if model is not self.model:
            return
        rows = [{k: r[k] for k in ("n_visual", "n_kept", "theta", "rule", "pruner", "layer")} for r in records]
        with self.path.open("a") as handle:
            handle.write(json.dumps({"samples": rows}) + "\n")


def register() -> list[str]:
    """Register the Photon model types with ms-swift (idempotent); returns their names."""
    from swift.model import MODEL_MAPPING, ModelGroup, register_model

    for photon_type, stock_type in MODEL_TYPES.items():
        if stock_type not in MODEL_MAPPING:
            raise PhotonError(f"ms-swift has no model type {stock_type!r} to wrap; this ms-swift is not supported (docs/serving.md)")
        stock = MODEL_MAPPING[stock_type]
        loader = type(f"Photon{stock.loader.__name__}", (stock.loader,), {"get_model": _photon_get_model(stock.loader)})
        templates = stock.candidate_templates[:1]
        arch = getattr(stock.model_arch, "arch_name", stock.model_arch)
        meta = dataclasses.replace(stock, model_type=photon_type, model_groups=[ModelGroup([])], loader=loader,
                                   template=templates[0] if templates else None, architectures=[], model_arch=arch)
        register_model(meta, exist_ok=True)
    return list(MODEL_TYPES)


def _photon_get_model(stock_loader):
    def get_model(self, model_dir, *args, **kwargs):
        model = stock_loader.get_model(self, model_dir, *args, **kwargs)
        return attach_loaded(model, model_dir)

    return get_model


if "swift" in sys.modules or __name__.startswith("_swift_external_"):  # imported by --external_plugins
    register()

if __name__ == "__main__":  # `python -m photon.integrations.ms_swift` prints the file to pass to --external_plugins
    print(Path(__file__).resolve())
