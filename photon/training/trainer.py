"""`photon train`: phase 1 and phase 2 on a DeepSpeed engine.

One process on a CPU, or many under `deepspeed`/`torchrun`, with the same code. The step that
drives the pruning schedule counts forward passes (micro steps) and is saved with every
checkpoint, as are the data position, the optimiser, the LR scheduler and every RNG.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import OmegaConf

from photon.core import compat, losses
from photon.core.config import to_object
from photon.core.errors import PhotonError
from photon.core.schedule import BatchPlan, Schedule, batch_generator, plan_batch, robust_augment
from photon.training import state as checkpoints
from photon.training.config import TrainConfig
from photon.training.distributed import World, environment_kept, init_distributed

PIXEL_KEYS = ("pixel_values", "pixel_values_videos")
MODEL_INPUT_KEYS = (
    "input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values", "image_grid_thw",
    "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
)


# -- data order ---------------------------------------------------------------------------
@dataclass
class EpochBatches:
    """Deterministic, resumable batches of indices for one rank.

    The order depends only on (seed, epoch); each rank takes every world-th index of the
    epoch's permutation (padded by wrapping so ranks stay in step), so a resumed run can start
    exactly at (epoch, batch) without touching the data it skips.
    """

    n: int
    batch_size: int
    rank: int
    world: int
    seed: int
    shuffle: bool = True

    @property
    def per_epoch(self) -> int:
        per_rank = math.ceil(self.n / self.world)
        return math.ceil(per_rank / self.batch_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world) * self.world
        order = (order * math.ceil(total / self.n))[:total]
        mine = order[self.rank :: self.world]
        return mine

    def from_step(self, micro_step: int) -> Iterator[tuple[int, list[int]]]:
        """(epoch, indices) for every micro step from micro_step on, forever."""
        epoch, offset = divmod(micro_step, self.per_epoch)
        while True:
            mine = self.epoch_indices(epoch)
            for b in range(offset, self.per_epoch):
                chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
                if len(chunk) < self.batch_size:  # ranks keep equal batch counts: wrap the last batch
                    chunk = (chunk + mine)[: self.batch_size]
                yield epoch, chunk
            epoch, offset = epoch + 1, 0


# -- the objective ------------------------------------------------------------------------
def photon_objective(out, info, plan: BatchPlan | None, cfg, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Spec section 6: (CE | robust | flip) + band, or the paper's reading (see losses.combine_objective)."""
    if plan is None:  # phase 1
        return out.loss, {"ce": float(out.loss.detach())}
    loss_cfg = cfg.photon.loss
    aligned = info.labels if info is not None and info.labels is not None else labels
    aligned = aligned[:, -out.logits.shape[1]:]  # the runtime computes logits for the answer window only
    parts: dict[str, float] = {}
    flip = None
    if plan.augment is not None:
        main = losses.robust_entropy_loss(out.logits, aligned)
        parts["robust"] = float(main.detach())
    elif plan.flip:
        flip = losses.flip_loss(out.logits, aligned, loss_cfg.flip_eps)
        parts["flip"] = float(flip.detach())
        main = out.loss
    else:
        main = out.loss
        parts["ce"] = float(main.detach())
    band = None
    if plan.band and info is not None and info.q is not None:
        band = losses.band_loss(info.q, info.vision_mask, loss_cfg.band_low, loss_cfg.band_high)
        parts["band"] = float(band.detach())
    total = losses.combine_objective(main=main, band=band, flip=flip, objective=loss_cfg.objective)
    return total, parts


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str):
    warmup = max(1, int(round(total_steps * warmup_ratio))) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    if schedule not in ("cosine", "constant"):
        raise PhotonError(f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")
    return factor


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# -- the run ------------------------------------------------------------------------------
@dataclass
class Run:
    cfg: TrainConfig
    world: World
    loaded: Any
    dataset: Any
    engine: Any = None
    schedule: Schedule | None = None
    batches: EpochBatches | None = None
    micro_step: int = 0
    opt_step: int = 0
    log_path: Path | None = None
    trainable: list = field(default_factory=list)

    @property
    def model(self):
        return self.loaded.model

    @property
    def total_micro_steps(self) -> int:
        return self.cfg.run.max_steps * self.cfg.run.grad_accum


def _load_backbone(cfg: TrainConfig, device: torch.device):
    """model.checkpoint (a Photon checkpoint, run or pointer: as saved; a model or release folder:
    in trained mode) or model.backbone (a registered name: the stock model, attached later)."""
    from photon.opening import OpenRequest, open_source, resolve_source

    text = cfg.model.checkpoint or cfg.model.backbone
    source = resolve_source(text)
    mode = None if source.meta is not None else "trained"
    request = OpenRequest(text, mode=mode, attn_implementation=cfg.model.attn_implementation or None,
                          attach=source.kind != "alias")
    loaded = open_source(source, request)
    loaded.model.to(device)
    return loaded


def freeze(model, patterns: list[str]) -> None:
    """Stop the gradient of every parameter whose name matches one of the fnmatch patterns; a
    pattern that matches nothing is an error (a typo would otherwise train what it meant to freeze).
    Tied weights answer to each of their names."""
    names = list(model.named_parameters(remove_duplicate=False))
    for pattern in patterns:
        matched = [p for n, p in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise PhotonError(f"model.freeze: {pattern!r} matches no parameter; names look like {names[0][0]!r}, {names[-1][0]!r}")
        for p in matched:
            p.requires_grad_(False)


def _prepare_model(run: Run) -> None:
    """Phase 1: 3D embedding only, no pruning. Phase 2: everything, Photon attached in trained mode.
    Either way, parameters matching model.freeze stay frozen."""
    import photon
    from photon.core.api import spec_for_model

    cfg, model = run.cfg, run.model
    adapter = spec_for_model(model).make_adapter(model)
    if cfg.model.volume_embedding:
        adapter.install_volume_embedding(model, init=cfg.model.volume_embedding, seed=cfg.run.seed)
        model.to(run.world.device)
        run.loaded.encoder.geometry = _geometry(run.loaded.encoder.geometry, model)
    if cfg.run.phase == 1:
        photon.detach(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in adapter.patch_embedding(model).parameters():
            p.requires_grad_(True)
    elif cfg.run.phase == 2:
        runtime = getattr(model, "_photon", None)
        wanted = cfg.photon.selection.layer
        if runtime is not None and wanted is not None and runtime.layer != wanted:
            runtime = None  # the config moves the selection layer: a new predictor there
        if runtime is None or runtime.config.mode != "trained":
            # A zero-shot wrapping (photon attach --save) keeps its selection layer unless the config sets one.
            keep_layer = {"layer": runtime.layer} if runtime is not None and cfg.photon.selection.layer is None else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the predictor is about to be trained
                photon.attach(model, mode="trained", config=cfg.photon, **keep_layer)
        else:
            runtime.sgp = cfg.photon.sgp
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise PhotonError(f"run.phase must be 1 or 2, got {cfg.run.phase}")
    freeze(model, cfg.model.freeze)
    if cfg.model.gradient_checkpointing:
        compat.enable_checkpointing(model, use_reentrant=False)
    model.train()
    vision_ids = {id(p) for p in adapter.vision_tower(model).parameters()}
    run.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    run.vision_ids = vision_ids


def _geometry(geometry, model):
    import dataclasses

    vision = model.config.vision_config
    return dataclasses.replace(geometry, in_channels=vision.in_channels, temporal_patch_size=vision.temporal_patch_size)


def _deepspeed_config(cfg: TrainConfig, world: World) -> dict[str, Any]:
    precision = cfg.run.precision
    if precision == "auto":
        precision = "bf16" if world.device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise PhotonError(f"run.precision must be auto, bf16 or fp32, got {precision!r}")
    ds: dict[str, Any] = {"zero_optimization": {"stage": cfg.deepspeed.zero_stage}}
    if cfg.deepspeed.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if cfg.deepspeed.preset:
        preset = Path(cfg.deepspeed.preset)
        if not preset.is_file():
            raise PhotonError(f"deepspeed.preset {preset} does not exist")
        ds = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(ds), OmegaConf.load(preset)), resolve=True)
    ds.update(
        train_micro_batch_size_per_gpu=cfg.run.micro_batch_size,
        gradient_accumulation_steps=cfg.run.grad_accum,
        train_batch_size=cfg.run.micro_batch_size * cfg.run.grad_accum * world.size,
        gradient_clipping=cfg.optim.max_grad_norm,
        bf16={"enabled": precision == "bf16"},
        zero_allow_untested_optimizer=True,
        steps_per_print=10**12,
        wall_clock_breakdown=False,
    )
    return ds


def _build_engine(run: Run) -> None:
    import deepspeed

    cfg = run.cfg
    vision = [p for _, p in run.trainable if id(p) in run.vision_ids]
    rest = [p for _, p in run.trainable if id(p) not in run.vision_ids]
    groups = [{"params": rest, "lr": cfg.optim.lr}]
    if vision and cfg.run.phase == 2:
        groups.append({"params": vision, "lr": cfg.optim.vit_lr})
    elif vision:
        groups[0]["params"] = rest + vision
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.run.max_steps, cfg.optim.warmup_ratio, cfg.optim.schedule)
    )
    ds_config = _deepspeed_config(cfg, run.world)
    run.zero_stage = ds_config["zero_optimization"]["stage"]
    engine, _, _, _ = deepspeed.initialize(
        model=run.model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    run.engine = engine


def _touch_every_parameter(run: Run) -> torch.Tensor:
    """0 x one element of each trainable parameter: every rank's backward reaches every
    parameter, so a batch without visual tokens on one rank cannot stall ZeRO's reductions."""
    if run.zero_stage >= 3:
        return torch.zeros((), device=run.world.device)
    return sum(p.reshape(-1)[0] for _, p in run.trainable) * 0.0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _augment(batch: dict[str, Any], plan: BatchPlan, cfg: TrainConfig) -> dict[str, Any]:
    generator = batch_generator(cfg.photon.schedule.seed + 1, plan.step)
    out = dict(batch)
    for key in PIXEL_KEYS:
        if key in out:
            out[key] = robust_augment(
                out[key],
                plan.augment,
                generator,
                zero_patches_keep=cfg.photon.schedule.zero_patches_keep,
                zero_features_keep=cfg.photon.schedule.zero_features_keep,
            )
    return out


def _step_metrics(run: Run, plan: BatchPlan | None, parts: dict, loss: float, seconds: float, batch: dict | None, lr: float) -> dict:
    from photon.core.losses import band_triggered

    cfg = run.cfg
    records = getattr(getattr(run.model, "_photon", None), "records", []) or []
    info = getattr(getattr(run.model, "_photon", None), "last", None)
    ratios = [r["n_kept"] / r["n_visual"] for r in records if r["n_visual"]]
    thetas = [r["theta"] for r in records if r.get("theta") is not None]
    n_samples = 0 if batch is None else int(batch["input_ids"].shape[0]) * run.world.size
    n_visual = 0 if batch is None else int((batch["mm_token_type_ids"] > 0).sum()) * run.world.size
    triggered = None
    if info is not None and info.q is not None and run.cfg.run.phase == 2:
        loss_cfg = cfg.photon.loss
        triggered = float(band_triggered(info.q, info.vision_mask, loss_cfg.band_low, loss_cfg.band_high).float().mean())
    return {
        "step": run.micro_step - 1,  # the forward pass the schedule saw (0-based)
        "opt_step": run.opt_step,
        "stage": plan.stage.value if plan else "phase1",
        "augment": plan.augment if plan else None,
        "flip_batch": plan.flip if plan else False,
        "loss": loss,
        **{f"loss_{k}": parts.get(k) for k in ("ce", "robust", "flip", "band")},
        "keep_ratio_mean": sum(ratios) / len(ratios) if ratios else None,
        "keep_ratio_min": min(ratios) if ratios else None,
        "keep_ratio_max": max(ratios) if ratios else None,
        "theta_mean": sum(thetas) / len(thetas) if thetas else None,
        "band_trigger_rate": triggered,
        "lr": lr,  # the rate this step's update used
        "samples_per_s": n_samples / seconds if seconds > 0 else None,
        "visual_tokens_per_s": n_visual / seconds if seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(run.world.device),
        "seconds": seconds,
    }


def _append_log(path: Path, row: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def _trainer_state(run: Run) -> dict[str, Any]:
    return {
        "micro_step": run.micro_step,
        "opt_step": run.opt_step,
        "world_size": run.world.size,
        "schedule": asdict(run.schedule) if run.schedule else None,
        "config": OmegaConf.to_container(OmegaConf.structured(run.cfg), resolve=True),
    }


def _save(run: Run) -> Path:
    return checkpoints.save(
        engine=run.engine,
        model=run.model,
        tokenizer=run.loaded.encoder.tokenizer,
        world=run.world,
        output_dir=run.cfg.run.output_dir,
        opt_step=run.opt_step,
        trainer_state=_trainer_state(run),
        backbone=run.loaded.backbone,
        keep_last=run.cfg.run.keep_last,
        zero_stage=run.zero_stage,
    )


def _media_options(cfg: TrainConfig, loaded) -> dict[str, dict]:
    """Loader options that fit the loaded backbone's visual geometry (a checkpoint's own backbone,
    not model.backbone), under the config's own."""
    from photon.wrapping import media_options

    return media_options(loaded, cfg.data.media)


def build_run(cfg: TrainConfig) -> Run:
    from photon.modalities.dataset import PhotonDataset

    world = init_distributed()
    torch.manual_seed(cfg.run.seed + world.rank)
    if not cfg.data.train:
        raise PhotonError("data.train is empty: give a records JSONL (docs/records.md), e.g. data.train=train.jsonl")
    loaded = _load_backbone(cfg, world.device)
    run = Run(cfg=cfg, world=world, loaded=loaded, dataset=None)
    _prepare_model(run)
    run.dataset = PhotonDataset(
        cfg.data.train,
        encoder=loaded.encoder,
        cache_dir=cfg.data.cache_dir,
        strict=cfg.data.strict,
        media_options=_media_options(cfg, loaded),
        train=True,
    )
    if len(run.dataset) == 0:
        raise PhotonError(f"{cfg.data.train}: no usable records")
    run.batches = EpochBatches(len(run.dataset), cfg.run.micro_batch_size, world.rank, world.size, cfg.run.seed, cfg.data.shuffle)
    if cfg.run.phase == 2:
        run.schedule = Schedule.from_config(cfg.photon.schedule, run.total_micro_steps)
    _build_engine(run)
    return run


def check_output_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """Before anything loads: a folder that holds a run is continued (--resume) or replaced
    (--overwrite) only when asked, never silently."""
    out = Path(cfg.run.output_dir)
    if resume and overwrite:
        raise PhotonError("--resume and --overwrite contradict each other; give one")
    found = checkpoints.holds_run(out)
    if resume:
        if not checkpoints.checkpoints_dir(out).is_dir():
            raise PhotonError(f"--resume: no checkpoint under {checkpoints.checkpoints_dir(out)}; run without --resume to start")
        checkpoints.latest_complete(out)  # none complete: said now, before anything loads
    elif found and not overwrite:
        raise PhotonError(
            f"run.output_dir {out} already holds a run ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to delete it and start again, or choose another run.output_dir"
        )


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Run:
    from tqdm import tqdm

    from photon.training.distributed import barrier

    check_output_dir(cfg, resume=resume, overwrite=overwrite)
    with environment_kept():
        run = build_run(cfg)
        out = Path(cfg.run.output_dir)
        run.log_path = out / "log.jsonl"
        if run.world.main and overwrite:
            checkpoints.clear_run(out)
        if resume:
            folder, notes = checkpoints.latest_complete(out)
            for note in notes if run.world.main else ():
                print(f"photon train: --resume: {note}", file=sys.stderr)
            state = checkpoints.restore(run.engine, folder, run.world)
            run.micro_step, run.opt_step = state["micro_step"], state["opt_step"]
            if run.world.main:
                checkpoints.truncate_log(run.log_path, run.micro_step)
        if run.world.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        barrier()
        loader = torch.utils.data.DataLoader(
            run.dataset,
            batch_sampler=[indices for _, indices in _bounded(run)],
            collate_fn=run.dataset.collate,
            num_workers=cfg.data.num_workers,
        )
        bar = tqdm(total=cfg.run.max_steps, initial=run.opt_step, desc=f"phase {cfg.run.phase}", unit="step",
                   disable=not (cfg.run.progress and run.world.main))
        for batch in loader:
            stepped = _micro_step(run, batch)
            if stepped:
                bar.update(1)
                if run.opt_step % cfg.run.save_every == 0 or run.opt_step == cfg.run.max_steps:
                    _save(run)
            if run.opt_step >= cfg.run.max_steps:
                break
        bar.close()
    return run


def _bounded(run: Run):
    """The batches this rank still has to run."""
    remaining = run.total_micro_steps - run.micro_step
    iterator = run.batches.from_step(run.micro_step)
    return [next(iterator) for _ in range(max(0, remaining))]


def _micro_step(run: Run, batch: dict | None) -> bool:
    """One forward/backward; True when it completed an optimiser step."""
    cfg = run.cfg
    plan = plan_batch(run.micro_step, run.schedule, cfg.photon.schedule) if cfg.run.phase == 2 else None
    runtime = getattr(run.model, "_photon", None)
    if runtime is not None:
        runtime.plan = plan
    start = time.perf_counter()
    lr = run.engine.get_lr()[0]
    if batch is None:  # every record of this batch failed to load: keep step with the other ranks
        loss, parts = _touch_every_parameter(run), {}
    else:
        batch = _to_device(batch, run.world.device)
        if plan is not None and plan.augment is not None:
            batch = _augment(batch, plan, cfg)
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        # The paper adds the flip loss to the usual term: a flip batch then needs both forwards.
        plans = [plan]
        if plan is not None and plan.flip and cfg.photon.loss.objective == "paper":
            plans = [dataclasses.replace(plan, flip=False), plan]
        loss, parts = _touch_every_parameter(run), {}
        for each in plans:
            if runtime is not None:
                runtime.plan = each
            out = run.engine(**inputs)
            info = runtime.last if runtime is not None else None
            if len(plans) > 1 and each.flip:  # the paper's added flip term
                aligned = info.labels if info is not None and info.labels is not None else batch["labels"]
                aligned = aligned[:, -out.logits.shape[1]:]
                term = losses.flip_loss(out.logits, aligned, cfg.photon.loss.flip_eps)
                term_parts = {"flip": float(term.detach())}
            else:
                term, term_parts = photon_objective(out, info, each, cfg, batch["labels"])
            loss = loss + term
            parts.update(term_parts)
    run.engine.backward(loss)
    run.engine.step()
    seconds = time.perf_counter() - start
    run.micro_step += 1
    stepped = run.micro_step % cfg.run.grad_accum == 0
    run.opt_step += int(stepped)
    if run.world.main and run.micro_step % cfg.run.log_every == 0:
        _append_log(run.log_path, _step_metrics(run, plan, parts, float(loss.detach()), seconds, batch, lr))
    return stepped


def load_train_config(path: str | None, overrides: list[str]) -> TrainConfig:
    from photon.core.config import load_config
    from photon.training.config import check_train_config

    cfg = to_object(load_config(path, overrides, TrainConfig))
    check_train_config(cfg)
    return cfg
