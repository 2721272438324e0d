"""The backbone-agnostic pruned forward (PHOTON_SPEC section 2).

PhotonRuntime replaces two instance forwards of a stock Qwen-VL model (never the class):
- the text model's: layers 0..l run on the full sequence; the pruner selects from layer l's
  own query/key; layer l's output, cos/sin, the attention mask and the caches of layers
  0..l are gathered with one keep index; layers l+1.. run on the kept tokens only;
- the top model's: it records input_ids for the text forward and gathers labels with the
  same keep index, so the loss is computed on the pruned sequence.

Decode steps after a pruned prefill find a CacheInfo on the cache object and attend to the
kept positions (plus the new tokens) in every layer whose cache was reduced.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import functools
import types
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from photon.core import compat, plugins
from photon.core.config import SelectionConfig, SGPConfig, check_layer
from photon.core.errors import PhotonError
from photon.core.its import enforce_min_keep
from photon.core.losses import IGNORE_INDEX, answer_window, causal_lm_loss
from photon.core.pruners import Selection, SelectionContext
from photon.core.schedule import BatchPlan, Stage
from photon.core.sgp import gather_tokens, keep_index, sgp_gather, soft_scale

_IGNORED_KWARGS = ("output_attentions", "output_hidden_states", "return_dict")


@dataclass
class CacheInfo:
    """Left on a cache by a pruned prefill; decode steps read it."""

    layer: int  # selection layer l: caches of layers > l always hold kept tokens
    orig_len: int  # unpruned prompt length (the caller's 2-D mask still counts it)
    kept_mask: torch.Tensor  # (B, M) bool over the packed prompt
    full_mask: torch.Tensor  # (B, L) bool over the unpruned prompt
    evict_all: bool  # layers 0..l were reduced too
    next_position: torch.Tensor  # (B,) next M-RoPE position, for callers that pass none


@dataclass
class ForwardInfo:
    """Tensors of the last prefill, for the trainer's losses."""

    vision_mask: torch.Tensor
    keep: torch.Tensor  # (B, L): kept visual tokens and every real non-visual token
    selection: Selection
    pruned: bool  # the sequence was physically packed
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    labels: torch.Tensor | None = None  # labels aligned with the logits (gathered when pruned)
    plan: BatchPlan | None = None

    @property
    def q(self) -> torch.Tensor | None:
        return self.selection.q


class SelectionRecords(Sequence):
    """One record per sample of a prefill, built on first access: the forward only keeps the
    (small) tensors, so a prefill nobody inspects pays no host syncs or Python lists for them.
    Built, each is {keep, theta, rho, n_visual, n_kept, selected, rule, pruner, layer, fallback, grids}."""

    def __init__(self, *, keep, selected, vision, rho, theta, fixed, fallback, grids):
        self._tensors = (keep, selected, vision, rho, theta)
        self._fixed, self._fallback, self._grids = fixed, fallback, grids
        self._built: list[dict] | None = None

    def __len__(self) -> int:
        return self._tensors[2].shape[0]

    def __getitem__(self, index):
        return self._build()[index]

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def _build(self) -> list[dict]:
        if self._built is None:
            keep, selected, vision, rho, theta = self._tensors
            # One host transfer per tensor, then plain Python.
            keep_rows, vision_rows = keep.cpu().tolist(), vision.cpu().tolist()
            rho_rows = None if rho is None else rho.float().cpu().tolist()
            thetas = None if theta is None else theta.float().cpu().tolist()
            n_kept, n_selected = keep.sum(1).tolist(), selected.sum(1).tolist()
            grids = self._grids() or [[] for _ in vision_rows]
            built = []
            for b, is_visual in enumerate(vision_rows):
                positions = [i for i, v in enumerate(is_visual) if v]
                built.append({
                    "keep": [keep_rows[b][i] for i in positions],
                    "theta": None if thetas is None else thetas[b],
                    "rho": None if rho_rows is None else [round(rho_rows[b][i], 6) for i in positions],
                    "n_visual": len(positions),
                    "n_kept": int(n_kept[b]),
                    "selected": int(n_selected[b]),
                    **self._fixed,
                    "fallback": None if self._fallback is None else self._fallback[b],
                    "grids": grids[b] if b < len(grids) else [],
                })
            self._built = built
        return self._built


