"""Settings of `photon demo` (every key is in docs/config.md; override with KEY=VALUE)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # data, training runs, pictures and demo.json go here
    seed: int = 0  # the phantom set, the data order and the model's initial weights
    # The shipped demo backbone (photon/demo/backbone.py), pretrained on phantoms of this kind by
    # `photon demo --pretrain`; any registered backbone works (qwen2.5-vl-tiny: random weights, then
    # set grounding_steps to ground it first).
    backbone: str = "qwen2.5-vl-demo"
    n_train: int = 256  # phantom cases to finetune on
    n_test: int = 64  # held-out cases to score
    # Model input (D, H, W): 16 axial slices of 112 x 112 make 8 x 4 x 4 = 128 visual tokens on
    # Qwen2.5-VL (each quadrant 32). Larger slices work too but learn slower and cost more per step.
    volume: list[int] = field(default_factory=lambda: [16, 112, 112])
    # Grounding, for a backbone that was not pretrained on phantoms: it first learns region-wise
    # descriptions of other phantoms ("left anterior: lesion. right anterior: clear. ..."); both
    # compared runs start from it. Trained once per setting and cached under grounding_cache.
    # 0 (the default) starts from the backbone as loaded. The descriptions are written either way
    # (finetuning replays a share of them).
    grounding_volumes: int = 128  # volumes described (five records each: all regions, then each)
    grounding_steps: int = 0
    grounding_lr: float = 3.0e-3
    grounding_cache: str = "runs/demo-grounding"  # <cache>/<key of the settings>/ holds the grounded model
    replay: float = 0.25  # share of each finetuning set drawn from the grounding descriptions (both runs)
    steps: int = 400  # finetuning optimiser steps per run; Photon's stage boundaries scale to this
    # Kept frozen while finetuning (both runs): the token embedding, tied to the LM head, as pretraining
    # (or grounding) left it; it is most of the model's parameters, and freezing it halves a step's time.
    freeze: list[str] = field(default_factory=lambda: ["lm_head.weight"])
    batch_size: int = 4
    # Finetuning rate of both runs (LLM, vision tower and Photon's predictor): half the pretraining's
    # peak. At 1e-3 finetuning wore the backbone down (seed 0: unpruned 0.80, "exists" at its prior;
    # 0.98 at 5e-4).
    lr: float = 5.0e-4
    warmup_ratio: float = 0.05
    eval_batch_size: int = 8
    timing_rounds: int = 5  # interleaved rounds timing prefill and a training step (the fastest counts)
    max_new_tokens: int = 4  # the longest answer ("right posterior") is 2-3 tokens
    # Photon settings for the pruned run, over the paper's defaults: the selection layer where the
    # demo backbone's questions attend to their region (2 of 8: zero-shot ITS keeping a quarter of the
    # tokens covers the region 0.22 above blind there, 0.02-0.11 at layers 1, 3, 4, less deeper; the
    # paper's floor(L/4) - 1 is 1), a retention band whose top is a half, and a predictor
    # starting at theta ~ 0.61 (bias 0.75) instead of the paper's ~ 0.006, which needs thousands of
    # steps to rise (from theta ~ 0.45, bias 0, 400 steps at 5e-4 ended at keep 0.72); and 60% of
    # the run unpruned before the soft stage (the paper's 40% left the pruned run's model far worse
    # than the unpruned one at this budget). Layers <= l keep their whole KV cache (keep_early):
    # training's one forward lets answer tokens attend to every visual token below layer l, and the
    # spec's evict_all decode does not; on this model the mismatch broke the answers' ends (seed 0:
    # "yes111", free accuracy 0.53 against 0.94 with keep_early, the same weights). Each volume
    # keeps at least 16 of its 128 visual tokens (min_keep, the highest-rho ones): without the floor
    # the predicted threshold left some volumes 3-4 tokens, and those made most of Photon's errors
    # (seed 0: 0.94 at keep 0.14 without it, 0.98 at keep 0.22 with it; 24 gave 0.98 at 0.26).
    # [] runs the paper's settings.
    photon: list[str] = field(default_factory=lambda: [
        "selection.layer=2", "selection.predictor_bias_init=0.75", "loss.band_high=0.5", "selection.cache=keep_early",
        "selection.min_keep=16",
        "schedule.soft_start=6000", "schedule.hard_start=8500", "schedule.flip_start=9500"])
    zero_shot: bool = True  # also score training-free ITS on the unpruned run's model
    random_control: bool = True  # also score random selection at Photon's measured keep ratio (the blind control)
    cases_to_draw: int = 4  # kept-token pictures (one per question kind, from the test set)
    # Closed questions (yes/no, which quadrant, how many) also scored by the likeliest allowed answer.
    closed_scoring: bool = True
    # Does the selection follow the question: this many test volumes asked about each quadrant,
    # the mean pairwise Jaccard of the four kept sets (0 skips it).
    jaccard_volumes: int = 16
    # The pruners side by side on the finetuned unpruned model: accuracy at each kept fraction
    # ("photon" is training-free ITS at Photon's layer; random too; the others at their own layers),
    # trained Photon as one point. [] in either skips it.
    curve_pruners: list[str] = field(default_factory=lambda: ["photon", "fastv", "visionzip", "divprune", "random"])
    curve_keep: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5])
    # Speed and memory where pruning pays: the same comparison on a larger random-weight model of
    # the same family (`photon bench` sizes; time does not depend on the weights), at Photon's
    # measured keep ratio and selection layer. "" skips it.
    efficiency_size: str = "small"
    efficiency_visual_tokens: int = 1024
    progress: bool = True


# `photon demo --quick`: the same demo at a size that runs in about three minutes on 2 CPU cores.
QUICK = {"n_train": 96, "n_test": 32, "steps": 80, "grounding_volumes": 48,
         "efficiency_visual_tokens": 512, "timing_rounds": 3}
