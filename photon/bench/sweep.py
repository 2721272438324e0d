"""`photon bench --visual-tokens A,B,C`: how each configuration's cost grows with the visual tokens.

One model, built once; for each size (ascending) the whole of run_bench: every configuration,
interleaved rounds, per-round ratios with their spread. Before a size runs, its cost is
projected from the last measured size with the growth measured so far (the token ratio,
linear, until two sizes are known: a lower bound): a size projected past the time limit or the memory
that is free is skipped with the reason, as is a size that runs out of memory. Then each
phase's growth exponent (least-squares slope of log time against log tokens, and the slope
from the smallest to the largest size), the targets of docs/benchmarks.md, and a log-log plot.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np
import torch

from photon.bench.harness import BenchOptions, machine_info, run_bench
from photon.bench.models import build_model
from photon.core.errors import PhotonError

# The phases whose growth is fitted: (JSON key, label), times then peak memory.
TIME_PHASES = (("vision_s", "vision"), ("prefill_s", "prefill"), ("decode_s_per_token", "decode/token"),
               ("generate_s", "generate"), ("train_step_s", "train step"))
MEMORY_PHASES = (("generate", "generate peak"), ("train", "train peak"))
# Each time's ideal line in the plot: stock's time times this ideal ratio.
PLOT_IDEAL = {"prefill_s": "prefill_by_part", "decode_s_per_token": "decode_bytes", "generate_s": "generate_by_phase",
              "train_step_s": "train_step_s", "vision_s": "vision_s"}
PREFILL_TARGET = 1.10  # Photon's prefill within this factor of its ideal ...
PREFILL_TARGET_FROM = 4096  # ... at every size from this many visual tokens on
MEMORY_TARGET_AT = 16384  # where the generate peak memory ratio is reported beside its ideal
MEMORY_SAFETY = 0.9  # of the memory free at the start that a projected peak may use


def free_memory(device: torch.device) -> int | None:
    """Bytes a size may still use: free GPU memory, or the kernel's MemAvailable on Linux."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x) (None with fewer than two usable points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def end_slope(xs: list[float], ys: list[float]) -> float | None:
    """The log-log slope from the smallest size to the largest."""
    if len(xs) < 2 or not ys[0] or not ys[-1] or ys[0] <= 0 or ys[-1] <= 0:
        return None
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


def _stock_peak(entry: dict) -> int | None:
    memory = entry["configurations"][0].get("memory")
    return None if memory is None else max(memory["generate"]["peak"], memory["train"]["peak"])


def skip_reason(size: int, measured: list[dict], time_limit_s: float | None, free_bytes: int | None) -> str | None:
    """Why `size` should not run, projected from the sizes measured so far (None: run it)."""
    if not measured:
        return None
    last = measured[-1]
    ratio = size / last["visual_tokens"]
    xs = [m["visual_tokens"] for m in measured]
    # With one size measured, growth is taken as linear: a lower bound (every phase grows at least
    # with the tokens), so a skip is never premature; with more, the measured log-log slope.
    time_growth = slope(xs, [m["wall_s"] for m in measured]) if len(measured) > 1 else None
    time_growth = 1.0 if time_growth is None else max(time_growth, 1.0)
    if time_limit_s is not None:
        projected = last["wall_s"] * ratio**time_growth
        if projected > time_limit_s:
            return (f"projected {projected:.0f} s (from {last['wall_s']:.0f} s at {last['visual_tokens']} tokens, time growing "
                    f"as tokens^{time_growth:.2f}) exceeds the {time_limit_s:g} s limit per size (--size-time-limit)")
    peaks = [_stock_peak(m) for m in measured]
    if free_bytes is not None and peaks[-1] is not None:
        memory_growth = slope(xs, peaks) if len(measured) > 1 and None not in peaks else None
        memory_growth = 1.0 if memory_growth is None else max(memory_growth, 1.0)
        projected = peaks[-1] * ratio**memory_growth
        if projected > MEMORY_SAFETY * free_bytes:
            return (f"projected stock peak {projected / 2**30:.1f} GiB (tokens^{memory_growth:.2f} from "
                    f"{peaks[-1] / 2**30:.1f} GiB at {last['visual_tokens']}) exceeds {MEMORY_SAFETY:.0%} of the "
                    f"{free_bytes / 2**30:.1f} GiB free at the start")
    return None


def growth_exponents(entries: list[dict], statistic: str) -> dict:
    """{label: {phase: {"fit", "ends"}}} over the measured sizes."""
    measured = [e for e in entries if "configurations" in e]
    if not measured:
        return {}
    xs = [e["visual_tokens"] for e in measured]
    growth = {}
    for index, config in enumerate(measured[0]["configurations"]):
        label = config["label"]
        rows = [e["configurations"][index] for e in measured]
        phases = {}
        for key, _ in TIME_PHASES:
            ys = [r["times"][key][statistic] for r in rows]
            phases[key] = {"fit": slope(xs, ys), "ends": end_slope(xs, ys)}
        if all("memory" in r for r in rows):
            for key, _ in MEMORY_PHASES:
                ys = [r["memory"][key]["peak"] for r in rows]
                phases[f"{key}_peak_memory"] = {"fit": slope(xs, ys), "ends": end_slope(xs, ys)}
        growth[label] = phases
    return growth


