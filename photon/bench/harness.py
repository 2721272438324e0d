"""`photon bench` as a library call: every configuration side by side, in one run.

One model and one input batch; configurations (stock, then each pruner at each keep ratio)
are attached and detached in turn. Warm-up rounds run everything once unmeasured; then each
repeat round measures every configuration, in a rotated order so no configuration always
runs first. Each time is summarised over the repeats (fastest by default, median on
request); each ratio to stock is taken within each round (the configuration's time over
stock's in the same round) and reported as the median of those per-round ratios with their
min-max range, next to the ideal ratio from analytic FLOPs. photon/bench/sweep.py runs this
over several input sizes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import torch

import photon
from photon.bench import clock, flops, memory, workload
from photon.bench.models import ModelSpec, build_model
from photon.core import plugins
from photon.core.api import spec_for_model
from photon.core.errors import PhotonError
from photon.core.losses import answer_window

TIMES = ("vision_s", "prefill_s", "prefill_head_s", "prefill_layers_s", "prefill_outside_layers_s", "decode_s_per_token",
         "generate_s", "train_step_s")
# measured time -> the FLOPs that bound it
IDEAL = {"vision_s": "vision", "prefill_s": "prefill", "decode_s_per_token": "decode", "generate_s": "generate", "train_step_s": "train"}


@dataclass
class BenchOptions:
    model: ModelSpec = field(default_factory=ModelSpec)
    pruners: tuple[str, ...] = ("photon", "random", "fastv", "visionzip", "divprune")
    keep: tuple[float, ...] = (0.1, 0.3, 0.5)
    visual_tokens: int = 512
    batch: int = 2
    new_tokens: int = 8
    repeats: int = 5  # ratios are medians of per-round ratios: at least 5 to show their spread
    warmup: int = 1
    memory: bool = True
    # Interference from other work only ever adds time, so on a shared machine the fastest
    # repeat ("min") estimates a configuration's own cost best; "median" is the alternative.
    statistic: str = "min"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    layer: int | None = None  # the pruners' selection layer (None: each pruner's own default)


@dataclass
class Configuration:
    pruner: str | None  # None: the stock model
    keep_ratio: float | None = None

    @property
    def label(self) -> str:
        return "stock" if self.pruner is None else f"{self.pruner}@{self.keep_ratio:g}"


def configurations(options: BenchOptions) -> list[Configuration]:
    known = plugins.pruners()
    unknown = [p for p in options.pruners if p not in known]
    if unknown:
        raise PhotonError(f"unknown pruner(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    bad = [r for r in options.keep if not 0 < r <= 1]
    if bad:
        raise PhotonError(f"--keep ratios must lie in (0, 1], got {bad}")
    if options.statistic not in ("min", "median"):
        raise PhotonError(f"the statistic must be min or median, got {options.statistic!r}")
    return [Configuration(None)] + [Configuration(p, r) for r in options.keep for p in options.pruners]


def attach(model, config: Configuration, layer: int | None = None) -> None:
    if config.pruner is not None:
        photon.attach(model, pruner=config.pruner, mode="zero_shot", keep_ratio=config.keep_ratio,
                      **({"layer": layer} if layer is not None else {}))


def machine_info(device: torch.device) -> dict:
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine skews CPU timings: the 1-minute load average says how busy it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _shapes(adapter, prompt: dict, kept: list[int]) -> list[flops.SampleShape]:
    ids, real = prompt["input_ids"], prompt["attention_mask"].bool()
    visual = (adapter.visual_kinds(ids) > 0) & real
    instruction = adapter.instruction_mask(ids) & real
    grids = prompt["video_grid_thw"].tolist()  # one video per sample, in batch order
    return [
        flops.SampleShape(
            tokens=int(real[b].sum()),
            visual=int(visual[b].sum()),
            instruction=int(instruction[b].sum()),
            kept=kept[b],
            frames=flops.frames_of([grids[b]]),
        )
        for b in range(ids.shape[0])
    ]


def _measure_rounds(model, adapter, configs, prompt, train, options, step) -> tuple[dict, dict, dict]:
    """Warm-up, then interleaved measured rounds: (time samples, selection facts, KV bytes) by label."""
    samples = {c.label: {name: [] for name in TIMES} for c in configs}
    selections: dict[str, dict] = {}
    kv: dict[str, dict] = {}  # the KV cache's bytes (the same every round)
    rounds = options.warmup + options.repeats
    vision_tower, layers = adapter.vision_tower(model), adapter.text_model(model).layers
    for r in range(rounds):
        shift = r % len(configs)
        for config in configs[shift:] + configs[:shift]:
            step(f"round {r + 1}/{rounds} ({'warm-up' if r < options.warmup else 'measured'}): {config.label}")
            attach(model, config, options.layer)
            try:
                times = clock.time_generate(model, vision_tower, prompt, options.new_tokens, layers)
                # per repeat, so the summary of "outside" is one of the same call's two times
                times["prefill_outside_layers_s"] = times["prefill_s"] - times["prefill_layers_s"]
                if config.pruner is not None:
                    runtime = model._photon
                    selections[config.label] = {
                        "layer": runtime.layer,
                        "evict_all": runtime.config.cache == "evict_all",
                        "kept": [record["n_kept"] for record in photon.last_selection(model)],
                        "pruner": runtime.pruner,
                    }
                times["train_step_s"] = clock.time_train_step(model, train)
            finally:
                photon.detach(model)
            if r >= options.warmup:
                for name in TIMES:
                    samples[config.label][name].append(times[name])
                kv[config.label] = {key: times[key] for key in ("kv_bytes_after_prefill", "kv_bytes_final")}
    return samples, selections, kv


def _summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "samples": values}


def run_bench(options: BenchOptions, progress: Callable[[str, int, int], None] | None = None, built=None) -> dict:
    """Measure every configuration; returns the JSON-ready result (see docs/benchmarks.md).

    progress(message, step, total) is called before each step. built: a (model, encoder) pair
    from build_model(options.model) to reuse (a sweep builds its model once).
    """
    configs = configurations(options)
    total = len(configs) * (options.warmup + options.repeats + int(options.memory)) + 1
    counter = iter(range(total))

    def step(message: str) -> None:
        if progress is not None:
            progress(message, next(counter, total - 1), total)

    device = torch.device(options.model.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PhotonError("--device cuda was asked for but CUDA is not available")
    if options.threads:
        torch.set_num_threads(options.threads)
    machine = machine_info(device)
    step(f"building {options.model.describe()}")
    model, encoder = built or build_model(options.model)
    prompt, train = (
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for batch in workload.batches(encoder, options.visual_tokens, options.batch, seed=options.model.seed)
    )
    dims = flops.dims_of(model.config)
    adapter = spec_for_model(model).make_adapter(model)
    samples, selections, kv = _measure_rounds(model, adapter, configs, prompt, train, options, step)
    kv_element = next(model.parameters()).element_size()

    stock_shapes = _shapes(adapter, prompt, [0] * options.batch)
    train_logits = answer_window(train["labels"])  # the positions a training forward computes logits for
    results = []
    for config in configs:
        chosen = selections.get(config.label)
        kept = chosen["kept"] if chosen else [s.visual for s in stock_shapes]
        shapes = _shapes(adapter, prompt, kept)
        counted = flops.configuration_flops(
            dims,
            shapes,
            layer=chosen["layer"] if chosen else None,
            evict_all=chosen["evict_all"] if chosen else True,
            new_tokens=options.new_tokens,
            pruner=chosen["pruner"] if chosen else None,
            train_logits=train_logits,
        )
        results.append(
            {
                "label": config.label,
                "pruner": config.pruner,
                "keep_ratio": config.keep_ratio,
                "layer": chosen["layer"] if chosen else None,
                "visual_tokens": [s.visual for s in shapes],
                "kept_tokens": kept,
                "times": {name: _summary(v) for name, v in samples[config.label].items()},
                "flops": counted,
                "decode_bytes": flops.decode_bytes(dims, shapes, chosen["layer"] if chosen else None,
                                                   chosen["evict_all"] if chosen else True, options.new_tokens, kv_element),
                "kv_cache": {
                    "after_prefill": kv[config.label]["kv_bytes_after_prefill"],
                    "final": kv[config.label]["kv_bytes_final"],
                    "ideal_after_prefill": flops.kv_cache_bytes(dims, shapes, chosen["layer"] if chosen else None,
                                                                chosen["evict_all"] if chosen else True, 0, kv_element),
                    "ideal_final": flops.kv_cache_bytes(dims, shapes, chosen["layer"] if chosen else None,
                                                        chosen["evict_all"] if chosen else True, options.new_tokens - 1, kv_element),
                },
            }
        )
    if options.memory:
        _measure_memory(model, configs, results, options, prompt, train, device, step)
    _add_ratios(results, options.statistic, samples)
    machine["load_average_1min_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "command_options": _jsonable(options),
        "machine": machine,
        "model": {"description": options.model.describe(), "dims": dataclasses.asdict(dims)},
        "input": {
            "batch": options.batch,
            "prompt_tokens": int(prompt["input_ids"].shape[1]),
            "visual_tokens_per_sample": [s.visual for s in stock_shapes],
            "video_grid_thw": prompt["video_grid_thw"].tolist(),
            "new_tokens": options.new_tokens,
        },
        "configurations": results,
    }


def _measure_memory(model, configs, results, options, prompt, train, device, step) -> None:
    by_label = {r["label"]: r for r in results}
    if device.type == "cuda":
        for config in configs:
            step(f"memory: {config.label}")
            attach(model, config, options.layer)
            try:
                by_label[config.label]["memory"] = memory.cuda_peaks(model, prompt, train, options.new_tokens)
            finally:
                photon.detach(model)
        return
    if not memory.can_measure_rss():
        step("memory: skipped (peak RSS can only be reset on Linux with a writable /proc/self/clear_refs)")
        return
    cpu = lambda tensors: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="photon-bench-") as workdir:
        for config in configs:
            step(f"memory (fresh process): {config.label}")
            spec = {
                "model": dataclasses.asdict(options.model),
                "pruner": config.pruner,
                "keep_ratio": config.keep_ratio,
                "layer": options.layer,
                "new_tokens": options.new_tokens,
                "threads": options.threads,
            }
            by_label[config.label]["memory"] = memory.probe_in_subprocess(spec, cpu(prompt), cpu(train), workdir)


def _missing(*values) -> bool:
    return any(v is None or v != v for v in values)  # None or NaN


def _ratio(a, b):
    if _missing(a, b) or not b:
        return None
    return a / b


def _prefill_by_part(stock: dict, r: dict, statistic: str) -> float | None:
    """The prefill's ideal when its two parts each reach their own: stock's measured LM-head time
    (one position per sample: the same work in every configuration, read-bound, so its FLOPs
    share, about 3% on the tiny model, is far below its share of the time) plus the rest of
    stock's prefill scaled by the FLOPs ratio of the rest, over stock's prefill time."""
    prefill, head = (stock["times"][name][statistic] for name in ("prefill_s", "prefill_head_s"))
    rest_ratio = _ratio(r["flops"]["prefill"] - r["flops"]["prefill_head"], stock["flops"]["prefill"] - stock["flops"]["prefill_head"])
    head_ratio = _ratio(r["flops"]["prefill_head"], stock["flops"]["prefill_head"])
    if _missing(prefill, head, rest_ratio, head_ratio) or not prefill:
        return None
    head = min(head, prefill)
    return (head * head_ratio + (prefill - head) * rest_ratio) / prefill


def _prefill_parts(stock: dict, r: dict, statistic: str) -> dict | None:
    """Where a prefill's time goes (seconds): its decoder layers, the LM head, the rest; `own`,
    the time outside the decoder layers beyond stock's (what the runtime adds: selection,
    gathers, masks); and `floor`, the ratio to stock's prefill if the runtime added nothing:
    stock's time outside its decoder layers plus this configuration's layers as measured (the
    stock layers over the kept tokens). Unlike the FLOPs ideals, the floor keeps each layer's
    fixed per-call cost."""
    names = ("prefill_s", "prefill_head_s", "prefill_layers_s", "prefill_outside_layers_s")
    mine, theirs = ({name: t["times"][name][statistic] for name in names} for t in (r, stock))
    if _missing(*mine.values(), *theirs.values()) or not theirs["prefill_s"]:
        return None
    return {
        "layers_s": mine["prefill_layers_s"],
        "head_s": mine["prefill_head_s"],
        "other_s": mine["prefill_outside_layers_s"] - mine["prefill_head_s"],
        "own_s": mine["prefill_outside_layers_s"] - theirs["prefill_outside_layers_s"],
        "floor": (theirs["prefill_outside_layers_s"] + mine["prefill_layers_s"]) / theirs["prefill_s"],
    }


def _generate_by_phase(stock_times: dict, statistic: str, ideal: dict) -> float | None:
    """generate()'s ideal when each of its phases reaches its own: stock's measured vision,
    prefill and decoding times, scaled by the FLOPs ideal of the vision encoder, the prefill's
    by-part ideal and the bytes ideal of decoding (memory-bound), over stock's generate time.
    The FLOPs ideal alone weighs the decode steps by their FLOPs, a fraction of their share of
    the time."""
    times = {name: stock_times[name][statistic] for name in ("vision_s", "prefill_s", "generate_s")}
    parts = (ideal["vision_s"], ideal["prefill_by_part"], ideal["decode_bytes"])
    if _missing(*times.values(), *parts) or not times["generate_s"]:
        return None
    decoding = max(times["generate_s"] - times["vision_s"] - times["prefill_s"], 0.0)
    scaled = times["vision_s"] * parts[0] + times["prefill_s"] * parts[1] + decoding * parts[2]
    return scaled / times["generate_s"]


def round_ratios(mine: list[float], stock: list[float]) -> dict | None:
    """A configuration's time over stock's within each measured round (both ran in it, interleaved):
    {median, min, max, samples}; None when a round lacks a time."""
    ratios = [_ratio(a, b) for a, b in zip(mine, stock)]
    if not ratios or any(r is None for r in ratios):
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "samples": ratios}


def _add_ratios(results: list[dict], statistic: str, samples: dict | None = None) -> None:
    """Each figure over the stock model's, next to the same ratio of FLOPs (the ideal). Time ratios
    are the median of the per-round ratios when the rounds' samples are given (their range in
    r["ratio_spread"]), else the ratio of the summarised times."""
    stock = results[0]
    for r in results:
        spread = {}
        if samples is not None:
            spread = {name: round_ratios(samples[r["label"]][name], samples[stock["label"]][name]) for name in TIMES}
        r["ratio_spread"] = spread
        ratios = {name: spread[name]["median"] if spread.get(name) else _ratio(r["times"][name][statistic], stock["times"][name][statistic])
                  for name in TIMES}
        ideal = {name: _ratio(r["flops"][key], stock["flops"][key]) for name, key in IDEAL.items()}
        ratios["kept_tokens"] = _ratio(sum(r["kept_tokens"]), sum(r["visual_tokens"]))
        for phase in ("after_prefill", "final"):
            ratios[f"kv_bytes_{phase}"] = _ratio(r["kv_cache"][phase], stock["kv_cache"][phase])
            ideal[f"kv_bytes_{phase}"] = _ratio(r["kv_cache"][f"ideal_{phase}"], stock["kv_cache"][f"ideal_{phase}"])
        ideal["kept_tokens"] = r["keep_ratio"] if r["pruner"] else 1.0
        ideal["decode_bytes"] = _ratio(r["decode_bytes"], stock["decode_bytes"])
        ideal["prefill_by_part"] = _prefill_by_part(stock, r, statistic)
        r["prefill_parts"] = _prefill_parts(stock, r, statistic)
        ideal["prefill_floor"] = None if r["prefill_parts"] is None else r["prefill_parts"]["floor"]
        ideal["generate_by_phase"] = _generate_by_phase(stock["times"], statistic, ideal)
        if "memory" in r and "memory" in stock:
            for phase in ("generate", "train"):
                mine, theirs = r["memory"][phase], stock["memory"][phase]
                ratios[f"{phase}_peak_memory"] = _ratio(mine["peak"], theirs["peak"])
                ratios[f"{phase}_memory_above_base"] = _ratio(mine["peak"] - mine["base"], theirs["peak"] - theirs["base"])
            # The generate peak a runtime could reach: stock's, with its KV cache holding only the kept
            # tokens (the selection layer and those before it see every token, so their activations stay).
            peak = stock["memory"]["generate"]["peak"]
            ideal["generate_peak_memory"] = _ratio(peak - stock["kv_cache"]["after_prefill"] + r["kv_cache"]["ideal_after_prefill"], peak)
            # Activation checkpointing beside the plain step, same configuration: what it saves.
            plain, checkpointed = r["memory"]["train"], r["memory"]["train_checkpointed"]
            ratios["train_checkpointed_memory_above_base"] = _ratio(checkpointed["peak"] - checkpointed["base"], plain["peak"] - plain["base"])
        r["ratios"], r["ideal_ratios"] = ratios, ideal


def _jsonable(options: BenchOptions) -> dict:
    out = dataclasses.asdict(options)
    out["pruners"], out["keep"] = list(options.pruners), list(options.keep)
    return out