@dataclass
class PhotonRuntime:
    model: nn.Module
    adapter: Any
    pruner: Any
    config: SelectionConfig
    sgp: SGPConfig = field(default_factory=SGPConfig)
    plan: BatchPlan | None = None  # set per training batch; None means inference
    enabled: bool = True
    records: list[dict] = field(default_factory=list)
    last: ForwardInfo | None = None
    _inputs: dict = field(default_factory=dict)
    _generate_grids: dict = field(default_factory=dict)  # generate() encodes media before the prefill call
    vision_attention: Any = None  # the adapter's capture, for pruners with needs_vision_attention
    _hooked_ids: Any = None  # input_ids seen by the first forward pre-hook (see install)
    _ids_hook: Any = None

    # -- installation -------------------------------------------------------------------
    def install(self) -> None:
        text_model = self.adapter.text_model(self.model)
        layer_types = getattr(text_model.config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise PhotonError("Photon supports full-attention decoders only (use_sliding_window must be false)")
        self.num_layers = len(text_model.layers)
        self.layer = self.pruner.layer_for(self.num_layers)
        check_layer(self.layer, self.num_layers, f"this {self.adapter.family} model")
        if getattr(self.pruner, "needs_vision_attention", False):
            capture = getattr(self.adapter, "capture_vision_attention", None)
            if capture is None:
                raise PhotonError(
                    f"pruner {getattr(self.pruner, 'name', '?')!r} reads the vision encoder's attention, which the "
                    f"{self.adapter.family} adapter does not provide"
                )
            self.vision_attention = capture(self.model)
        # Frameworks that embed the prompt themselves in a later forward pre-hook (ms-swift's trainer
        # hands the model inputs_embeds, not input_ids) still show the ids to this, the first one.
        self._ids_hook = self.model.register_forward_pre_hook(self._remember_ids, with_kwargs=True)
        text_model.forward = types.MethodType(_bind_text_forward(self), text_model)
        self.model.forward = types.MethodType(_bind_outer_forward(self, type(self.model).forward), self.model)
        self.model.generate = types.MethodType(_bind_generate(self, type(self.model).generate), self.model)

    def _remember_ids(self, module, args, kwargs) -> None:
        self._hooked_ids = kwargs.get("input_ids", args[0] if args else None)

    def remove(self) -> None:
        if self._ids_hook is not None:
            self._ids_hook.remove()
            self._ids_hook = None
        text_model = self.adapter.text_model(self.model)
        for module, name in ((text_model, "forward"), (self.model, "forward"), (self.model, "generate")):
            if name in module.__dict__:
                delattr(module, name)
        if self.vision_attention is not None:
            self.vision_attention.remove()
            self.vision_attention = None

    # -- selection records ---------------------------------------------------------------
    def _record(self, selection: Selection, vision: torch.Tensor, keep_visual: torch.Tensor) -> None:
        selected = keep_visual
        if self.config.keep == "all":  # the selection ran (it is in `selected`), nothing was dropped
            keep_visual = vision
        grid_inputs = dict(self._inputs.get("grid_inputs") or {})
        self.records = SelectionRecords(
            keep=keep_visual.detach(),
            selected=selected.detach(),
            vision=vision.detach(),
            rho=None if selection.rho is None else selection.rho.detach(),
            theta=None if selection.theta is None else selection.theta.detach(),
            fixed={"rule": selection.rule, "pruner": getattr(self.pruner, "name", type(self.pruner).__name__), "layer": self.layer},
            fallback=selection.fallback,
            grids=lambda: _grids(self, grid_inputs),
        )
        pm = plugins.load_plugins()
        if pm.hook.selection_made.get_hookimpls():
            pm.hook.selection_made(model=self.model, records=list(self.records))

    # -- the decisions of one prefill -----------------------------------------------------
    def _decide(self, ctx: SelectionContext, padding: torch.Tensor) -> tuple[Selection, torch.Tensor, torch.Tensor]:
        vision = ctx.vision_mask
        selection = self.pruner.select(ctx)
        keep_visual = selection.keep.bool() & vision
        plan = self.plan
        if plan is not None and plan.flip:
            scores = selection.rho if selection.rho is not None else torch.zeros_like(vision, dtype=torch.float32)
            keep_visual = enforce_min_keep(vision & ~keep_visual, 1 - scores, vision, 1)
        if plan is not None and plan.q_detached and selection.q is not None:
            selection.q = selection.q.detach()
        self._record(selection, vision, keep_visual)
        keep = keep_visual | (~vision & ~padding)
        return selection, keep_visual, keep


def _split_positions(position_ids, batch: int, length: int, start, device):
    """(text positions or None, M-RoPE positions (3, B, q)) as the stock text models read them."""
    if position_ids is None:
        if isinstance(start, torch.Tensor):
            rows = start.view(1, -1, 1) + torch.arange(length, device=device).view(1, 1, -1)
            return None, rows.expand(3, batch, length)
        return None, (torch.arange(length, device=device) + start).view(1, 1, -1).expand(3, batch, -1)
    if position_ids.ndim == 2:
        position_ids = position_ids[None].expand(3, position_ids.shape[0], -1)
    if position_ids.shape[0] == 4:
        return position_ids[0], position_ids[1:]
    return None, position_ids


def _strip(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}


def _bind_text_forward(rt: PhotonRuntime):
    def forward(
        text_model,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        cache = compat.pop_cache(kwargs)
        stock = functools.partial(
            type(text_model).forward,
            text_model,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{compat.cache_keyword(text_model): cache},
            **kwargs,
        )
        if inputs_embeds is None:
            if input_ids is None:
                return stock()
            inputs_embeds = text_model.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = text_model.config.use_cache
        if getattr(text_model, "gradient_checkpointing", False) and text_model.training:
            use_cache = False
        info = getattr(cache, "_photon", None)
        if info is not None:
            return _decode(rt, text_model, inputs_embeds, attention_mask, position_ids, cache, use_cache, info, kwargs)
        full_ids = rt._inputs.get("input_ids")
        past = cache.get_seq_length() if cache is not None else 0
        if not rt.enabled or full_ids is None or full_ids.shape[1] != inputs_embeds.shape[1] or past > 0:
            return stock()
        vision = (rt.adapter.visual_kinds(full_ids) > 0).to(inputs_embeds.device)
        if not vision.any() or (rt.plan is not None and rt.plan.stage is Stage.FULL):
            return stock()
        return _prefill(rt, text_model, inputs_embeds, attention_mask, position_ids, cache, use_cache, full_ids, vision, kwargs)

    return forward


def _prefill(rt, text_model, embeds, attention_mask, position_ids, cache, use_cache, full_ids, vision, kwargs):
    adapter, layers = rt.adapter, text_model.layers
    B, L, _ = embeds.shape
    extras, kwargs = adapter.split_extras(_strip(kwargs))
    if use_cache and cache is None:
        cache = DynamicCache(config=text_model.config)
    text_pos, mrope = _split_positions(position_ids, B, L, 0, embeds.device)
    mask = compat.causal_mask(config=text_model.config, inputs_embeds=embeds, attention_mask=attention_mask, cache=cache, position_ids=text_pos)
    cache_kw = {compat.cache_keyword(layers[0]): cache}
    position_embeddings = text_model.rotary_emb(embeds, mrope)
    padding = attention_mask == 0 if attention_mask is not None else torch.zeros_like(vision)
    padding = padding.to(vision.device)
    instructions = adapter.instruction_mask(full_ids).to(vision.device)
    p = rt.layer
    hidden = embeds
    selection = None

    extras_for_pruner = {"model": rt.model}
    if rt.vision_attention is not None:
        extras_for_pruner["vision_attention"] = functools.partial(rt.vision_attention.read, full_ids)

    def select_here(h):
        ctx = SelectionContext(
            hidden=h,
            vision_mask=vision,
            instruction_mask=instructions,
            attention_mask=~padding,
            layer=p,
            num_layers=len(layers),
            training=text_model.training,
            compute_query_key=(lambda: adapter.query_key(layers[p], h, position_embeddings)) if p >= 0 else None,
            input_ids=full_ids,
            extras=extras_for_pruner,
        )
        return rt._decide(ctx, padding)

    if p == -1:
        selection, keep_visual, keep = select_here(hidden)
    for i in range(p + 1):
        if i == p:
            selection, keep_visual, keep = select_here(hidden)
        hidden = layers[i](
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=text_pos,
            use_cache=use_cache,
            **cache_kw,
            **kwargs,
        )
        if extras is not None:
            hidden = extras.apply(i, hidden)
    if selection.hidden is not None:  # merging pruners rewrite rows of the selection output
        hidden = selection.hidden
    plan = rt.plan
    soft = plan is not None and plan.stage is Stage.SOFT
    keep_all = rt.config.keep == "all" or soft
    if soft:
        if selection.q is None:
            raise PhotonError("the soft stage needs retention probabilities: train with selection.mode=trained")
        hidden = soft_scale(hidden, selection.q, vision)
    if keep_all:
        rt.last = ForwardInfo(vision, keep, selection, pruned=False, plan=plan)
        late_mask, late_pos = mask, text_pos
    else:
        index, valid = keep_index(keep, "left")
        q = selection.q
        if text_model.training and torch.is_grad_enabled() and q is not None and q.requires_grad:
            hidden = sgp_gather(hidden, keep, q, vision, config=rt.sgp, index=(index, valid))
        else:
            hidden = gather_tokens(hidden, index, valid)
        position_embeddings = tuple(
            gather_tokens(t, index, valid, seq_dim=compat.ROTARY_SEQ_DIM, batch_dim=compat.ROTARY_BATCH_DIM) for t in position_embeddings
        )
        if cache is not None and rt.config.cache == "evict_all":
            for i in range(p + 1):
                layer_cache = cache.layers[i]
                layer_cache.keys = gather_tokens(layer_cache.keys, index, valid, seq_dim=2)
                layer_cache.values = gather_tokens(layer_cache.values, index, valid, seq_dim=2)
        elif rt.config.cache not in ("evict_all", "keep_early"):
            raise PhotonError(f"selection.cache must be 'evict_all' or 'keep_early', got {rt.config.cache!r}")
        if extras is not None:
            extras = extras.gather(index, valid, keep)
        late_mask = compat.causal_mask(config=text_model.config, inputs_embeds=hidden, attention_mask=valid, cache=cache, layer_idx=p + 1)
        # Kept text positions have gaps: hide them from FlashAttention's packed-sequence logic.
        late_pos = None
        rt.last = ForwardInfo(vision, keep, selection, pruned=True, index=index, valid=valid, plan=plan)
        if cache is not None:
            real = ~padding
            cache._photon = CacheInfo(
                layer=p,
                orig_len=L,
                kept_mask=valid,
                full_mask=real,
                evict_all=rt.config.cache == "evict_all",
                next_position=torch.where(real.unsqueeze(0), mrope, torch.zeros_like(mrope)).amax(dim=(0, 2)) + 1,
            )
    for i in range(p + 1, len(layers)):
        hidden = layers[i](
            hidden,
            attention_mask=late_mask,
            position_embeddings=position_embeddings,
            position_ids=late_pos,
            use_cache=use_cache,
            **cache_kw,
            **kwargs,
        )
        if extras is not None:
            hidden = extras.apply(i, hidden)
    hidden = text_model.norm(hidden)
    return compat.model_output(hidden, cache if use_cache else None)


def _decode(rt, text_model, embeds, attention_mask, position_ids, cache, use_cache, info: CacheInfo, kwargs):
    layers = text_model.layers
    B, q_len, _ = embeds.shape
    _, kwargs = rt.adapter.split_extras(_strip(kwargs))
    late_layer = info.layer + 1
    late_past = cache.layers[late_layer].get_seq_length()
    n_new = late_past - info.kept_mask.shape[1] + q_len  # generated tokens so far, this step's included
    if attention_mask is not None and attention_mask.ndim == 2:
        if attention_mask.shape[1] != info.orig_len + n_new:
            raise PhotonError(
                f"decode attention_mask has {attention_mask.shape[1]} columns; expected the unpruned prompt "
                f"({info.orig_len}) plus {n_new} new tokens"
            )
        new = attention_mask[:, info.orig_len :].bool()
    else:
        new = torch.ones(B, n_new, dtype=torch.bool, device=embeds.device)
    kept_2d = torch.cat([info.kept_mask, new], dim=1)
    _, mrope = _split_positions(position_ids, B, q_len, info.next_position, embeds.device)
    info.next_position = mrope.amax(dim=(0, 2)) + 1
    position_embeddings = text_model.rotary_emb(embeds, mrope)

    def mask_for(two_d, layer_idx):
        return compat.causal_mask(config=text_model.config, inputs_embeds=embeds, attention_mask=two_d, cache=cache, layer_idx=layer_idx)

    cache_kw = {compat.cache_keyword(layers[0]): cache}
    late_mask = mask_for(kept_2d, late_layer)
    early_mask = late_mask if info.evict_all else mask_for(torch.cat([info.full_mask, new], dim=1), 0)
    hidden = embeds
    for i, layer in enumerate(layers):
        hidden = layer(
            hidden,
            attention_mask=early_mask if i <= info.layer else late_mask,
            position_embeddings=position_embeddings,
            position_ids=None,
            use_cache=use_cache,
            **cache_kw,
            **kwargs,
        )
    hidden = text_model.norm(hidden)
    return compat.model_output(hidden, cache)


def _bind_outer_forward(rt: PhotonRuntime, stock_forward):
    @functools.wraps(stock_forward)
    def forward(model, *args, labels=None, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if input_ids is None and embeds is not None and getattr(rt._hooked_ids, "shape", None) == embeds.shape[:2]:
            input_ids = rt._hooked_ids  # the prompt behind inputs_embeds a later pre-hook built
        rt._hooked_ids = None
        requested = kwargs.get("logits_to_keep")
        positions = window = None
        if isinstance(requested, torch.Tensor):
            # Positions over the unpruned prompt (indices or a mask, as transformers allows; ms-swift's
            # trainer passes the loss positions): the stock model computes the trailing window that holds
            # them, and they are picked from it through the keep index once the prompt is pruned.
            length = input_ids.shape[1] if input_ids is not None else embeds.shape[1]
            positions = _position_mask(requested, length)
            window = length - int(positions.nonzero()[0])
        elif labels is not None:
            # A loss reads logits only where they predict a label: the answer window at the end of
            # the rows. Computing the (L x vocabulary) logits of a long visual prefix is waste.
            window = requested or answer_window(labels)
        if window is not None:
            kwargs["logits_to_keep"] = window
        # What the records need to place each medium's grid, read only if someone asks for them.
        grid_inputs = {key: kwargs.get(key, rt._generate_grids.get(key)) for key in ("image_grid_thw", "video_grid_thw")}
        rt._inputs = {"input_ids": input_ids, "grid_inputs": {"input_ids": input_ids, **grid_inputs}}
        if getattr(compat.peek_cache(kwargs), "_photon", None) is None:
            rt.last = None  # a new prompt: the previous prefill's tensors no longer apply
        try:
            out = stock_forward(model, *args, **kwargs)
        except PhotonError:
            raise
        except ValueError as exc:
            if "do not match" in str(exc):
                raise PhotonError(
                    f"{exc}. The number of <|image_pad|>/<|video_pad|> tokens must equal the visual grid's token "
                    "count; build prompts with the backbone's encoder (photon.adapters.qwen_inputs.QwenEncoder)"
                ) from exc
            raise
        finally:
            rt._inputs = {}
        last = rt.last
        if positions is not None:
            out["logits"] = _pick_positions(out.logits, positions, last, window)
        if labels is not None:
            if positions is None:
                if last is not None and last.pruned and last.labels is None:
                    labels = gather_tokens(labels.to(last.index.device), last.index, last.valid, fill=IGNORE_INDEX)
                labels = labels[:, -window:]  # aligned with the logits' window
            # else the caller's labels are aligned with the positions it asked for, as transformers reads them
            if last is not None:
                last.labels = labels
            out["loss"] = causal_lm_loss(out.logits, labels)
        return out

    return forward


def _position_mask(requested: torch.Tensor, length: int) -> torch.Tensor:
    """logits_to_keep given as a tensor (1-D indices or a boolean mask over the prompt) -> (L,) bool."""
    if requested.dtype == torch.bool:
        if requested.ndim != 1 or requested.shape[0] != length:
            raise PhotonError(f"logits_to_keep as a mask must be 1-D over the {length} prompt positions, got shape {tuple(requested.shape)}")
        mask = requested
    else:
        if requested.ndim != 1:
            raise PhotonError(f"logits_to_keep as indices must be 1-D, got shape {tuple(requested.shape)}")
        mask = torch.zeros(length, dtype=torch.bool, device=requested.device)
        mask[requested.long()] = True
    if not mask.any():
        raise PhotonError("logits_to_keep selects no position")
    return mask


def _pick_positions(logits: torch.Tensor, positions: torch.Tensor, last: ForwardInfo | None, window: int) -> torch.Tensor:
    """The rows of a trailing-window logits tensor at the requested prompt positions, found through
    the keep index when the prompt was pruned (a requested position Photon dropped is an error)."""
    B = logits.shape[0]
    rows = positions.to(logits.device).expand(B, -1)
    if last is not None and last.pruned:
        rows = gather_tokens(rows, last.index.to(logits.device), last.valid.to(logits.device), fill=False)
        dropped = int(positions.sum()) - rows.sum(1)
        if bool((dropped != 0).any()):
            raise PhotonError("logits_to_keep asks for logits at visual positions Photon dropped; ask for text positions only")
    rows = rows[:, -window:]
    return logits[rows].view(B, -1, logits.shape[-1])


def _bind_generate(rt: PhotonRuntime, stock_generate):
    @functools.wraps(stock_generate)
    def generate(model, *args, **kwargs):
        rt._generate_grids = {k: kwargs[k] for k in ("image_grid_thw", "video_grid_thw") if kwargs.get(k) is not None}
        try:
            return stock_generate(model, *args, **kwargs)
        finally:
            rt._generate_grids = {}

    return generate


def _grids(rt: PhotonRuntime, kwargs: dict) -> list[list[dict]]:
    """Per sample, the visual grids of its media in prompt order, in LLM-token units."""
    ids = kwargs.get("input_ids")
    if ids is None:
        return []
    merge = rt.adapter.merge_size
    queues = {}
    for kind, key in ((1, "image_grid_thw"), (2, "video_grid_thw")):
        value = kwargs.get(key)
        rows = [] if value is None else value.tolist()
        queues[kind] = collections.deque(
            {"kind": "image" if kind == 1 else "video", "t": t, "h": h // merge, "w": w // merge, "tokens": t * h * w // merge**2}
            for t, h, w in rows
        )
    kinds = rt.adapter.visual_kinds(ids)
    per_sample = []
    for row in kinds:
        sequence = row[row > 0].tolist()
        sample, i = [], 0
        while i < len(sequence) and queues[sequence[i]]:
            grid = queues[sequence[i]].popleft()
            sample.append(grid)
            i += grid["tokens"]
        per_sample.append(sample)
    return per_sample