def sweep_targets(entries: list[dict], growth: dict) -> list[dict]:
    """The sweep's targets for each Photon configuration (docs/benchmarks.md): prefill near its ideal
    from 4,096 tokens on; prefill growing more slowly than stock's; the generate peak memory ratio
    at 16,384 tokens beside its ideal."""
    measured = [e for e in entries if "configurations" in e]
    if not measured:
        return []
    targets = []
    photon_labels = [c["label"] for c in measured[0]["configurations"] if c["pruner"] == "photon"]
    for label in photon_labels:
        rows = [(e["visual_tokens"], next(c for c in e["configurations"] if c["label"] == label)) for e in measured]
        checked = [(n, c["ratios"]["prefill_s"], c["ideal_ratios"]["prefill_by_part"]) for n, c in rows if n >= PREFILL_TARGET_FROM]
        factors = [(n, ratio / ideal) for n, ratio, ideal in checked if ratio is not None and ideal]
        targets.append({
            "configuration": label,
            "target": f"prefill within {PREFILL_TARGET:.2f}x of its ideal at every size from {PREFILL_TARGET_FROM} tokens",
            "holds": None if not factors else all(f <= PREFILL_TARGET for _, f in factors),
            "detail": ", ".join(f"{n}: {ratio:.2f} vs {ideal:.2f} ({ratio / ideal:.2f}x)" for n, ratio, ideal in checked
                                if ratio is not None and ideal) or f"no size from {PREFILL_TARGET_FROM} tokens was measured",
        })
        mine, stock = growth.get(label, {}).get("prefill_s", {}).get("ends"), growth.get("stock", {}).get("prefill_s", {}).get("ends")
        targets.append({
            "configuration": label,
            "target": "prefill time grows more slowly than stock's (log-log slope, smallest to largest size)",
            "holds": None if mine is None or stock is None else mine < stock,
            "detail": "fewer than two sizes" if mine is None or stock is None else f"slope {mine:.2f} vs stock {stock:.2f}",
        })
        at = next((c for n, c in rows if n == MEMORY_TARGET_AT), None)
        if at is None or "generate_peak_memory" not in at["ratios"]:
            detail = f"not measured at {MEMORY_TARGET_AT} tokens" if at is None else "memory not measured (--no-memory)"
            targets.append({"configuration": label, "target": f"generate peak memory at {MEMORY_TARGET_AT} tokens beside its ideal",
                            "holds": None, "detail": detail})
        else:
            ratio, ideal = at["ratios"]["generate_peak_memory"], at["ideal_ratios"]["generate_peak_memory"]
            targets.append({"configuration": label, "target": f"generate peak memory at {MEMORY_TARGET_AT} tokens beside its ideal",
                            "holds": None, "detail": f"{ratio:.2f} (ideal {ideal:.2f})"})
    return targets


def run_sweep(options: BenchOptions, sizes: tuple[int, ...], *, progress: Callable[[str, int, int], None] | None = None,
              time_limit_s: float | None = None, plot: str | None = None,
              on_size: Callable[[dict], None] | None = None) -> dict:
    """run_bench at each size; returns {"sweep": [...], "growth": ..., "targets": ...} (docs/benchmarks.md).
    on_size receives the same summary after every size, the sizes not yet reached marked so: a
    sweep of an hour that is stopped keeps what it measured."""
    sizes = tuple(sorted(set(sizes)))
    if len(sizes) < 2:
        raise PhotonError("a sweep needs at least two sizes (--visual-tokens A,B,...)")
    device = torch.device(options.model.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    machine = machine_info(device)
    free = free_memory(device)
    built = build_model(options.model)
    entries: list[dict] = []
    model_facts = None
    for position, size in enumerate(sizes):
        measured = [e for e in entries if "configurations" in e]
        reason = skip_reason(size, measured, time_limit_s, free)
        if reason is not None:
            entries.append({"visual_tokens": size, "skipped": reason})
            continue

        def step(message, done, total, size=size, position=position):
            if progress is not None:
                progress(f"{size} tokens ({position + 1}/{len(sizes)}): {message}", done, total)

        started = time.perf_counter()
        try:
            result = run_bench(dataclasses.replace(options, visual_tokens=size), progress=step, built=built)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            entries.append({"visual_tokens": size, "skipped": f"out of memory ({type(exc).__name__})"})
            continue
        model_facts = result["model"]
        entries.append({"visual_tokens": size, "wall_s": time.perf_counter() - started, "input": result["input"],
                        "configurations": result["configurations"]})
        if on_size is not None and position + 1 < len(sizes):
            pending = [{"visual_tokens": n, "skipped": "not reached (the sweep was still running)"} for n in sizes[position + 1:]]
            on_size(summarise(options, sizes, time_limit_s, machine, free, model_facts, entries + pending))
    out = summarise(options, sizes, time_limit_s, machine, free, model_facts, entries)
    if plot:
        from photon.bench.sweep_plot import write_plot

        out["plot"] = str(write_plot(out, plot))
    return out


def summarise(options: BenchOptions, sizes: tuple[int, ...], time_limit_s: float | None, machine: dict, free: int | None,
              model_facts: dict | None, entries: list[dict]) -> dict:
    """The sweep's JSON: its options, the machine, each size's entry, growth and targets."""
    growth = growth_exponents(entries, options.statistic)
    return {
        "command_options": {**dataclasses.asdict(options), "pruners": list(options.pruners), "keep": list(options.keep),
                            "visual_tokens": list(sizes), "size_time_limit_s": time_limit_s},
        "machine": {**machine, "free_memory_bytes": free,
                    "load_average_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "model": model_facts,
        "sweep": entries,
        "growth": growth,
        "targets": sweep_targets(entries, growth),
    }
