"""`photon bench --paper-table`: the shape of the paper's efficiency table (PHOTON_SPEC section 7).

Three rows on one volume of (D, H, W) = 140 x 280 x 280 voxels, one model, measured side by
side in interleaved rounds:
- stock: Qwen's own RGB patch embedding (temporal patch 2): 70 x 10 x 10 = 7,000 visual tokens,
  nothing pruned;
- Photon: Photon's grey 3D patch embedding (14^3 kernel): 10 x 10 x 10 = 1,000 tokens, with ITS;
- Photon Max: Qwen's own embedding (7,000 tokens) with ITS.
ITS runs training-free (the instance-adaptive mean rule, `--keep` does not apply): random
weights time like real ones, but a trained predictor's keep ratio cannot be had without
training, so the kept counts are what the rule keeps on this input. Each row reports the
visual tokens kept, training steps per second, generated tokens per second and the generate
peak memory, each as a ratio to stock. The two embeddings are swapped on the same model, so
every row shares its weights; on CPU each row's memory is probed in a fresh process.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import photon
from photon.bench import clock, memory
from photon.bench.harness import BenchOptions, machine_info
from photon.bench.models import QWEN3, SIZES, EmbeddingSwap, build_model, encoder_for_model, volume_embedding
from photon.core.errors import PhotonError
from photon.modalities.base import Media
from photon.modalities.dataset import Sample

PAPER_VOLUME = (140, 280, 280)
QUESTION = "Is there a lesion in this CT volume? If so, where?"
ANSWER = "Yes, a nodule in the right upper lobe."
# The paper's own figures (3D-RAD, Qwen2.5-VL 3B, H20 GPUs), as ratios to its finetuned Qwen2.5-VL.
PAPER = {
    "stock": {"tokens": 7000, "train_it_s": 0.15, "decode_tok_s": 2.30, "peak_gib": 26.0},
    "photon": {"tokens": 390, "train_it_s": 0.85, "decode_tok_s": 4.12, "peak_gib": 9.2},
    "photon-max": {"tokens": 3080, "train_it_s": 0.19, "decode_tok_s": 2.60, "peak_gib": 21.4},
}


@dataclass(frozen=True)
class Row:
    label: str
    grey: bool  # Photon's 3D embedding (else Qwen's own)
    prune: bool
    description: str


ROWS = (
    Row("stock", False, False, "Qwen's own embedding, unpruned"),
    Row("photon", True, True, "Photon 3D embedding + ITS"),
    Row("photon-max", False, True, "Qwen's own embedding + ITS (Photon Max)"),
)


def volume_inputs(encoder, volume: tuple[int, int, int], batch: int, seed: int) -> tuple[dict, dict]:
    """(prompt, training batch) for `batch` random [0, 1] volumes of shape (D, H, W)."""
    from photon.adapters.qwen_inputs import model_inputs

    depth, height, width = volume
    rng = np.random.default_rng(seed)
    samples = [Media(frames=rng.random((depth, 1, height, width), dtype=np.float32), kind="volume", source=f"v{i}", fps=1.0)
               for i in range(batch)]

    def encode(train: bool):
        items = []
        for i, media in enumerate(samples):
            messages = [{"role": "user", "content": "<video>" + QUESTION}] + ([{"role": "assistant", "content": ANSWER}] if train else [])
            items.append(encoder.encode(Sample(f"v{i}", messages, [media]), train=train))
        return model_inputs(encoder.collate(items))

    prompt = encode(False)
    prompt.pop("labels")
    return prompt, encode(True)


def _attach(model, row: Row) -> None:
    if row.prune:
        photon.attach(model, mode="zero_shot")


def run_paper_table(options: BenchOptions, volume: tuple[int, int, int] = PAPER_VOLUME,
                    progress: Callable[[str, int, int], None] | None = None) -> dict:
    spec = options.model
    if spec.backbone:
        raise PhotonError("--paper-table measures the published shapes with random weights: give --size, not --backbone")
    if spec.volume_embedding:
        raise PhotonError("--paper-table installs the 3D embedding itself")
    family = SIZES[spec.size][0]
    if family == QWEN3:
        raise PhotonError("--paper-table reproduces the paper's Qwen2.5-VL table: choose a Qwen2.5-VL --size (tiny, small, 3b, 7b)")
    depth, height, width = volume
    total = len(ROWS) * (options.warmup + options.repeats + int(options.memory)) + 1
    counter = iter(range(total))

    def step(message: str) -> None:
        if progress is not None:
            progress(message, next(counter, total - 1), total)

    device = torch.device(spec.device)
    step(f"building {spec.describe()}")
    model, rgb_encoder = build_model(spec)
    rgb = EmbeddingSwap.current(model)
    grey = volume_embedding(model, seed=spec.seed)
    grey.install(model)
    grey_encoder = encoder_for_model(model, family)
    rgb.install(model)
    side = rgb_encoder.geometry.patch_size * rgb_encoder.geometry.merge_size
    if height % side or width % side or depth % grey_encoder.geometry.temporal_patch_size:
        raise PhotonError(f"the volume {depth}x{height}x{width} must have H and W multiples of {side} and D a multiple of "
                          f"{grey_encoder.geometry.temporal_patch_size} (the 3D kernel's depth)")
    inputs = {}
    for embedding, encoder in ((rgb, rgb_encoder), (grey, grey_encoder)):
        prompt, train = volume_inputs(encoder, volume, options.batch, options.model.seed)
        inputs[embedding is grey] = tuple({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                                          for batch in (prompt, train))
    vision_tower = model.model.visual
    samples = {row.label: {"train_step_s": [], "generate_s": [], "decode_s_per_token": []} for row in ROWS}
    kept: dict[str, list[int]] = {}
    visual: dict[str, list[int]] = {}
    rounds = options.warmup + options.repeats
    for r in range(rounds):
        shift = r % len(ROWS)
        for row in ROWS[shift:] + ROWS[:shift]:
            step(f"round {r + 1}/{rounds} ({'warm-up' if r < options.warmup else 'measured'}): {row.label}")
            (grey if row.grey else rgb).install(model)
            prompt, train = inputs[row.grey]
            _attach(model, row)
            try:
                times = clock.time_generate(model, vision_tower, prompt, options.new_tokens)
                visual[row.label] = (prompt["mm_token_type_ids"] > 0).sum(1).tolist()
                kept[row.label] = [rec["n_kept"] for rec in photon.last_selection(model)] if row.prune else visual[row.label]
                times["train_step_s"] = clock.time_train_step(model, train)
            finally:
                photon.detach(model)
            if r >= options.warmup:
                for name in samples[row.label]:
                    samples[row.label][name].append(times[name])
    peaks = {}
    if options.memory:
        peaks = _memory(model, options, inputs, rgb, grey, step)
    rgb.install(model)
    statistic = options.statistic
    results = []
    for row in ROWS:
        times = {name: {"min": min(v), "median": float(np.median(v)), "samples": v} for name, v in samples[row.label].items()}
        train_s, generate_s = times["train_step_s"][statistic], times["generate_s"][statistic]
        results.append({
            "label": row.label,
            "description": row.description,
            "visual_tokens": visual[row.label],
            "kept_tokens": kept[row.label],
            "times": times,
            "train_steps_per_s": 1.0 / train_s,
            "decode_tokens_per_s": options.new_tokens * options.batch / generate_s,
            "generate_peak_memory": peaks.get(row.label),
        })
    stock = results[0]
    for r in results:
        r["ratios"] = {
            "kept_tokens": sum(r["kept_tokens"]) / sum(stock["visual_tokens"]),
            "train_steps_per_s": r["train_steps_per_s"] / stock["train_steps_per_s"],
            "decode_tokens_per_s": r["decode_tokens_per_s"] / stock["decode_tokens_per_s"],
            "generate_peak_memory": (r["generate_peak_memory"] / stock["generate_peak_memory"]
                                     if r["generate_peak_memory"] and stock["generate_peak_memory"] else None),
        }
        paper, paper_stock = PAPER[r["label"]], PAPER["stock"]
        r["paper_ratios"] = {
            "kept_tokens": paper["tokens"] / paper_stock["tokens"],
            "train_steps_per_s": paper["train_it_s"] / paper_stock["train_it_s"],
            "decode_tokens_per_s": paper["decode_tok_s"] / paper_stock["decode_tok_s"],
            "generate_peak_memory": paper["peak_gib"] / paper_stock["peak_gib"],
        }
    return {
        "paper_table": True,
        "command_options": {**dataclasses.asdict(options), "pruners": ["photon"], "keep": [], "volume": list(volume)},
        "machine": machine_info(device),
        "model": {"description": spec.describe()},
        "input": {"batch": options.batch, "volume": list(volume), "new_tokens": options.new_tokens},
        "rows": results,
    }


def _memory(model, options: BenchOptions, inputs: dict, rgb: EmbeddingSwap, grey: EmbeddingSwap, step) -> dict:
    """Generate peak per row: CUDA max allocated in this process, or peak RSS in a fresh one."""
    device = torch.device(options.model.device)
    peaks = {}
    if device.type == "cuda":
        for row in ROWS:
            step(f"memory: {row.label}")
            (grey if row.grey else rgb).install(model)
            prompt, train = inputs[row.grey]
            _attach(model, row)
            try:
                peaks[row.label] = memory.cuda_peaks(model, prompt, train, options.new_tokens)["generate"]["peak"]
            finally:
                photon.detach(model)
        return peaks
    if not memory.can_measure_rss():
        step("memory: skipped (peak RSS can only be reset on Linux with a writable /proc/self/clear_refs)")
        return peaks
    cpu = lambda tensors: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}  # noqa: E731
    for row in ROWS:
        step(f"memory (fresh process): {row.label}")
        prompt, train = inputs[row.grey]
        spec = {"model": dataclasses.asdict(dataclasses.replace(options.model, volume_embedding=row.grey)),
                "pruner": "photon" if row.prune else None, "keep_ratio": None, "new_tokens": options.new_tokens,
                "threads": options.threads}
        with tempfile.TemporaryDirectory(prefix="photon-paper-") as workdir:
            peaks[row.label] = memory.probe_in_subprocess(spec, cpu(prompt), cpu(train), workdir)["generate"]["peak"]
    return peaks


def render_paper_table(result: dict) -> str:
    rows = result["rows"]
    volume = "x".join(map(str, result["input"]["volume"]))
    lines = [
        f"model: {result['model']['description']}",
        f"the paper's efficiency table: one {volume} volume per sample, batch {result['input']['batch']}, "
        f"{result['input']['new_tokens']} new tokens; ITS training-free (mean rule); ratios to stock "
        f"(the paper's, 3D-RAD on Qwen2.5-VL 3B, in brackets)",
    ]
    header = ["row", "visual tokens kept", "train step/s", "decode tokens/s", "generate peak memory"]
    table = []
    for r in rows:
        ratio, paper = r["ratios"], r["paper_ratios"]
        kept = f"{sum(r['kept_tokens']) / len(r['kept_tokens']):.0f} of {r['visual_tokens'][0]}"
        cells = [f"{r['label']}: {r['description']}", f"{kept} = {ratio['kept_tokens']:.3f} ({paper['kept_tokens']:.3f})"]
        for key in ("train_steps_per_s", "decode_tokens_per_s", "generate_peak_memory"):
            value = ratio[key]
            cells.append(("-" if value is None else f"{value:.2f}") + f" ({paper[key]:.2f})")
        table.append(cells)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines += ["", fmt(header), fmt(["-" * w for w in widths])] + [fmt(t) for t in table]
    stock = rows[0]
    lines.append("")
    lines.append(f"stock absolute: train step {stock['train_steps_per_s']:.3f}/s, {stock['decode_tokens_per_s']:.2f} generated "
                 "tokens/s" + (f", generate peak {stock['generate_peak_memory'] / 2**30:.2f} GiB" if stock["generate_peak_memory"] else ""))
    return "\n".join(lines)
