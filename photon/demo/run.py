"""The demo's run: write the phantom set, ground the backbone on region-wise descriptions (once
per setting, cached), finetune it twice on the questions (unpruned, then Photon phase 2 with the
schedule scaled to the run), score both on held-out cases, draw what Photon kept, and time
both side by side, on the tiny model and on a larger random-weight one where pruning pays.

Every training goes through `photon train`'s own code (photon.training.trainer.train) in this
process, one after the other; the two compared runs start from the same grounded checkpoint and
see the same data order. Peak memory is reset before each (CUDA max allocated, or the process's
peak RSS on Linux).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
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
from photon.core.errors import PhotonError
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


def train_config(cfg: DemoConfig, records: Path, out: Path, extra: list[str], *, steps: int | None = None,
                 lr: float | None = None, freeze: list[str] = ()):
    from photon.training.trainer import load_train_config

    steps = cfg.steps if steps is None else steps
    lr = cfg.lr if lr is None else lr
    return load_train_config(None, [
        "run.phase=2",
        f"run.output_dir={out}",
        f"run.max_steps={steps}",
        f"run.micro_batch_size={cfg.batch_size}",
        f"run.save_every={steps}",
        "run.keep_last=1",
        f"run.seed={cfg.seed}",
        f"run.progress={str(cfg.progress).lower()}",
        f"model.backbone={cfg.backbone}",
        f"data.train={records}",
        f"data.media={json.dumps(ct_options(cfg))}",  # JSON is YAML flow syntax
        f"optim.lr={lr}",
        f"optim.vit_lr={lr}",  # the demo backbones' vision towers are as small and as young as their LLMs
        f"optim.warmup_ratio={cfg.warmup_ratio}",
        "photon.schedule.scale_with_run=true",
        *([f"model.freeze={json.dumps(list(freeze))}"] if freeze else []),
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


def train_once(cfg: DemoConfig, out: Path, records: Path, extra: list[str], **schedule):
    from photon.bench.memory import peak_bytes, reset_peak
    from photon.training.trainer import train

    import torch

    tc = train_config(cfg, records, out, extra, **schedule)
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


# -- grounding: what pretraining gives a released backbone ----------------------------------------
GROUNDING_FORMAT = 1  # bump when the grounding data or recipe changes, so older caches are not reused


def grounding_settings(cfg: DemoConfig) -> dict:
    """Everything the grounded weights depend on: its cache key."""
    return {"format": GROUNDING_FORMAT, "backbone": cfg.backbone, "seed": cfg.seed, "volume": list(cfg.volume),
            "volumes": cfg.grounding_volumes, "steps": cfg.grounding_steps, "lr": cfg.grounding_lr,
            "batch_size": cfg.batch_size, "warmup_ratio": cfg.warmup_ratio,
            # what the phantoms look like, so changing them in code does not reuse a stale cache
            "phantoms": {"anatomy": phantoms.ANATOMY, "hu": [phantoms.AIR, phantoms.TISSUE, phantoms.LUNG, phantoms.LESION],
                         "radius_mm": phantoms.RADIUS_MM, "noise_hu": phantoms.NOISE_HU}}


def grounding_folder(cfg: DemoConfig) -> Path:
    key = hashlib.sha256(json.dumps(grounding_settings(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.grounding_cache) / key


def ground(cfg: DemoConfig, records: Path) -> tuple[Path, dict, bool]:
    """The grounded backbone's run folder, its facts, and whether it came from the cache. A run
    that did not finish leaves no grounded.json and is trained again from the start."""
    from photon.training.plot import read_log

    folder = grounding_folder(cfg)
    done = folder / "grounded.json"
    if done.is_file():
        return folder, json.loads(done.read_text()), True
    run, seconds, peak = train_once(cfg, folder, records, NO_PRUNING, steps=cfg.grounding_steps, lr=cfg.grounding_lr)
    facts = {"settings": grounding_settings(cfg), "records": str(records),
             "training": training_facts(read_log(run.log_path), seconds, peak)}
    del run
    gc.collect()
    folder.mkdir(parents=True, exist_ok=True)
    partial = done.with_suffix(".json.tmp")
    partial.write_text(json.dumps(facts, indent=1))
    partial.replace(done)  # written last, atomically: its presence means the run is complete
    return folder, json.loads(done.read_text()), False  # as a cached run returns them


def check_grounding(cfg: DemoConfig, grounded: Path | None, region_records: Path) -> dict:
    """The starting backbone (grounded here, or pretrained: grounded None) asked about each quadrant
    of the held-out volumes, as grounding asks: its greedy accuracy next to always giving the
    commoner answer. A backbone that learned the regions scores above that prior; one that learned
    only the answer template scores at it."""
    from photon.wrapping import open_model

    loaded = (open_model(checkpoint_dir=str(grounded)) if grounded else open_model(cfg.backbone)).loaded
    scored = evaluate(loaded, region_records, cfg, "grounded", prune=False)
    answers = Counter(json.loads(line)["messages"][-1]["content"] for line in region_records.read_text().splitlines())
    del loaded
    gc.collect()
    return {"cases": scored["cases"], "region_accuracy": scored["accuracy"],
            "region_prior": max(answers.values()) / sum(answers.values()), "predictions": scored["predictions"]}


def pretrained_facts(name: str) -> dict:
    """What the starting backbone brings: for the shipped demo backbone, how it was pretrained (its
    last held-out check); for others, only the name."""
    from photon.demo import backbone

    if name != backbone.NAME:
        return {"backbone": name, "pretrained": None}
    facts = backbone.facts_of()
    last = facts["checks"][-1]
    return {"backbone": name, "pretrained": {"weights": str(backbone.WEIGHTS), "steps": last["step"], "seconds": last["seconds"],
                                             "held_out": last["held_out"], "settings": facts["settings"]}}


def mix_replay(questions: Path, grounding: Path, share: float, seed: int) -> Path:
    """The finetuning set: every question record plus grounding descriptions making up `share` of
    the whole, so finetuning on questions does not wash out what grounding taught."""
    if not 0 <= share < 1:
        raise PhotonError(f"replay must be a share in [0, 1), got {share}")
    asked = questions.read_text().splitlines()
    described = grounding.read_text().splitlines()
    n = min(len(described), round(len(asked) * share / (1 - share)))
    picked = np.random.default_rng([seed, 19]).choice(len(described), size=n, replace=False)
    path = questions.with_name("finetune.jsonl")
    path.write_text("".join(line + "\n" for line in asked + [described[i] for i in sorted(picked)]))
    return path


# -- scoring ----------------------------------------------------------------------------------
def coverage(selection: dict | None, meta: dict) -> tuple[float, float] | None:
    """(kept share of the question's relevant tokens, kept share of the body's and those tokens),
    or None for a question with no relevant tokens (counting an empty volume). The second is what
    a selection blind to the question covers at the same size; tokens mostly of air are left out
    of it, so preferring body to air lifts neither figure."""
    if selection is None:
        return None
    keep = np.asarray(selection["keep"], dtype=bool)
    grid = selection["grids"][0]
    grid = (grid["t"], grid["h"], grid["w"])
    relevant = phantoms.to_token_grid(phantoms.relevant_voxels(meta), grid).reshape(-1)
    if not relevant.any():
        return None
    pool = relevant | phantoms.body_tokens(tuple(meta["shape"]), grid).reshape(-1)
    return float(keep[relevant].mean()), float(keep[pool].mean())


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
    """Greedy answers for every test record; accuracy, kept tokens, coverage and prefill time; and,
    with cfg.closed_scoring, each closed question scored by its likeliest allowed answer."""
    from tqdm import tqdm

    from photon.bench.memory import peak_bytes, reset_peak
    from photon.core.digests import Digests
    from photon.evaluation.likelihood import choose_answer
    from photon.inference import generate_batch, prediction_line, record_digest, run_settings, unpruned
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
    with context, torch.no_grad(), Digests() as digests:
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
                choices = phantoms.CHOICES.get(entry.meta["kind"])
                closed = None
                if cfg.closed_scoring and choices:
                    chosen, _ = choose_answer(loaded, dataset.load_sample(i), choices)
                    closed = normalise(chosen) == normalise(reference)
                rows.append({
                    "kind": entry.meta["kind"], "correct": normalise(result.answer) == normalise(reference),
                    "closed_correct": closed,
                    "outside": None if not choices else normalise(result.answer) not in {normalise(c) for c in choices},
                    "n_visual": result.n_visual, "n_kept": result.n_kept, "prefill_s": result.prefill_s,
                    "coverage": None if covered is None else covered[0], "blind": None if covered is None else covered[1],
                    "llm_prefill_flops": flops.prefill(dims, length, kept_length, layer, logits=1),
                })
                lines.append(prediction_line(entry, result, run_fields, settings, record_digest(entry, digests)))
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
        # Closed questions scored as closed: the likeliest allowed answer (None where not scored).
        "closed_accuracy": mean(float(r["closed_correct"]) for r in rows if r["closed_correct"] is not None),
        "closed_accuracy_by_kind": {k: mean(float(r["closed_correct"]) for r in rows if r["kind"] == k and r["closed_correct"] is not None)
                                    for k in phantoms.KINDS},
        # The share of free answers that are none of the allowed ones ("anterior: lesion.", "ion").
        "outside_share": mean(float(r["outside"]) for r in rows if r["outside"] is not None),
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


def prior_accuracy(train_records: Path, test_records: Path) -> tuple[float, dict[str, float | None]]:
    """Accuracy of answering each kind of question with its most common training answer (what a
    model that ignores the volume can reach): overall, and per kind."""
    def read(path):
        return [json.loads(line) for line in Path(path).read_text().splitlines()]

    answers = {kind: Counter() for kind in phantoms.KINDS}
    for r in read(train_records):
        answers[r["meta"]["kind"]][r["messages"][-1]["content"]] += 1
    common = {kind: counts.most_common(1)[0][0] if counts else "" for kind, counts in answers.items()}
    hits = [(r["meta"]["kind"], common[r["meta"]["kind"]] == r["messages"][-1]["content"]) for r in read(test_records)]
    by_kind = {}
    for kind in phantoms.KINDS:
        mine = [hit for k, hit in hits if k == kind]
        by_kind[kind] = sum(mine) / len(mine) if mine else None
    return sum(hit for _, hit in hits) / len(hits), by_kind


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


def pick_quadrant_case(test_records: Path) -> dict:
    """A held-out volume whose answer differs by quadrant: one or two lesions (else the first)."""
    rows = [json.loads(line) for line in test_records.read_text().splitlines()]
    return next((r for r in rows if 1 <= len(r["meta"]["lesions"]) <= 2), rows[0])


def ask_each_region(loaded, cfg: DemoConfig, case: dict, records: Path) -> tuple[Any, list]:
    """One volume (a test record) asked whether each quadrant holds a lesion, in one batch:
    (the dataset of those four records, written to `records`, and the four answers)."""
    import torch

    from photon.inference import generate_batch

    lines = []
    for region in phantoms.QUADRANTS:
        held = region in {lesion["quadrant"] for lesion in case["meta"]["lesions"]}
        question = phantoms.QUESTIONS["exists"].format(region=region)
        lines.append(json.dumps({
            "id": f"{case['id']}/{region.replace(' ', '-')}", "videos": case["videos"],
            "messages": [{"role": "user", "content": "<video>" + question}, {"role": "assistant", "content": "yes" if held else "no"}],
            "meta": {**case["meta"], "kind": "exists", "region": region},
        }) + "\n")
    records.write_text("".join(lines))
    dataset = phantom_dataset(loaded, records, cfg, train=False)
    loaded.model.eval()
    loaded.model._photon.plan = None
    with torch.no_grad():
        results = generate_batch(loaded, loaded.encoder.collate([dataset[i] for i in range(len(dataset))]), cfg.max_new_tokens)
    return dataset, results


def mean_pairwise_jaccard(keeps: list[np.ndarray]) -> float | None:
    """Mean Jaccard index over every pair of kept sets (1: the same tokens whatever was asked)."""
    pairs = [(a, b) for n, a in enumerate(keeps) for b in keeps[n + 1:]]
    scores = [float((a & b).sum() / (a | b).sum()) if (a | b).any() else 1.0 for a, b in pairs]
    return sum(scores) / len(scores) if scores else None


def region_jaccard(loaded, cfg: DemoConfig, test_records: Path) -> dict | None:
    """Whether the selection follows the question: each of the first cfg.jaccard_volumes test
    volumes asked about each quadrant; the mean pairwise Jaccard of the four kept sets."""
    if cfg.jaccard_volumes < 1:
        return None
    rows = [json.loads(line) for line in test_records.read_text().splitlines()][: cfg.jaccard_volumes]
    per_volume = []
    for case in rows:
        _, results = ask_each_region(loaded, cfg, case, test_records.with_name("regions-asked.jsonl"))
        if any(r.selection is None for r in results):
            return None
        per_volume.append(mean_pairwise_jaccard([np.asarray(r.selection["keep"], dtype=bool) for r in results]))
    return {"mean": sum(per_volume) / len(per_volume), "min": min(per_volume), "max": max(per_volume),
            "volumes": len(per_volume)}


def draw_four_quadrants(loaded, cfg: DemoConfig, test_records: Path, path: Path) -> tuple[str, float | None]:
    """One test volume asked about each quadrant in turn, the kept tokens side by side (one row per
    question): the selection should move with the question. Returns the picture and the four kept
    sets' mean pairwise Jaccard."""
    from PIL import Image

    from photon.inference import load_inputs
    from photon.visualize import draw_medium, token_grids

    dataset, results = ask_each_region(loaded, cfg, pick_quadrant_case(test_records), test_records.with_name("quadrants.jsonl"))
    frames = load_inputs([path for _, path in dataset.entries[0].media], ct_options(cfg))[0].frames
    panels = []
    for entry, result in zip(dataset.entries, results):
        keep = token_grids(result.selection)[0]
        region = phantoms.to_token_grid(phantoms.relevant_voxels(entry.meta), keep.shape)
        title = (f"{entry.meta['region']}? reference {entry.messages[-1]['content']}, answer {result.answer!r}; "
                 f"kept {result.n_kept}/{result.n_visual}")
        panels.append(draw_medium(frames, keep, temporal_patch=loaded.encoder.geometry.temporal_patch_size,
                                  title=title, outline=region))
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height
    sheet.save(path, format="PNG")
    return str(path), mean_pairwise_jaccard([np.asarray(r.selection["keep"], dtype=bool) for r in results])


