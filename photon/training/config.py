"""The training config: the run, the model, the data, the optimiser, DeepSpeed, and Photon's own.

configs/train/phase1.yaml and phase2.yaml are merged over these defaults; every key is in
docs/config.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from photon.core.config import PhotonConfig
from photon.core.errors import PhotonError


@dataclass
class ModelConfig:
    backbone: str = "qwen2.5-vl-tiny"  # a registered name or a checkpoint folder
    checkpoint: str | None = None  # start from a Photon checkpoint folder (photon attach --save, or a training run's)
    volume_embedding: str | None = None  # install the Photon 3D patch embedding: inflate | random; null: keep the backbone's
    attn_implementation: str | None = None  # null: sdpa (flash_attention_2 with the flash extra on GPU)
    gradient_checkpointing: bool = False
    # Parameter names (fnmatch patterns) that stay frozen, e.g. ["lm_head.*", "*.embed_tokens.*"]:
    # the vocabulary matrices are most of a small model's parameters and of its optimizer's work.
    freeze: list[str] = field(default_factory=list)


@dataclass
class TrainDataConfig:
    train: str = ""  # records JSONL (docs/records.md)
    cache_dir: str | None = None  # preprocessed volumes are cached here, so epochs do not resample again
    strict: bool = False  # stop at the first bad record instead of reporting and skipping it
    num_workers: int = 0
    shuffle: bool = True
    media: dict[str, Any] = field(default_factory=dict)  # per-modality loader options, e.g. {ct: {size: [28, 112, 112]}}


@dataclass
class OptimConfig:
    lr: float = 1e-5
    vit_lr: float = 5e-6  # the vision tower's learning rate (phase 2)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # cosine | constant (both after linear warm-up)
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    phase: int = 2  # 1: only the 3D patch embedding trains, CE only; 2: everything, with ITS/SGP
    output_dir: str = "runs/phase2"
    max_steps: int = 10000  # optimiser steps
    micro_batch_size: int = 1  # per process
    grad_accum: int = 1
    save_every: int = 500  # optimiser steps between checkpoints (and one at the end)
    keep_last: int = 3  # checkpoints kept
    log_every: int = 1
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU | bf16 | fp32
    progress: bool = True


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    preset: str | None = None  # a DeepSpeed YAML/JSON (configs/deepspeed/) merged under Photon's settings
    offload_optimizer: bool = False


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    photon: PhotonConfig = field(default_factory=PhotonConfig)


def check_train_config(cfg: Any) -> None:
    """Values a run cannot use, named with what is allowed, before anything loads (cfg: a
    TrainConfig or its merged DictConfig)."""
    at_least_one = ("run.max_steps", "run.save_every", "run.keep_last", "run.grad_accum", "run.micro_batch_size", "run.log_every")
    for key in at_least_one:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not isinstance(value, int) or value < 1:
            raise PhotonError(f"{key}={value!r}: expected a whole number of at least 1")
    choices = {"run.phase": (1, 2), "run.precision": ("auto", "bf16", "fp32"), "optim.schedule": ("cosine", "constant"),
               "deepspeed.zero_stage": (0, 1, 2, 3)}
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise PhotonError(f"{key}={value!r}: expected one of {', '.join(map(str, allowed))}")
    for key in ("optim.lr", "optim.vit_lr"):
        value = getattr(cfg.optim, key.split(".")[1])
        if not value >= 0:
            raise PhotonError(f"{key}={value!r}: expected a learning rate of at least 0")
    if not 0 <= cfg.optim.warmup_ratio < 1:
        raise PhotonError(f"optim.warmup_ratio={cfg.optim.warmup_ratio!r}: expected a fraction in [0, 1)")
