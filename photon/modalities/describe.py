"""What `photon inspect` reports: a media file's facts and, per registered backbone, the
model-input shape and visual token count; or one checking pass over a records file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from photon.core import plugins
from photon.modalities.base import Media, choose_loader
from photon.modalities.config import DataConfig, options_for_backbone

RECORD_SUFFIXES = (".json", ".jsonl")


def facts_from_media(media: Media) -> dict[str, Any]:
    """For loaders without describe(): what the loaded frames show."""
    return {"kind": media.kind, "shape": list(media.frames.shape),
            "intensity_range": [float(media.frames.min()), float(media.frames.max())]}


def describe_media(path: str | Path, kind: str | None = None, data: DataConfig | None = None) -> dict[str, Any]:
    path = Path(path)
    name, loader = choose_loader(path, kind)
    describe, model_shape = getattr(loader, "describe", None), getattr(loader, "model_shape", None)
    facts = describe(path) if describe else facts_from_media(loader(path))
    volume = getattr(loader, "kind", facts.get("kind")) == "volume"
    rows = []
    for backbone, registered in sorted(plugins.backbones().items()):
        spec = registered.obj
        options = options_for_backbone(spec, data).get(name, {})
        shape = tuple(model_shape(facts, **options)) if model_shape else tuple(loader(path, **options).frames.shape)
        frames, _, height, width = shape
        rows.append({"backbone": backbone, "input": "3d" if volume and spec.volume_patch else "frames",
                     "shape": list(shape), "visual_tokens": spec.visual_tokens(frames, height, width, volume=volume)})
    return {"file": str(path), "modality": name, **facts, "backbones": rows}


def describe_records(path: str | Path, *, strict: bool = False, cache_dir: str | None = None,
                     data: DataConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Load every record's media once (a dataset pass): counts, with bad records reported and skipped."""
    from photon.modalities.dataset import PhotonDataset

    dataset = PhotonDataset(path, cache_dir=cache_dir, strict=strict, data=data)
    benchmarks, kinds = Counter(), Counter()
    for sample in dataset.samples(progress=progress):
        benchmarks[sample.benchmark or "-"] += 1
        kinds.update(media.kind for media in sample.media)
    return {"file": str(path), "usable": len(dataset) - len(dataset.failed), "skipped": len(dataset.problems),
            "benchmarks": dict(benchmarks), "media": dict(kinds)}
