"""The demo's run: write the phantom set, train twice (unpruned, then Photon phase 2 with the
schedule scaled to the run), score both on held-out cases, and draw what Photon kept.

Both trainings go through `photon train`'s own code (photon.training.trainer.train) in this
process, one after the other, on the same data order and initial weights; peak memory is
reset before each (CUDA max allocated, or the process's peak RSS on Linux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from photon.bench import flops
from photon.demo import phantoms
from photon.demo.config import DemoConfig

NO_PRUNING = [  # phase 2 with every stage boundary past the end and no robust batches: plain finetuning
    "photon.schedule.scale_with_run=false",
    "photon.schedule.soft_start=1000000000",
    "photon.schedule.hard_start=1000000000",
    "photon.schedule.flip_start=1000000000",
    "photon.schedule.robust_prob=0",
]
PRUNED_STAGES = ("hard", "flip")


def normalise(answer: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", answer.lower()).split())


def train_config(cfg: DemoConfig, records: Path, out: Path, extra: list[str]):
    from photon.training.trainer import load_train_config

    return load_train_config(None, [
        "run.phase=2",
        f"run.output_dir={out}",
        f"run.max_steps={cfg.steps}",
        f"run.micro_batch_size={cfg.batch_size}",
        f"run.save_every={cfg.steps}",
        "run.keep_last=1",
        f"run.seed={cfg.seed}",
        f"run.progress={str(cfg.progress).lower()}",
        f"model.backbone={cfg.backbone}",
        f"data.train={records}",
        f"data.media={json.dumps(ct_options(cfg))}",  # JSON is YAML flow syntax
        f"optim.lr={cfg.lr}",
        f"optim.vit_lr={cfg.lr}",  # the tiny backbone's vision tower is random too
        f"optim.warmup_ratio={cfg.warmup_ratio}",
        "photon.schedule.scale_with_run=true",
        *extra,
    ])


# -- training -------------------------------------------------------------------------------
def training_facts(rows: list[dict], seconds: float, peak: int | None) -> dict:
    """The run's own log: its median samples/s (the first two steps pay one-time set-up)."""
    rates = [r["samples_per_s"] for r in rows[2:] or rows if r.get("samples_per_s")]
    return {
        "steps": len(rows),
        "seconds": round(seconds, 2),
        "samples_per_s": statistics.median(rates) if rates else None,
        # The process's peak during the run (an earlier run's model may still be resident).
        "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
        "final_loss": statistics.mean(r["loss"] for r in rows[-10:]) if rows else None,
    }


def train_once(cfg: DemoConfig, label: str, records: Path, extra: list[str]):
    from photon.bench.memory import peak_bytes, reset_peak
    from photon.training.trainer import train

    import torch

    tc = train_config(cfg, records, Path(cfg.out) / "runs" / label, extra)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    reset_peak(device)
    started = time.perf_counter()
    run = train(tc, overwrite=True)  # the demo owns its run folders: each demo trains afresh
    seconds = time.perf_counter() - started
    return run, seconds, peak_bytes(device)


def release(run) -> Any:
    """Keep the trained model, drop the engine and optimiser state before the next run."""
    loaded = run.loaded
    run.engine = None
    gc.collect()
    return loaded


# -- scoring ----------------------------------------------------------------------------------
def coverage(selection: dict | None, meta: dict) -> tuple[float, float] | None:
    """(kept share of the question's relevant tokens, kept share of all visual tokens), or None
    for a question with no relevant tokens (counting an empty volume)."""
    if selection is None:
        return None
    keep = np.asarray(selection["keep"], dtype=bool)
    grid = selection["grids"][0]
    relevant = phantoms.to_token_grid(phantoms.relevant_voxels(meta), (grid["t"], grid["h"], grid["w"])).reshape(-1)
    if not relevant.any():
        return None
    return float(keep[relevant].mean()), float(keep.mean())


def ct_options(cfg: DemoConfig) -> dict:
    """The CT loader's options for the phantoms: stored at the model-input size, no offline recipe."""
    return {"ct": {"size": list(cfg.volume), "preprocess": False}}


def phantom_dataset(loaded, records: Path, cfg: DemoConfig, *, train: bool):
    """Records through the CT loader at the demo's volume size, encoded for `loaded`."""
    from photon.modalities.dataset import PhotonDataset
    from photon.wrapping import media_options

    options = media_options(loaded, ct_options(cfg))
    return PhotonDataset(records, encoder=loaded.encoder, train=train, media_options=options, strict=True)


