"""Wall-clock phases of one generate() call and of one training step.

Forward hooks time each call of the vision encoder and of the top model, synchronising the
device first, so one generate() yields: vision-encoder time, prefill (the first model call:
the LLM and its selection; generate() encodes media before it), decode time per token (the
later calls) and the end-to-end time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from statistics import fmean

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CallTimes:
    """Seconds spent in each call of a module, while installed."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device = device
        self.durations: list[float] = []
        self._start: list[float] = []
        self._handles = [
            module.register_forward_pre_hook(self._begin),
            module.register_forward_hook(self._end),
        ]

    def _begin(self, module, args):
        synchronize(self.device)
        self._start.append(time.perf_counter())

    def _end(self, module, args, output):
        synchronize(self.device)
        self.durations.append(time.perf_counter() - self._start.pop())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def timing(module: torch.nn.Module, device: torch.device):
    times = CallTimes(module, device)
    try:
        yield times
    finally:
        times.remove()


def generate(model, inputs: dict, new_tokens: int) -> None:
    """Greedy generate() of exactly new_tokens tokens (an early end-of-text would skew decode)."""
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def time_generate(model, vision_tower: torch.nn.Module, inputs: dict, new_tokens: int) -> dict[str, float]:
    """One generate() split into phases (seconds)."""
    device = next(model.parameters()).device
    with timing(vision_tower, device) as vision, timing(model, device) as calls:
        synchronize(device)
        start = time.perf_counter()
        generate(model, inputs, new_tokens)
        synchronize(device)
        total = time.perf_counter() - start
    return {
        "vision_s": sum(vision.durations),
        "prefill_s": calls.durations[0],
        "decode_s_per_token": fmean(calls.durations[1:]) if len(calls.durations) > 1 else float("nan"),
        "generate_s": total,
    }


def train_step(model, inputs: dict) -> None:
    """Forward with labels, backward; gradients dropped (no optimizer: the step's compute only)."""
    model.train()
    try:
        loss = model(**inputs).loss
        loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def time_train_step(model, inputs: dict) -> float:
    device = next(model.parameters()).device
    synchronize(device)
    start = time.perf_counter()
    train_step(model, inputs)
    synchronize(device)
    return time.perf_counter() - start
