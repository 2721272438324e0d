"""Training checkpoints: written atomically, the last N kept, resumed exactly.

    OUT/checkpoints/step-00000500/       a Photon checkpoint folder (photon attach --checkpoint loads it)
        trainer_state.json               micro step (drives the schedule), optimiser step, config
        rng/rank-0.json, rank-0.safetensors   every RNG of every rank
        deepspeed/state/                 DeepSpeed's optimiser and LR-scheduler state (ZeRO shards)
        manifest.json                    SHA-256 of every file above, checked before a resume reads any
    OUT/checkpoints/latest               the name of the newest complete checkpoint

Each rank writes into step-N.partial/; rank 0 renames it once all have finished, so a run
killed mid-save leaves the previous checkpoint as `latest`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from photon.core import checkpoint as photon_checkpoint
from photon.core.errors import PhotonError
from photon.training.distributed import World, barrier

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
# What makes an output folder hold a run: a second run there without --resume or --overwrite is refused.
RUN_FILES = ("log.jsonl", "config.yaml", "checkpoints")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(folder / f"rank-{rank}.safetensors"))
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (folder / f"rank-{rank}.json").write_text(json.dumps(state))


def load_rng(folder: Path, rank: int) -> bool:
    from safetensors.torch import load_file

    tensors_path, json_path = folder / f"rank-{rank}.safetensors", folder / f"rank-{rank}.json"
    if not (tensors_path.is_file() and json_path.is_file()):
        return False
    tensors = load_file(str(tensors_path))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    state = json.loads(json_path.read_text())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return True


def save(
    *,
    engine,
    model,
    tokenizer,
    world: World,
    output_dir: str | Path,
    opt_step: int,
    trainer_state: dict[str, Any],
    backbone: str,
    keep_last: int,
    zero_stage: int,
) -> Path:
    """Write checkpoint step-{opt_step}; every rank must call this."""
    root = checkpoints_dir(output_dir)
    name = f"step-{opt_step:08d}"
    final, partial = root / name, root / f"{name}.partial"
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
    barrier()
    # Collective: each rank writes its optimiser shard; the module copy is excluded when possible.
    engine.save_checkpoint(str(partial / "deepspeed"), tag="state", exclude_frozen_parameters=True)
    save_rng(partial / "rng", world.rank)
    full_state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    barrier()
    if world.main:
        photon_checkpoint.write_folder(model, tokenizer, partial, backbone=backbone, state_dict=full_state)
        (partial / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        write_manifest(partial)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_text_atomic(root / "latest", name)
        prune_old(root, keep_last, latest_name=name)
    barrier()
    return final


def prune_old(root: Path, keep_last: int, *, latest_name: str) -> None:
    """Keep the `keep_last` newest checkpoints by step; the one `latest` names is never removed,
    whatever its step (a folder may hold older runs' higher steps)."""
    others = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial") and p.name != latest_name),
        key=_step_of,
    )
    for old in others[: max(0, len(others) - max(keep_last - 1, 0))]:
        shutil.rmtree(old, ignore_errors=True)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path) -> None:
    """manifest.json: the SHA-256 of every file the checkpoint holds (symlinked shards by content)."""
    files = {str(p.relative_to(folder)): _sha256(p) for p in _files_under(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps({"sha256": files}, indent=1, sort_keys=True))


def verify_manifest(folder: Path) -> None:
    """Refuse a checkpoint whose files differ from what its manifest recorded: DeepSpeed unpickles
    the optimiser state (torch.load with weights_only=False), so a swapped file would run code."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise PhotonError(
            f"{folder}: no {MANIFEST_FILE}; it was not written by this Photon's trainer (or is incomplete), so "
            "resuming would unpickle files nobody vouched for. Start a new run from it with model.checkpoint="
            f"{folder} instead (that reads only safetensors)"
        )
    try:
        recorded = json.loads(path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PhotonError(f"{path}: not a readable checkpoint manifest ({exc})") from exc
    present = {str(p.relative_to(folder)) for p in _files_under(folder)}
    missing = sorted(set(recorded) - present)
    extra = sorted(present - set(recorded))
    changed = sorted(name for name in set(recorded) & present if _sha256(folder / name) != recorded[name])
    problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for label, names in (("changed", changed), ("missing", missing), ("not in the manifest", extra)) if names]
    if problems:
        raise PhotonError(f"{folder}: files do not match {MANIFEST_FILE} ({'; '.join(problems)}); refusing to resume from it")


def holds_run(output_dir: str | Path) -> list[str]:
    """The run files already in an output folder (empty when a new run may start there)."""
    out = Path(output_dir)
    return [name for name in RUN_FILES if (out / name).exists()]


def clear_run(output_dir: str | Path) -> None:
    """Remove an earlier run's log, config and checkpoints (photon train --overwrite)."""
    out = Path(output_dir)
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def truncate_log(path: Path, micro_step: int) -> None:
    """Drop log rows of forward passes at or after `micro_step` (run after the checkpoint, then
    lost): a resumed run logs them again, so each step appears once."""
    if not path.is_file():
        return
    rows = path.read_text().splitlines()
    kept = [line for line in rows if line.strip() and json.loads(line).get("step", -1) < micro_step]
    _write_text_atomic(path, "".join(line + "\n" for line in kept))


def resolve_checkpoint(path: str | Path) -> Path:
    """What a user may pass for a training run's checkpoint: the run folder (its newest complete
    checkpoint), OUT/checkpoints (likewise), the OUT/checkpoints/latest pointer file, or a
    checkpoint folder itself. Anything else is returned as it is."""
    path = Path(path)
    if path.is_file() and path.name == "latest":  # OUT/checkpoints/latest
        return latest(path.parent.parent)
    if path.is_dir() and (path / "checkpoints" / "latest").is_file():  # OUT
        return latest(path)
    if path.is_dir() and path.name == "checkpoints" and (path / "latest").is_file():  # OUT/checkpoints
        return latest(path.parent)
    return path


def latest(output_dir: str | Path) -> Path | None:
    root = checkpoints_dir(output_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / STATE_FILE).is_file():
        raise PhotonError(f"{pointer} names {folder.name}, which is incomplete; remove the pointer to restart")
    return folder


def restore(engine, folder: Path, world: World) -> dict[str, Any]:
    """Load optimiser, scheduler, module and RNG state; returns trainer_state.json.

    The manifest is checked first, on every rank, before any file is unpickled."""
    verify_manifest(folder)
    load_path, _ = engine.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False)
    if load_path is None:
        raise PhotonError(f"{folder}: DeepSpeed found no state under {folder / 'deepspeed'}")
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("world_size") == world.size:
        load_rng(folder / "rng", world.rank)
    return state