def evaluate(loaded, records: Path, cfg: DemoConfig, label: str, *, prune: bool, on_case: Callable | None = None) -> dict:
    """Greedy answers for every test record; accuracy, kept tokens, coverage and prefill time."""
    from tqdm import tqdm

    from photon.bench.memory import peak_bytes, reset_peak
    from photon.inference import generate_batch, prediction_line, run_settings, unpruned
    from photon.wrapping import rule_of

    import torch

    model = loaded.model
    model.eval()
    model._photon.plan = None  # inference, not a training stage
    dims = flops.dims_of(model.config)
    layer = model._photon.layer if prune else dims.text.layers  # unpruned: every layer sees every token
    dataset = phantom_dataset(loaded, records, cfg, train=False)
    device = next(model.parameters()).device
    run_fields = {"backbone": loaded.backbone, "mode": model._photon.config.mode if prune else "unpruned",
                  "rule": rule_of(model) if prune else "none"}
    settings = run_settings(loaded, prune=prune, max_new_tokens=cfg.max_new_tokens, media_options=dataset.media_options)
    rows, lines = [], []
    context = contextlib.nullcontext() if prune else unpruned(model)
    with context, torch.no_grad():
        generate_batch(loaded, loaded.encoder.collate([dataset[0]]), 1)  # warm-up, untimed
        reset_peak(device)
        bar = tqdm(total=len(dataset), desc=f"score {label}", unit="case", disable=not cfg.progress)
        for start in range(0, len(dataset), cfg.eval_batch_size):
            indices = range(start, min(start + cfg.eval_batch_size, len(dataset)))
            batch = loaded.encoder.collate([dataset[i] for i in indices])
            lengths = batch["attention_mask"].sum(1).tolist()
            for i, length, result in zip(indices, lengths, generate_batch(loaded, batch, cfg.max_new_tokens)):
                entry = dataset.entries[i]
                reference = entry.messages[-1]["content"]
                covered = coverage(result.selection, entry.meta)
                kept_length = length - result.n_visual + result.n_kept
                rows.append({
                    "kind": entry.meta["kind"], "correct": normalise(result.answer) == normalise(reference),
                    "n_visual": result.n_visual, "n_kept": result.n_kept, "prefill_s": result.prefill_s,
                    "coverage": None if covered is None else covered[0], "blind": None if covered is None else covered[1],
                    "llm_prefill_flops": flops.prefill(dims, length, kept_length, layer, logits=1),
                })
                lines.append(prediction_line(entry, result, run_fields, settings))
                if on_case is not None:
                    on_case(entry, result)
            bar.update(len(indices))
        bar.close()
        peak = peak_bytes(device)
    predictions = Path(cfg.out) / f"predictions-{label}.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return summarise(rows, peak, predictions, pruned=prune)


def summarise(rows: list[dict], peak: int | None, predictions: Path, *, pruned: bool) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    covered = [r for r in rows if r["coverage"] is not None]
    return {
        "cases": len(rows),
        "accuracy": mean(float(r["correct"]) for r in rows),
        "accuracy_by_kind": {k: mean(float(r["correct"]) for r in rows if r["kind"] == k) for k in phantoms.KINDS},
        "visual_tokens": mean(r["n_visual"] for r in rows),
        "kept_tokens": mean(r["n_kept"] for r in rows),
        "keep_ratio": mean(r["n_kept"] / r["n_visual"] for r in rows if r["n_visual"]),
        "relevant_coverage": mean(r["coverage"] for r in covered) if pruned else None,
        "blind_coverage": mean(r["blind"] for r in covered) if pruned else None,
        # The decoder's prefill FLOPs (analytic, photon/bench/flops.py): what pruning saves in compute.
        "llm_prefill_gflops": mean(r["llm_prefill_flops"] for r in rows) / 1e9,
        "scoring_prefill_ms": 1000 * mean(r["prefill_s"] for r in rows),  # while scoring; see "timing" for the comparison
        "inference_peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
        "predictions": str(predictions),
    }


