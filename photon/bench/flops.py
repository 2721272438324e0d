"""Analytic FLOPs of a Qwen-VL forward, GQA-aware (2 FLOPs per multiply-add).

Counted: every matrix product of the vision encoder (patch embedding, windowed and full
attention, MLP, merger and Qwen3-VL's DeepStack mergers), of each decoder layer (q/k/v/o projections with Hkv key/value heads,
causal attention over the keys each query sees, the gated MLP), the LM head on the positions
whose logits are computed, and each pruner's selection overhead (its `selection_flops`).
Not counted: norms, RoPE, softmax, biases, embedding lookups (all O(tokens x width)).
"""

from __future__ import annotations

from dataclasses import dataclass

from photon.core.errors import PhotonError


@dataclass(frozen=True)
class TextDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class VisionDims:
    hidden: int
    depth: int
    heads: int
    intermediate: int
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    merge_size: int
    window_size: int | None  # None: every block attends over the whole frame (Qwen3-VL)
    fullatt_blocks: tuple[int, ...]
    out_hidden: int
    mlp_matrices: int = 3  # gated MLP (Qwen2.5-VL) 3; plain two-layer MLP (Qwen3-VL) 2
    mergers: int = 1  # the final patch merger plus Qwen3-VL's DeepStack mergers


@dataclass(frozen=True)
class ModelDims:
    text: TextDims
    vision: VisionDims


@dataclass(frozen=True)
class SampleShape:
    """One sample of a prompt, as the FLOPs (and pruners' selection_flops) see it."""

    tokens: int  # real prompt tokens
    visual: int
    instruction: int
    kept: int  # visual tokens kept
    frames: tuple[tuple[int, int], ...]  # (h, w) ViT patches of each temporal step of its media


def dims_of(config) -> ModelDims:
    """ModelDims from a Qwen2.5-VL or Qwen3-VL transformers config."""
    if config.model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise PhotonError(
            f"photon bench counts FLOPs for Qwen2.5-VL and Qwen3-VL models only, not model_type {config.model_type!r}"
        )
    t, v = config.get_text_config(), config.vision_config
    text = TextDims(
        hidden=t.hidden_size,
        layers=t.num_hidden_layers,
        heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads,
        head_dim=getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads,
        intermediate=t.intermediate_size,
        vocab=t.vocab_size,
    )
    shared = dict(
        hidden=v.hidden_size,
        depth=v.depth,
        heads=v.num_heads,
        intermediate=v.intermediate_size,
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        in_channels=v.in_channels,
        merge_size=v.spatial_merge_size,
        out_hidden=v.out_hidden_size,
    )
    if config.model_type == "qwen3_vl":
        # No attention windows, an ungated MLP, and one merger per DeepStack level besides the last.
        vision = VisionDims(**shared, window_size=None, fullatt_blocks=tuple(range(v.depth)), mlp_matrices=2,
                            mergers=1 + len(v.deepstack_visual_indexes))
    else:
        vision = VisionDims(**shared, window_size=v.window_size, fullatt_blocks=tuple(v.fullatt_block_indexes))
    return ModelDims(text=text, vision=vision)


# -- decoder --------------------------------------------------------------------------------
def layer_linear(t: TextDims, tokens: float) -> float:
    """Projections and gated MLP of one decoder layer over `tokens` tokens."""
    q_o = 2 * t.hidden * t.heads * t.head_dim
    k_v = 2 * t.hidden * t.kv_heads * t.head_dim
    return 2 * tokens * (q_o + k_v + 3 * t.hidden * t.intermediate)


def attention(t: TextDims, pairs: float) -> float:
    """q.k and p.v over `pairs` (query, key) pairs, all query heads."""
    return 4 * pairs * t.heads * t.head_dim


def prefill(dims: ModelDims, tokens: int, kept_tokens: int, layer: int, logits: int) -> float:
    """Decoder prefill of one sample: layers 0..layer on all tokens, the rest on the kept ones."""
    t = dims.text
    total = 0.0
    for i in range(t.layers):
        n = tokens if i <= layer else kept_tokens
        total += layer_linear(t, n) + attention(t, n * (n + 1) / 2)
    return total + lm_head(t, logits)


def lm_head(t: TextDims, positions: int) -> float:
    """The LM head's logits at `positions` positions."""
    return 2 * t.hidden * t.vocab * positions


def decode_step(dims: ModelDims, cache: list[int]) -> float:
    """One generated token: every layer's projections and attention over its cache (plus itself)."""
    t = dims.text
    return sum(layer_linear(t, 1) + attention(t, c + 1) for c in cache) + lm_head(t, 1)


def decoder_weight_elements(t: TextDims) -> int:
    """Elements of the matrices a decode step reads once for the whole batch: every decoder
    layer's projections and MLP, and the LM head (the embedding lookup reads rows only)."""
    per_layer = t.hidden * t.head_dim * 2 * (t.heads + t.kv_heads) + 3 * t.hidden * t.intermediate
    return t.layers * per_layer + t.vocab * t.hidden


def decode_bytes(dims: ModelDims, shapes: list[SampleShape], layer: int | None, evict_all: bool, new_tokens: int,
                 element_bytes: int) -> float:
    """Bytes one decode step reads, averaged over the steps as decode FLOPs are: the weights
    once, and each sample's KV cache as it stands before the step. At batch sizes far below a
    device's FLOPs per byte (every CPU and GPU at batch 1), decode time follows bytes, not FLOPs."""
    weights = decoder_weight_elements(dims.text) * element_bytes
    steps = range(max(new_tokens - 1, 1))
    return weights + sum(kv_cache_bytes(dims, shapes, layer, evict_all, k, element_bytes) for k in steps) / len(steps)


