"""Phase-2 schedule: the stage at each training step, and the seeded per-batch draws.

A step counts training forward passes; the trainer saves it in checkpoints so a resumed
run lands in the same stage and draws the same augmentations (the draws depend only on
seed and step).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from photon.core.config import ScheduleConfig

AUGMENTATIONS = (
    "permute_patches",
    "permute_patches_features",
    "zero_patches",
    "zero_features",
    "noise",
    "zeros",
)


class Stage(str, Enum):
    FULL = "full"  # no pruning, no ITP loss
    SOFT = "soft"  # visual rows of layer l's output scaled by q, full length
    HARD = "hard"  # hard drop with SGP
    FLIP = "flip"  # hard, and flip batches may be drawn


@dataclass(frozen=True)
class Schedule:
    soft_start: int = 4000
    hard_start: int = 8000
    flip_start: int = 9000

    def __post_init__(self):
        if not 0 <= self.soft_start <= self.hard_start <= self.flip_start:
            raise ValueError(
                f"schedule boundaries must satisfy 0 <= soft_start <= hard_start <= flip_start, got "
                f"{self.soft_start}, {self.hard_start}, {self.flip_start}"
            )

    def stage(self, step: int) -> Stage:
        if step < self.soft_start:
            return Stage.FULL
        if step < self.hard_start:
            return Stage.SOFT
        if step < self.flip_start:
            return Stage.HARD
        return Stage.FLIP

    @classmethod
    def from_config(cls, config: ScheduleConfig, total_steps: int | None = None) -> "Schedule":
        """Boundaries from config; with scale_with_run, as fractions of reference_steps of total_steps."""
        if not config.scale_with_run:
            return cls(config.soft_start, config.hard_start, config.flip_start)
        if not total_steps:
            raise ValueError("schedule.scale_with_run needs the run's total number of steps")
        # Integer floor of b * total / reference: the float product missed by one step (9000 x 0.407
        # is 3662.999...), moving the flip stage off the paper's 90% for such run lengths.
        return cls(*(b * total_steps // config.reference_steps for b in (config.soft_start, config.hard_start, config.flip_start)))


@dataclass(frozen=True)
class BatchPlan:
    """What one training batch does."""

    step: int
    stage: Stage
    augment: str | None = None  # one of AUGMENTATIONS: robust batch, loss is -entropy
    flip: bool = False  # flip the keep mask among visual tokens, loss is the flip loss

    @property
    def prunes(self) -> bool:
        return self.stage is not Stage.FULL

    @property
    def band(self) -> bool:
        """The band term applies from the soft stage on, on batches that are not augmented."""
        return self.prunes and self.augment is None

    @property
    def q_detached(self) -> bool:
        """Robust and flip batches must not train the threshold."""
        return self.augment is not None or self.flip


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, step)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def plan_batch(step: int, schedule: Schedule, config: ScheduleConfig) -> BatchPlan:
    """Draw the batch's augmentation and flip, reproducibly from (config.seed, step)."""
    stage = schedule.stage(step)
    gen = batch_generator(config.seed, step)
    draws = torch.rand(2, generator=gen)
    augment = None
    if draws[0] < config.robust_prob:
        probs = torch.tensor(config.augment_probs, dtype=torch.float64)
        if len(probs) != len(AUGMENTATIONS) or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"schedule.augment_probs needs {len(AUGMENTATIONS)} non-negative weights, not all zero, got {list(config.augment_probs)}")
        augment = AUGMENTATIONS[int(torch.multinomial(probs, 1, generator=gen))]
    flip = augment is None and stage is Stage.FLIP and bool(draws[1] < config.flip_prob)
    return BatchPlan(step=step, stage=stage, augment=augment, flip=flip)


def robust_augment(
    patches: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    zero_patches_keep: float = 0.2,
    zero_features_keep: float = 0.1,
) -> torch.Tensor:
    """Corrupt the flattened patch matrix (patches x patch features) one of six ways.

    noise draws uniformly between the matrix's own min and max, so it matches the range of
    whatever normalisation the processor applied.
    """
    n, f = patches.shape
    device = patches.device

    def perm(k):
        return torch.randperm(k, generator=generator).to(device)

    def keep_some(k, fraction):
        return (torch.rand(k, generator=generator) < fraction).to(device)

    if kind == "permute_patches":
        return patches[perm(n)]
    if kind == "permute_patches_features":
        return patches[perm(n)][:, perm(f)]
    if kind == "zero_patches":
        return patches * keep_some(n, zero_patches_keep).unsqueeze(1).to(patches.dtype)
    if kind == "zero_features":
        return patches * keep_some(f, zero_features_keep).unsqueeze(0).to(patches.dtype)
    if kind == "noise":
        lo, hi = patches.min(), patches.max()
        noise = torch.rand(n, f, generator=generator).to(device=device, dtype=patches.dtype)
        return lo + (hi - lo) * noise
    if kind == "zeros":
        return torch.zeros_like(patches)
    raise ValueError(f"unknown augmentation {kind!r}; expected one of {', '.join(AUGMENTATIONS)}")