def prior_accuracy(train_records: Path, test_records: Path) -> float:
    """Accuracy of answering each kind of question with its most common training answer:
    what a model that ignores the volume can reach."""
    def read(path):
        return [json.loads(line) for line in Path(path).read_text().splitlines()]

    answers = {kind: Counter() for kind in phantoms.KINDS}
    for r in read(train_records):
        answers[r["meta"]["kind"]][r["messages"][-1]["content"]] += 1
    common = {kind: counts.most_common(1)[0][0] if counts else "" for kind, counts in answers.items()}
    test = read(test_records)
    return sum(common[r["meta"]["kind"]] == r["messages"][-1]["content"] for r in test) / len(test)


# -- timing, side by side -----------------------------------------------------------------------
@dataclass
class Timed:
    label: str
    loaded: Any
    prune: bool
    train: bool  # also time a training step (the runs that were trained)


def time_side_by_side(entries: list[Timed], train_records: Path, test_records: Path, cfg: DemoConfig) -> dict[str, dict]:
    """Prefill per case and a training step (forward + backward, Photon in its hard stage) for each
    entry on the same batches, interleaved round by round; the fastest of cfg.timing_rounds
    after one unmeasured round (other work on the machine only ever adds time)."""
    from photon.adapters.qwen_inputs import model_inputs
    from photon.bench.clock import time_train_step
    from photon.core.schedule import BatchPlan, Stage
    from photon.inference import generate_batch, unpruned

    def batch(loaded, records, n, train):
        dataset = phantom_dataset(loaded, records, cfg, train=train)
        return loaded.encoder.collate([dataset[i] for i in range(min(n, len(dataset)))])

    prompts = {e.label: batch(e.loaded, test_records, cfg.eval_batch_size, False) for e in entries}
    steps = {e.label: model_inputs(batch(e.loaded, train_records, cfg.batch_size, True)) for e in entries if e.train}
    samples: dict[str, dict[str, list[float]]] = {e.label: {"prefill": [], "train_step": []} for e in entries}
    for round_ in range(cfg.timing_rounds + 1):
        for e in entries[round_ % len(entries):] + entries[: round_ % len(entries)]:
            runtime = e.loaded.model._photon
            with contextlib.nullcontext() if e.prune else unpruned(e.loaded.model):
                runtime.plan = None
                e.loaded.model.eval()
                prefill = generate_batch(e.loaded, prompts[e.label], 1)[0].prefill_s
                step = None
                if e.train:
                    runtime.plan = BatchPlan(step=0, stage=Stage.HARD) if e.prune else None
                    step = time_train_step(e.loaded.model, steps[e.label])
                    runtime.plan = None
            if round_:  # the first round is a warm-up
                samples[e.label]["prefill"].append(prefill)
                if step is not None:
                    samples[e.label]["train_step"].append(step)
    out = {}
    for e in entries:
        step = min(samples[e.label]["train_step"], default=None)
        out[e.label] = {
            "prefill_ms": 1000 * min(samples[e.label]["prefill"]),
            "train_step_ms": None if step is None else 1000 * step,
            "train_samples_per_s": None if step is None else cfg.batch_size / step,
            "train_step_memory_mb": train_step_memory(e, steps[e.label]) if e.train else None,
        }
    return out


def train_step_memory(entry: Timed, inputs: dict) -> float | None:
    """Peak memory of one training step above what was held before it (MB): CUDA max allocated,
    or the process's peak RSS after freed heap went back to the system (Linux)."""
    from photon.bench.clock import train_step
    from photon.bench.memory import peak_bytes, reset_peak
    from photon.core.schedule import BatchPlan, Stage
    from photon.inference import unpruned

    model = entry.loaded.model
    device = next(model.parameters()).device
    with contextlib.nullcontext() if entry.prune else unpruned(model):
        model._photon.plan = BatchPlan(step=0, stage=Stage.HARD) if entry.prune else None
        base = reset_peak(device)
        train_step(model, inputs)
        peak = peak_bytes(device)
        model._photon.plan = None
    return None if base is None or peak is None else round((peak - base) / 2**20, 1)