def cache_lengths(dims: ModelDims, tokens: int, kept_tokens: int, layer: int, evict_all: bool) -> list[int]:
    """Per layer, the prompt positions its KV cache holds after a pruned prefill."""
    early = kept_tokens if evict_all else tokens
    return [early if i <= layer else kept_tokens for i in range(dims.text.layers)]


# -- vision encoder -------------------------------------------------------------------------
def window_sizes(v: VisionDims, h: int, w: int) -> list[int]:
    """Patches in each attention window of one (h x w patches) frame (the whole frame without windows)."""
    if v.window_size is None:
        return [h * w]
    unit = v.window_size // v.patch_size // v.merge_size  # window side in merged tokens
    mh, mw = h // v.merge_size, w // v.merge_size
    rows = [min(unit, mh - r) for r in range(0, mh, unit)]
    cols = [min(unit, mw - c) for c in range(0, mw, unit)]
    return [a * b * v.merge_size**2 for a in rows for b in cols]


def vision_linear(v: VisionDims, patches: int) -> float:
    """Patch embedding, every block's projections and MLP, and the mergers, over `patches` patches."""
    embed = v.in_channels * v.temporal_patch_size * v.patch_size**2 * v.hidden
    block = 3 * v.hidden * v.hidden + v.hidden * v.hidden + v.mlp_matrices * v.hidden * v.intermediate
    wide = v.hidden * v.merge_size**2
    merger = wide * wide + wide * v.out_hidden
    return 2 * patches * (embed + v.depth * block) + 2 * (patches // v.merge_size**2) * merger * v.mergers


def vision_attention(v: VisionDims, frames: tuple[tuple[int, int], ...]) -> float:
    """q.k and p.v of every block: full blocks attend within a frame, the others within windows."""
    full_pairs = sum((h * w) ** 2 for h, w in frames)
    window_pairs = sum(s * s for h, w in frames for s in window_sizes(v, h, w))
    n_full = sum(1 for b in range(v.depth) if b in v.fullatt_blocks)
    return 4 * v.hidden * (n_full * full_pairs + (v.depth - n_full) * window_pairs)


def vision(dims: ModelDims, frames: tuple[tuple[int, int], ...]) -> float:
    """The vision encoder on one sample's frames, (h, w) patches each."""
    v = dims.vision
    return vision_linear(v, sum(h * w for h, w in frames)) + vision_attention(v, frames)


# -- one configuration --------------------------------------------------------------------
def configuration_flops(
    dims: ModelDims,
    shapes: list[SampleShape],
    *,
    layer: int | None,
    evict_all: bool,
    new_tokens: int,
    pruner=None,
    train_logits: int | None = None,
) -> dict[str, float | None]:
    """FLOPs of a batch under one configuration (layer None: the stock model).

    prefill includes the selection, as the measured prefill does, and the LM head's logits at each
    sample's last position (prefill_head, the same in every configuration); decode is per
    generated token.

    generate = vision + prefill + selection + (new_tokens - 1) decode steps (the prefill
    yields the first token); train = 3 x (vision + prefill with logits at the `train_logits`
    trailing positions of the answer window, every kept position when None) + selection, the
    usual forward + backward estimate.
    """
    totals = dict(vision=0.0, prefill=0.0, prefill_head=0.0, selection=0.0, decode=0.0, generate=0.0, train=0.0)
    counts_selection = pruner is not None and hasattr(pruner, "selection_flops")
    for s in shapes:
        kept_tokens = s.tokens - s.visual + s.kept
        cut = layer if layer is not None else dims.text.layers
        vis = vision(dims, s.frames)
        pre = prefill(dims, s.tokens, kept_tokens, cut, logits=1)
        sel = float(pruner.selection_flops(dims, s)) if counts_selection else 0.0
        cache = cache_lengths(dims, s.tokens, kept_tokens, cut, evict_all)
        steps = [decode_step(dims, [c + k for c in cache]) for k in range(new_tokens - 1)]
        totals["vision"] += vis
        totals["prefill"] += pre + sel
        totals["prefill_head"] += lm_head(dims.text, 1)
        totals["selection"] += sel
        totals["decode"] += sum(steps) / len(steps) if steps else 0.0
        totals["generate"] += vis + pre + sel + sum(steps)
        logits = kept_tokens if train_logits is None else min(train_logits, kept_tokens)
        totals["train"] += 3 * (vis + prefill(dims, s.tokens, kept_tokens, cut, logits=logits)) + sel
    if pruner is not None and not counts_selection:
        totals["selection"] = None  # a third-party pruner that does not state its overhead
    return totals


def frames_of(grids: list[tuple[int, int, int]]) -> tuple[tuple[int, int], ...]:
    """(h, w) per temporal step of a sample's media, from their (t, h, w) patch grids."""
    return tuple((h, w) for t, h, w in grids for _ in range(t))


def kv_cache_bytes(dims: ModelDims, shapes: list[SampleShape], layer: int | None, evict_all: bool, new_tokens: int,
                   element_bytes: int) -> int:
    """What a KV cache holding exactly each sample's kept prompt plus `new_tokens` generated ones
    weighs: keys and values of every layer, no padding. Layers up to the selection layer hold
    the full prompt unless their caches are evicted too (evict_all); stock (layer None) holds it all."""
    t = dims.text
    per_token_layer = 2 * t.kv_heads * t.head_dim * element_bytes
    total = 0
    for s in shapes:
        full = s.tokens + new_tokens
        kept = s.tokens - s.visual + s.kept + new_tokens
        if layer is None:
            total += t.layers * full
            continue
        early = layer + 1 if layer >= 0 else 0  # layers 0..l saw the full prompt
        total += early * (kept if evict_all else full) + (t.layers - early) * kept
    return total * per_token_layer
