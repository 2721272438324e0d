"""Peak memory of one configuration's generate() and training step.

CUDA: torch's max_memory_allocated, reset before each phase, in the benchmark's process.
CPU: the process's peak RSS. A process's peak cannot be lowered by freeing memory, so each
configuration runs in a fresh subprocess (`python -m photon.bench.memory SPEC.json`): it
rebuilds the same model, loads the same inputs, runs a warm-up, then measures each phase
from a reset peak (Linux /proc/self/clear_refs) after returning freed heap to the system.
Both report `base` (weights, inputs and runtime before the phase) and `peak`.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from photon.core.errors import PhotonError


# -- CUDA, in process -------------------------------------------------------------------
def cuda_peaks(model, prompt: dict, train: dict, new_tokens: int) -> dict:
    device = next(model.parameters()).device
    out = {"method": "cuda_max_memory_allocated"}
    for phase, run in phases(model, prompt, train, new_tokens):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        out[phase] = {"base": base, "peak": torch.cuda.max_memory_allocated(device)}
    return out


# -- CPU, one subprocess per configuration -------------------------------------------------
def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _release_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed memory may stay resident, peaks only grow
        pass


def _reset_peak() -> int:
    """Lower the recorded peak RSS to the current RSS; returns that RSS in bytes."""
    _release_free_heap()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def reset_peak(device: torch.device) -> int | None:
    """Start a fresh peak: CUDA's max allocated, or this process's peak RSS (where Linux allows).
    Returns what is allocated (or resident) now, the base the coming peak stands on."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return _reset_peak() if can_measure_rss() else None


def peak_bytes(device: torch.device) -> int | None:
    """The peak since reset_peak: CUDA max allocated, or peak RSS; None where it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024 if can_measure_rss() else None


def phases(model, prompt: dict, train: dict, new_tokens: int):
    """(name, run) of each measured phase: generate, a training step, and the same step with
    activation (gradient) checkpointing, which trades recomputation for activation memory."""
    from photon.bench.clock import generate, train_step
    from photon.core import compat

    def checkpointed():
        compat.enable_checkpointing(model, use_reentrant=False)
        try:
            train_step(model, train)
        finally:
            compat.disable_checkpointing(model)

    return (("generate", lambda: generate(model, prompt, new_tokens)), ("train", lambda: train_step(model, train)),
            ("train_checkpointed", checkpointed))


def rss_peaks(model, prompt: dict, train: dict, new_tokens: int) -> dict:
    """Peak RSS per phase of this process (call it in a fresh one)."""
    from photon.bench.clock import generate, train_step

    generate(model, prompt, min(new_tokens, 2))  # warm-up: one-time allocations are not the workload's
    train_step(model, train)
    out = {"method": "rss_fresh_process"}
    for phase, run in phases(model, prompt, train, new_tokens):
        base = _reset_peak()
        run()
        out[phase] = {"base": base, "peak": _status_kib("VmHWM") * 1024}
    return out


def can_measure_rss() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK) and Path("/proc/self/status").is_file()


def probe_in_subprocess(spec: dict, prompt: dict, train: dict, workdir: str) -> dict:
    """Run rss_peaks for one configuration in a fresh Python process."""
    inputs = Path(workdir) / "inputs.pt"
    if not inputs.exists():
        torch.save({"prompt": prompt, "train": train}, inputs)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, delete=False) as handle:
        json.dump({**spec, "inputs": str(inputs)}, handle)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "photon.bench.memory", handle.name], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise PhotonError(f"memory probe for {spec.get('pruner') or 'stock'} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _probe_main(path: str) -> None:
    from photon.bench.harness import Configuration, attach
    from photon.bench.models import ModelSpec, build_model

    spec = json.loads(Path(path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, _ = build_model(ModelSpec(**spec["model"]), with_encoder=False)
    tensors = torch.load(spec["inputs"])
    attach(model, Configuration(spec["pruner"], spec["keep_ratio"]), spec.get("layer"))
    print(json.dumps(rss_peaks(model, tensors["prompt"], tensors["train"], spec["new_tokens"])))


if __name__ == "__main__":
    _probe_main(sys.argv[1])