# -- pictures ---------------------------------------------------------------------------------
class CaseDrawer:
    """Draws the first test case of each question kind: axial slices with kept tokens tinted."""

    def __init__(self, loaded, cfg: DemoConfig, folder: Path, label: str):
        self.loaded, self.cfg, self.folder, self.label = loaded, cfg, folder, label
        self.kinds_left = list(phantoms.KINDS)[: cfg.cases_to_draw]
        self.written: list[str] = []

    def __call__(self, entry, result) -> None:
        from photon.inference import load_inputs
        from photon.visualize import draw_medium, token_grids

        kind = entry.meta["kind"]
        if kind not in self.kinds_left or result.selection is None:
            return
        self.kinds_left.remove(kind)
        media = load_inputs([path for _, path in entry.media], ct_options(self.cfg))[0]
        question = entry.messages[0]["content"].split("Answer")[0].replace("<video>", "").strip()
        title = (f"{self.label}: {question} reference: {entry.messages[-1]['content']}; answer: {result.answer!r}; "
                 f"kept {result.n_kept}/{result.n_visual}")
        keep = token_grids(result.selection)[0]
        region = phantoms.to_token_grid(phantoms.relevant_voxels(entry.meta), keep.shape)
        image = draw_medium(media.frames, keep, temporal_patch=self.loaded.encoder.geometry.temporal_patch_size,
                            title=title, outline=region)
        path = self.folder / f"kept-{self.label}-{kind}.png"
        image.save(path, format="PNG")
        self.written.append(str(path))


# -- the whole demo ----------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    import photon
    from photon.training.plot import plot_training, read_log

    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    say(f"[1/4] writing {cfg.n_train} training and {cfg.n_test} test phantoms ({'x'.join(map(str, cfg.volume))}) to {data}")
    train_records = phantoms.write_split(data, "train", cfg.n_train, cfg.seed, tuple(cfg.volume))
    test_records = phantoms.write_split(data, "test", cfg.n_test, cfg.seed, tuple(cfg.volume))
    runs: dict[str, dict] = {}
    pictures: list[str] = []

    say(f"[2/4] training {cfg.backbone} without pruning ({cfg.steps} steps of {cfg.batch_size})")
    run, seconds, peak = train_once(cfg, "unpruned", train_records, NO_PRUNING)
    runs["unpruned"] = {"training": training_facts(read_log(run.log_path), seconds, peak)}
    base = release(run)
    del run

    say(f"[3/4] training {cfg.backbone} with Photon phase 2 (stages full / soft / hard / flip scaled to {cfg.steps} steps)")
    run, seconds, peak = train_once(cfg, "photon", train_records, [f"photon.{o}" for o in cfg.photon])
    log = read_log(run.log_path)
    pruned_steps = {r["step"] for r in log if r["stage"] in PRUNED_STAGES}
    runs["photon"] = {"training": training_facts(log, seconds, peak)}
    trained = release(run)
    retention = plot_training(run.log_path, out / "retention.png", window=max(1, cfg.steps // 20))
    del run

    say("[4/4] scoring the held-out cases and timing the models side by side")
    runs["unpruned"].update(evaluate(base, test_records, cfg, "unpruned", prune=False))
    timed = [Timed("unpruned", base, prune=False, train=True)]
    if cfg.zero_shot:
        photon.attach(base.model, mode="zero_shot")  # training-free ITS on the finetuned model
        drawer = CaseDrawer(base, cfg, out, "zero-shot")
        runs["zero-shot ITS"] = {"training": None, **evaluate(base, test_records, cfg, "zero-shot", prune=True, on_case=drawer)}
        pictures += drawer.written
        timed.append(Timed("zero-shot ITS", base, prune=True, train=False))
    drawer = CaseDrawer(trained, cfg, out, "photon")
    runs["photon"].update(evaluate(trained, test_records, cfg, "photon", prune=True, on_case=drawer))
    pictures += drawer.written
    timed.insert(1, Timed("photon", trained, prune=True, train=True))
    for label, timing in time_side_by_side(timed, train_records, test_records, cfg).items():
        runs[label]["timing"] = timing
    if cfg.random_control:
        # The blind control: the same trained model, tokens kept at random at Photon's own rate.
        photon.attach(trained.model, pruner="random", keep_ratio=runs["photon"]["keep_ratio"])
        runs["random"] = {"training": None, "timing": None, **evaluate(trained, test_records, cfg, "random", prune=True)}
    del base, trained
    gc.collect()
    result = {
        "settings": dataclasses.asdict(cfg),
        "runs": runs,
        "answer_prior_accuracy": prior_accuracy(train_records, test_records),
        "pruned_steps": [min(pruned_steps), max(pruned_steps)] if pruned_steps else None,
        "pictures": {"kept_tokens": pictures, "retention": str(retention)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    return result