# -- the pruners side by side ---------------------------------------------------------------------
CURVE_NAMES = {"photon": "zero-shot ITS"}  # what the plot and table call a pruner run training-free
AT_PHOTON_LAYER = ("photon", "random")  # these select at Photon's layer; the others where their papers do
CURVE_FIELDS = ("keep_ratio", "accuracy", "closed_accuracy", "accuracy_by_kind", "outside_share",
                "relevant_coverage", "blind_coverage", "predictions")


def pruner_curve(loaded, cfg: DemoConfig, test_records: Path, layer: int, trained: dict) -> dict | None:
    """Accuracy against the kept fraction for each of cfg.curve_pruners on the finetuned unpruned
    model (training-free), trained Photon as one point: {"rows": [...], "photon": {...}}."""
    import photon

    if not cfg.curve_pruners or not cfg.curve_keep:
        return None
    rows = []
    for keep in cfg.curve_keep:
        for pruner in cfg.curve_pruners:
            photon.attach(loaded.model, pruner=pruner, mode="zero_shot", keep_ratio=keep,
                          **({"layer": layer} if pruner in AT_PHOTON_LAYER else {}))
            scored = evaluate(loaded, test_records, cfg, f"curve-{pruner}@{keep:g}", prune=True)
            rows.append({"pruner": CURVE_NAMES.get(pruner, pruner), "keep": keep, "layer": loaded.model._photon.layer,
                         **{k: scored[k] for k in CURVE_FIELDS}})
    return {"rows": rows, "photon": {k: trained.get(k) for k in CURVE_FIELDS}}


