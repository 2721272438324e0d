"""Wall-clock phases of one generate() call and of one training step.

Forward hooks time each call of the vision encoder and of the top model, synchronising the
device first, so one generate() yields: vision-encoder time, prefill (the first model call:
the LLM and its selection; generate() encodes media before it), decode time per token (the
later calls) and the end-to-end time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from statistics import fmean

import torch

from photon.core import compat


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CallTimes:
    """Seconds spent in each call of a module, while installed (the first `limit` calls only,
    when given: the hooks then come off, so later calls run without their device syncs).

    sync=False, for modules timed inside a timed call (decoder layers inside the prefill): on
    CUDA each edge records an event instead of synchronising, so the GPU's queue is left as it
    would run untimed; durations are read once the events have completed."""

    def __init__(self, module: torch.nn.Module, device: torch.device, limit: int | None = None, sync: bool = True):
        self.device = device
        self.limit = limit
        self.events = not sync and device.type == "cuda"
        self._spans: list[tuple] = []
        self._open: list = []
        self._handles = [
            module.register_forward_pre_hook(self._begin),
            module.register_forward_hook(self._end),
        ]

    def _stamp(self):
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)
        return time.perf_counter()

    def _begin(self, module, args):
        self._open.append(self._stamp())

    def _end(self, module, args, output):
        self._spans.append((self._open.pop(), self._stamp()))
        if self.limit is not None and len(self._spans) >= self.limit:
            self.remove()

    @property
    def durations(self) -> list[float]:
        if self.events:
            for _, end in self._spans:
                end.synchronize()
            return [start.elapsed_time(end) / 1e3 for start, end in self._spans]
        return [end - start for start, end in self._spans]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def timing(module: torch.nn.Module, device: torch.device, limit: int | None = None):
    times = CallTimes(module, device, limit)
    try:
        yield times
    finally:
        times.remove()


def generate(model, inputs: dict, new_tokens: int) -> None:
    """Greedy generate() of exactly new_tokens tokens (an early end-of-text would skew decode)."""
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def cache_bytes(cache) -> int:
    """Bytes the KV cache's key and value tensors hold, every layer."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def time_generate(model, vision_tower: torch.nn.Module, inputs: dict, new_tokens: int,
                  layers: Sequence[torch.nn.Module] = ()) -> dict[str, float]:
    """One generate() split into phases (seconds), and the KV cache's bytes after the prefill
    and after the last decode step (read from the cache tensors, outside the timed calls' work).
    prefill_head_s: the LM head's share of the prefill (its first call), work that no pruning changes;
    prefill_layers_s: the decoder `layers`' share (each one's first call; NaN when none are given)."""
    device = next(model.parameters()).device
    kv = {}

    def after_call(module, args, kwargs, output):
        if "kv_bytes_after_prefill" not in kv:
            kv["kv_bytes_after_prefill"] = cache_bytes(compat.output_cache(output))

    handle = model.register_forward_hook(after_call, with_kwargs=True)
    # The prefill's call only; the layers' hooks record events rather than synchronise on CUDA.
    layer_times = [CallTimes(layer, device, limit=1, sync=False) for layer in layers]
    try:
        with (timing(vision_tower, device) as vision, timing(model, device) as calls,
              timing(model.get_output_embeddings(), device, limit=1) as head):
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     return_dict_in_generate=True)
            synchronize(device)
            total = time.perf_counter() - start
    finally:
        handle.remove()
        for times in layer_times:
            times.remove()
    return {
        "vision_s": sum(vision.durations),
        "prefill_s": calls.durations[0],
        "prefill_head_s": head.durations[0],
        "prefill_layers_s": sum(t.durations[0] for t in layer_times) if layer_times else float("nan"),
        "decode_s_per_token": fmean(calls.durations[1:]) if len(calls.durations) > 1 else float("nan"),
        "generate_s": total,
        **kv,
        "kv_bytes_final": cache_bytes(compat.output_cache(out)),
    }


def training_loss(model, inputs: dict) -> torch.Tensor:
    """The loss of one training forward, computed the same way for every configuration: logits
    over the answer window only (`logits_to_keep`), the cross-entropy on the labels cut to it.
    An attached model does this itself; the stock model is asked for the same window, so a
    train-step ratio measures pruning, not a full-vocabulary LM head over the visual prefix."""
    from photon.core.losses import answer_window, causal_lm_loss

    if getattr(model, "_photon", None) is not None:
        return model(**inputs).loss
    labels = inputs["labels"]
    window = answer_window(labels)
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=window)
    return causal_lm_loss(out.logits, labels[:, -window:])


def train_step(model, inputs: dict) -> None:
    """Forward with labels, backward; gradients dropped (no optimizer: the step's compute only)."""
    model.train()
    try:
        training_loss(model, inputs).backward()
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
