"""Settings of `photon demo` (every key is in docs/config.md; override with KEY=VALUE)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # data, training runs, pictures and demo.json go here
    seed: int = 0  # the phantom set, the data order and the model's initial weights
    backbone: str = "qwen2.5-vl-tiny"  # any registered backbone; the default needs no download
    n_train: int = 256  # phantom cases to train on
    n_test: int = 64  # held-out cases to score
    # Model input (D, H, W): 16 axial slices of 112 x 112 make 8 x 4 x 4 = 128 visual tokens on
    # Qwen2.5-VL (each quadrant 32). Larger slices work too but learn slower and cost more per step.
    volume: list[int] = field(default_factory=lambda: [16, 112, 112])
    steps: int = 500  # optimiser steps per run; Photon's stage boundaries scale to this
    batch_size: int = 4
    lr: float = 3.0e-3  # a random-initialised tiny model needs a far larger rate than a released one
    warmup_ratio: float = 0.05
    eval_batch_size: int = 8
    timing_rounds: int = 5  # interleaved rounds timing prefill and a training step (the fastest counts)
    max_new_tokens: int = 4  # the longest answer ("right posterior") is 2-3 tokens
    # Photon settings for the pruned run, over the paper's defaults. The paper's predictor starts at
    # theta ~ 0.006 (bias -5) and needs thousands of steps to rise; a demo-length run starts it at
    # theta ~ 0.45 (bias 0) so the band and SGP have a threshold to shape. [] runs the paper's init.
    photon: list[str] = field(default_factory=lambda: ["selection.predictor_bias_init=0.0"])
    zero_shot: bool = True  # also score training-free ITS on the unpruned run's model
    random_control: bool = True  # also score random selection at Photon's measured keep ratio (the blind control)
    cases_to_draw: int = 4  # kept-token pictures (one per question kind, from the test set)
    progress: bool = True


# `photon demo --quick`: the same demo at a size that runs in about two minutes on 2 CPU cores.
QUICK = {"n_train": 128, "n_test": 48, "steps": 150, "volume": [8, 112, 112]}
