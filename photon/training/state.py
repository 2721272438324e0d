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
MANIFEST_FILE = photon_checkpoint.MANIFEST_FILE
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
        photon_checkpoint.write_manifest(partial)
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


def latest_complete(output_dir: str | Path) -> tuple[Path, tuple[str, ...]]:
    """The checkpoint a run folder's `latest` names, or, when that one is missing or incomplete (deleted
    by hand, cut short), the newest complete one, with a note saying so. No complete one is an error."""
    root = checkpoints_dir(output_dir)
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else None
    if named and (root / named / STATE_FILE).is_file():
        return root / named, ()
    complete = sorted((p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")
                       and (p / STATE_FILE).is_file()), key=_step_of)
    why = f"{pointer} names {named}, which is {'incomplete' if (root / named).exists() else 'missing'}" if named else \
        f"{root} has no latest pointer"
    if not complete:
        raise PhotonError(f"{why}, and no other complete checkpoint (step-*/ with {STATE_FILE}) is there; start a new run")
    return complete[-1], (f"{why}; using the newest complete checkpoint, {complete[-1].name}",)


def restore(engine, folder: Path, world: World) -> dict[str, Any]:
    """Load optimiser, scheduler, module and RNG state; returns trainer_state.json.

    The manifest is checked first, on every rank, before any file is unpickled."""
    photon_checkpoint.verify_manifest(folder, purpose="resume from it")
    load_path, _ = engine.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False)
    if load_path is None:
        raise PhotonError(f"{folder}: DeepSpeed found no state under {folder / 'deepspeed'}")
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("world_size") == world.size:
        load_rng(folder / "rng", world.rank)
    return state
