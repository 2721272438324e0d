"""Content digests of files, computed once: a checkpoint's manifest check and a resumed run's record
check hash the same large files (weights, volumes) again and again, so a file whose size and
modification time are unchanged keeps the digest it had (PHOTON_CACHE/sha256.json)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_file() -> Path:
    return Path(os.environ.get("PHOTON_CACHE", Path.home() / ".cache" / "photon")) / "sha256.json"


def sha256(path: str | Path) -> str:
    """The file's SHA-256, read in full."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Digests:
    """File digests with the on-disk cache: `with Digests() as d: d.file(path)`; the cache is
    written back on exit (a read-only home only costs hashing again next time)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_file()
        self.known: dict[str, list] = {}
        self.hashed = 0  # bytes read this time, for the curious

    def __enter__(self) -> "Digests":
        try:
            self.known = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            self.known = {}
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.known))
            os.replace(tmp, self.path)
        except OSError:
            pass

    def file(self, path: str | Path) -> str:
        real = str(Path(path).resolve())
        stat = os.stat(real)
        hit = self.known.get(real)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            return hit[2]
        value = sha256(real)
        self.hashed += stat.st_size
        self.known[real] = [stat.st_size, stat.st_mtime_ns, value]
        return value

    def content(self, path: str | Path) -> str:
        """A file's digest, or a folder's (a DICOM series): every file under it, by relative name."""
        path = Path(path)
        if path.is_dir():
            parts = [f"{p.relative_to(path).as_posix()}:{self.file(p)}" for p in sorted(path.rglob("*")) if p.is_file()]
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()
        if path.is_file():
            return self.file(path)
        return "missing"
