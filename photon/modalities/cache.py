"""A disk cache of loaded media, so that epochs do not read and resample volumes again.

Entries are keyed by the source path, its modification time and size (for a folder: its
files'), the modality and the loader options; changing any of them misses the cache.
Each entry is KEY.npy (frames) plus KEY.json (the rest of the Media), both written to a
temporary name and renamed, the .json last, so a half-written entry is never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from photon.core.files import write_atomically
from photon.modalities.base import Media


def source_stamp(path: Path) -> list:
    """What must be unchanged for a cached entry to stay valid."""
    if path.is_dir():
        return sorted([p.name, p.stat().st_mtime_ns, p.stat().st_size] for p in path.iterdir() if p.is_file())
    stat = path.stat()
    return [stat.st_mtime_ns, stat.st_size]


def cache_key(path: Path, modality: str, options: dict[str, Any]) -> str:
    payload = json.dumps([str(path.resolve()), source_stamp(path), modality, options], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class MediaCache:
    def __init__(self, folder: str | Path, dtype: str = "float16"):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
        self.folder = Path(folder)
        self.dtype = dtype
        self.hits = 0
        self.misses = 0

    def load(self, path: Path, modality: str, options: dict[str, Any], loader: Callable[..., Media]) -> Media:
        """The cached Media for these inputs, or loader(path, **options), stored on the way."""
        key = cache_key(path, modality, options)
        frames_file, record_file = self.folder / f"{key}.npy", self.folder / f"{key}.json"
        if record_file.is_file() and frames_file.is_file():
            try:
                record = json.loads(record_file.read_text())
                frames = np.load(frames_file).astype(np.float32)
                self.hits += 1
                return Media(frames=frames, kind=record["kind"], source=record["source"], fps=record["fps"], meta=record["meta"])
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is rebuilt below
        self.misses += 1
        media = loader(path, **options)
        write_atomically(frames_file, lambda f: np.save(f, media.frames.astype(self.dtype)))
        record = {"kind": media.kind, "source": media.source, "fps": media.fps, "meta": media.meta}
        write_atomically(record_file, lambda f: json.dump(record, f, default=_jsonable), mode="w")
        return media


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the media cache")
