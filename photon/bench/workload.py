"""The synthetic prompts `photon bench` runs: a frame stack sized so the LLM sees about N
visual tokens, with an instruction after it (Photon's saliency reads the instruction)."""

from __future__ import annotations

import math

import numpy as np

from photon.adapters.qwen_inputs import model_inputs
from photon.modalities.base import Media
from photon.modalities.dataset import Sample

QUESTION = "Describe the most likely abnormality in this scan and say where it is."
ANSWER = "A small nodule in the right upper lobe, about eight millimetres across."


def token_grid(visual_tokens: int) -> tuple[int, int]:
    """(temporal steps, side in LLM tokens): about 256 tokens per step, steps x side^2 ~ N."""
    if visual_tokens < 1:
        raise ValueError(f"visual tokens must be >= 1, got {visual_tokens}")
    steps = max(1, round(visual_tokens / 256))
    return steps, max(1, round(math.sqrt(visual_tokens / steps)))


def samples(geometry, visual_tokens: int, batch: int, *, train: bool, seed: int = 0) -> list[Sample]:
    """batch prompts with the same shape and different pixels (so selections differ)."""
    steps, side = token_grid(visual_tokens)
    frames = steps * geometry.temporal_patch_size
    pixels = side * geometry.patch_size * geometry.merge_size
    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        media = Media(
            frames=rng.random((frames, geometry.in_channels, pixels, pixels), dtype=np.float32),
            kind="video",
            source=f"bench-{i}",
            fps=1.0,
        )
        messages = [{"role": "user", "content": "<video>" + QUESTION}]
        if train:
            messages.append({"role": "assistant", "content": ANSWER})
        out.append(Sample(f"bench-{i}", messages, [media]))
    return out


def batches(encoder, visual_tokens: int, batch: int, *, seed: int = 0) -> tuple[dict, dict]:
    """(prompt inputs for generate, inputs with labels for a training step)."""
    prompt = model_inputs(encoder.collate([encoder.encode(s, train=False) for s in samples(encoder.geometry, visual_tokens, batch, train=False, seed=seed)]))
    prompt.pop("labels")
    train = model_inputs(encoder.collate([encoder.encode(s, train=True) for s in samples(encoder.geometry, visual_tokens, batch, train=True, seed=seed)]))
    return prompt, train