def write_curve_plot(curve: dict, path: Path, prior: float | None = None) -> Path:
    """Accuracy (free answers, solid; closed scoring, dotted) against the kept fraction, one
    line per pruner, trained Photon as a star; the answer prior as a grey line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    names = list(dict.fromkeys(r["pruner"] for r in curve["rows"]))
    for n, name in enumerate(names):
        mine = sorted((r for r in curve["rows"] if r["pruner"] == name), key=lambda r: r["keep_ratio"])
        xs = [r["keep_ratio"] for r in mine]
        axis.plot(xs, [r["accuracy"] for r in mine], marker="o", color=f"C{n}", label=name)
        if all(r["closed_accuracy"] is not None for r in mine):
            axis.plot(xs, [r["closed_accuracy"] for r in mine], linestyle=":", marker=".", color=f"C{n}")
    point = curve["photon"]
    if point.get("keep_ratio") is not None:
        axis.plot([point["keep_ratio"]], [point["accuracy"]], marker="*", markersize=14, color="black", linestyle="none",
                  label="Photon (trained)")
        if point.get("closed_accuracy") is not None:
            axis.plot([point["keep_ratio"]], [point["closed_accuracy"]], marker="*", markersize=9, color="grey",
                      linestyle="none", label="Photon (trained), closed scoring")
    if prior is not None:
        axis.axhline(prior, color="grey", linewidth=0.8, linestyle="--", label="answer prior")
    axis.set_xlabel("fraction of visual tokens kept")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title("pruners on the finetuned unpruned model, held-out phantoms\n"
                   "solid: free answers; dotted: the likeliest allowed answer", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# -- where pruning pays: the same comparison on a larger random-weight model ----------------------
def efficiency(cfg: DemoConfig, keep_ratio: float, layer: int) -> dict | None:
    """`photon bench` on the efficiency_size model (random weights: time does not depend on them)
    at Photon's measured keep ratio and selection layer: stock and Photon side by side."""
    if not cfg.efficiency_size:
        return None
    from tqdm import tqdm

    from photon.bench.harness import BenchOptions, run_bench
    from photon.bench.models import ModelSpec

    options = BenchOptions(
        model=ModelSpec(size=cfg.efficiency_size, seed=cfg.seed), pruners=("photon",), keep=(round(keep_ratio, 3),),
        visual_tokens=cfg.efficiency_visual_tokens, batch=1, new_tokens=cfg.max_new_tokens,
        repeats=cfg.timing_rounds, layer=layer, memory=False,
    )
    bar = tqdm(desc=f"time {cfg.efficiency_size} model", unit="step", disable=not cfg.progress)

    def progress(message, step, total):
        bar.total = total
        bar.set_postfix_str(message[:40])
        bar.update(step - bar.n)

    result = run_bench(options, progress)
    bar.close()
    stock, pruned = result["configurations"]
    times = lambda config: {k: 1000 * v[options.statistic] for k, v in config["times"].items()}  # noqa: E731 (ms)
    return {
        "model": result["model"]["description"], "visual_tokens": result["input"]["visual_tokens_per_sample"][0],
        "keep_ratio": pruned["keep_ratio"], "layer": pruned["layer"], "kept_tokens": pruned["kept_tokens"][0],
        "ms": {"unpruned": times(stock), "photon": times(pruned)},
        "ratios": pruned["ratios"], "ideal_ratios": pruned["ideal_ratios"],
    }


