"""Writing files so that a reader never sees half of one, with the permissions a plain write gives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def umask_mode(path: str | Path) -> None:
    """Give a file made by mkstemp or safetensors (0600) the mode open() would have given it: 0666
    less the process umask, so reports, records and weights stay readable by whoever reads the folder."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_atomically(target: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(handle)` to a temporary file beside `target`, then rename it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as stream:
            write(stream)
        umask_mode(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    write_atomically(path, lambda stream: stream.write(text), mode="w")
