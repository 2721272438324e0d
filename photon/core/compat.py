"""Every difference between the transformers releases Photon supports, in one module.

The runtime, the adapters, the trainer and the bench call these helpers and never compare
versions: each difference is detected from the installed code (a signature, an attribute, a
tensor's shape). Each helper names the release that brought its difference, so it can be
deleted when the declared floor (TESTED_TRANSFORMERS, pyproject.toml) passes that release.

Nothing here imports transformers at module level: `import photon` reads only the installed
version's metadata, to warn once when it lies outside the tested range.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import warnings
from typing import Any

# The range CI tests (its ends and the tools' ceilings, .ci/transformers-versions); pyproject.toml
# declares the same requirement (a test checks both).
TESTED_TRANSFORMERS = ">=5.16,<5.26"
_CACHE_NAMES = ("cache", "past_key_values")


@functools.lru_cache(maxsize=None)
def _parameters(function) -> frozenset[str]:
    # inspect follows __wrapped__, so decorated forwards (deprecation shims, checkpointing) show their own.
    return frozenset(inspect.signature(function).parameters)


# -- the KV cache keyword: `past_key_values` until 5.23, `cache` from 5.24 -----------------------
def cache_keyword(module_or_function) -> str:
    """The keyword under which a forward (or function) takes the KV cache."""
    function = module_or_function
    if not inspect.isfunction(function) and not inspect.ismethod(function):
        function = type(module_or_function).forward
    return "cache" if "cache" in _parameters(function) else "past_key_values"


def pop_cache(kwargs: dict) -> Any:
    """Take the cache out of a forward's kwargs under either name. When both are given, `cache`
    wins, as 5.24's deprecation shim decides."""
    found = [kwargs.pop(name, None) for name in _CACHE_NAMES]
    return next((cache for cache in found if cache is not None), None)


def peek_cache(kwargs: dict) -> Any:
    """The cache among a forward's kwargs under either name, left in place."""
    return next((kwargs[name] for name in _CACHE_NAMES if kwargs.get(name) is not None), None)


def causal_mask(*, config, inputs_embeds, attention_mask, cache, position_ids=None, layer_idx=None):
    """transformers.masking_utils.create_causal_mask, whichever name its cache argument has."""
    from transformers.masking_utils import create_causal_mask

    options = {cache_keyword(create_causal_mask): cache}
    if layer_idx is not None:
        options["layer_idx"] = layer_idx
    return create_causal_mask(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **options
    )


@functools.lru_cache(maxsize=None)
def _output_cache_field(output_class) -> str:
    names = {f.name for f in dataclasses.fields(output_class)}
    return next(name for name in _CACHE_NAMES if name in names)


def model_output(hidden, cache):
    """A BaseModelOutputWithPast holding the cache in whichever field this release names it."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return BaseModelOutputWithPast(last_hidden_state=hidden, **{_output_cache_field(BaseModelOutputWithPast): cache})


def output_cache(output) -> Any:
    """The cache a model output carries (5.24's `.past_key_values` still reads, with a warning)."""
    if output is None:
        return None
    return getattr(output, _output_cache_field(type(output)), None)


# -- activation checkpointing: `gradient_checkpointing_*` until 5.22, `activation_checkpointing_*` from 5.23
def enable_checkpointing(model, *, use_reentrant: bool = False) -> None:
    options = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def disable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


# -- M-RoPE: until 5.16 Qwen2.5-VL's rotary module returned (3, B, L, D) cos/sin and its attention
# merged the sections (`apply_multimodal_rotary_pos_emb`); from 5.17 the rotary module merges them
# and returns (B, L, D), which `apply_rotary_pos_emb` applies (Qwen3-VL always did).
def apply_text_rope(modeling, q, k, cos, sin, mrope_section) -> tuple[Any, Any]:
    """Rotate a text attention's q and k with the cos/sin its rotary module returned."""
    if cos.ndim == 4:
        return modeling.apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section)
    return modeling.apply_rotary_pos_emb(q, k, cos, sin)


# Position embeddings are (B, L, D), or (3, B, L, D) before the sections are merged: the token axis
# is always second to last and the batch axis before it.
ROTARY_SEQ_DIM, ROTARY_BATCH_DIM = -2, -3


def vision_rope(visual, hidden, position_ids) -> tuple[Any, Any]:
    """cos/sin of Qwen2.5-VL's vision rotary embedding for patch position ids. Until 5.16 its rotary
    module takes the ids alone and returns frequencies; from 5.17 it takes (hidden, ids) and returns
    cos/sin."""
    import torch

    if len(_parameters(type(visual.rotary_pos_emb).forward)) == 2:  # forward(self, position_ids)
        freqs = visual.rotary_pos_emb(position_ids)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()
    return visual.rotary_pos_emb(hidden, position_ids)


# -- the installed release ------------------------------------------------------------------------
def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def in_range(version: str | None, specifier: str) -> bool | None:
    """Whether version satisfies specifier (None when the package is absent)."""
    if version is None:
        return None
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(specifier).contains(version, prereleases=True)


@functools.lru_cache(maxsize=1)
def warn_if_untested() -> bool:
    """Warn once when the installed transformers lies outside the tested range; Photon still runs."""
    version = installed("transformers")
    if in_range(version, TESTED_TRANSFORMERS) is False:
        warnings.warn(
            f"Photon is tested with transformers{TESTED_TRANSFORMERS}; this is transformers {version}. "
            "Photon patches the Qwen-VL text model's forward and may misbehave; `photon doctor` lists what is installed.",
            UserWarning,
            stacklevel=3,
        )
        return True
    return False