# -- the whole demo ----------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict:
    import photon
    from photon.training.plot import plot_training, read_log

    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    say(f"[1/6] writing {cfg.n_train} training and {cfg.n_test} test phantoms and {cfg.grounding_volumes} described "
        f"ones ({'x'.join(map(str, cfg.volume))}) to {data}")
    train_records = phantoms.write_split(data, "train", cfg.n_train, cfg.seed, tuple(cfg.volume))
    test_records = phantoms.write_split(data, "test", cfg.n_test, cfg.seed, tuple(cfg.volume))
    ground_records = phantoms.write_grounding(data, cfg.grounding_volumes, cfg.seed, tuple(cfg.volume))
    finetune_records = mix_replay(train_records, ground_records, cfg.replay, cfg.seed)
    runs: dict[str, dict] = {}
    pictures: list[str] = []

    region_records = phantoms.write_region_questions(test_records)
    if cfg.grounding_steps > 0:
        grounded = grounding_folder(cfg)
        say(f"[2/6] grounding {cfg.backbone} on region-wise descriptions ({cfg.grounding_steps} steps of {cfg.batch_size}), "
            f"cached in {grounded}")
        grounded, grounding, cached = ground(cfg, ground_records)
        if cached:
            say(f"      reused the grounded backbone in {grounded} (same settings; delete the folder to train it again)")
        grounding.update(folder=str(grounded), cached=cached)
        start = [f"model.checkpoint={grounded}"]
    else:
        say(f"[2/6] starting from {cfg.backbone} as loaded (no grounding stage: grounding_steps=0)")
        grounded, grounding, start = None, pretrained_facts(cfg.backbone), []
    grounding["check"] = check_grounding(cfg, grounded, region_records)

    say(f"[3/6] finetuning the starting backbone without pruning ({cfg.steps} steps of {cfg.batch_size})")
    run, seconds, peak = train_once(cfg, out / "runs" / "unpruned", finetune_records, NO_PRUNING + start, freeze=cfg.freeze)
    runs["unpruned"] = {"training": training_facts(read_log(run.log_path), seconds, peak)}
    base = release(run)
    del run

    say(f"[4/6] finetuning the starting backbone with Photon phase 2 (stages full / soft / hard / flip scaled to {cfg.steps} steps)")
    run, seconds, peak = train_once(cfg, out / "runs" / "photon", finetune_records, start + [f"photon.{o}" for o in cfg.photon],
                                    freeze=cfg.freeze)
    log = read_log(run.log_path)
    pruned_steps = {r["step"] for r in log if r["stage"] in PRUNED_STAGES}
    runs["photon"] = {"training": training_facts(log, seconds, peak)}
    trained = release(run)
    retention = plot_training(run.log_path, out / "retention.png", window=max(1, cfg.steps // 20))
    del run
    layer = trained.model._photon.layer

    say("[5/6] scoring the held-out cases and timing the models side by side")
    runs["unpruned"].update(evaluate(base, test_records, cfg, "unpruned", prune=False))
    timed = [Timed("unpruned", base, prune=False, train=True)]
    if cfg.zero_shot:
        # Training-free ITS on the unpruned run's model (grounded, then finetuned), at Photon's layer.
        photon.attach(base.model, mode="zero_shot", layer=layer)
        drawer = CaseDrawer(base, cfg, out, "zero-shot")
        runs["zero-shot ITS"] = {"training": None, **evaluate(base, test_records, cfg, "zero-shot", prune=True, on_case=drawer)}
        runs["zero-shot ITS"]["region_jaccard"] = region_jaccard(base, cfg, test_records)
        pictures += drawer.written
        timed.append(Timed("zero-shot ITS", base, prune=True, train=False))
    drawer = CaseDrawer(trained, cfg, out, "photon")
    runs["photon"].update(evaluate(trained, test_records, cfg, "photon", prune=True, on_case=drawer))
    pictures += drawer.written
    quadrants, quadrants_jaccard = draw_four_quadrants(trained, cfg, test_records, out / "quadrants-photon.png")
    runs["photon"]["region_jaccard"] = region_jaccard(trained, cfg, test_records)
    timed.insert(1, Timed("photon", trained, prune=True, train=True))
    for label, timing in time_side_by_side(timed, train_records, test_records, cfg).items():
        runs[label]["timing"] = timing
    if cfg.random_control:
        # The blind control: the same trained model, tokens kept at random at Photon's own rate, layer
        # and cache rule.
        cache = trained.model._photon.config.cache
        photon.attach(trained.model, pruner="random", keep_ratio=runs["photon"]["keep_ratio"], layer=layer, cache=cache)
        runs["random"] = {"training": None, "timing": None, **evaluate(trained, test_records, cfg, "random", prune=True)}
    prior, prior_by_kind = prior_accuracy(train_records, test_records)
    curve = pruner_curve(base, cfg, test_records, layer, runs["photon"])
    curve_picture = write_curve_plot(curve, out / "pruners.png", prior) if curve else None
    del base, trained
    gc.collect()

    if cfg.efficiency_size:
        say(f"[6/6] timing unpruned and Photon on the {cfg.efficiency_size} random-weight model at "
            f"{cfg.efficiency_visual_tokens} visual tokens (keep {runs['photon']['keep_ratio']:.2f}, layer {layer})")
    else:
        say("[6/6] no larger model timed (efficiency_size is empty)")
    scaled = efficiency(cfg, runs["photon"]["keep_ratio"], layer)
    result = {
        "settings": dataclasses.asdict(cfg),
        "grounding": grounding,
        "runs": runs,
        "efficiency": scaled,
        "answer_prior_accuracy": prior,
        "answer_prior_by_kind": prior_by_kind,
        "pruned_steps": [min(pruned_steps), max(pruned_steps)] if pruned_steps else None,
        "quadrants_jaccard": quadrants_jaccard,  # the quadrant picture's four kept sets (Photon)
        "pruner_curve": curve,
        "pictures": {"kept_tokens": pictures, "quadrants": quadrants, "retention": str(retention),
                     "pruners": None if curve_picture is None else str(curve_picture)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    from photon.demo.report import targets

    result["targets"] = targets(result)
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    return result
