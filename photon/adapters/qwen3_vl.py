"""Qwen3-VL 2B, and a tiny offline variant.

What differs from Qwen2.5-VL lives here; the runtime, the pixel packing and the prompt builder
are shared (photon/core/runtime.py, photon/adapters/qwen_inputs.py):
- attention normalises q and k per head (q_norm, k_norm) before RoPE;
- a video is one placeholder block per temporal grid step, each preceded by "<t seconds>";
- DeepStack adds ViT mid-layer features to the visual rows after decoder layers 0..n-1. When
  the selection layer comes before the last injection, the remaining injections are gathered
  with the keep index (DeepStack.gather) so they land only on kept visual tokens;
- patch 16 (grid multiple 32), pixel mean/std 0.5, no default system prompt;
- the Photon 3D patch embedding: a grey Conv3d with a 16^3 kernel (with bias, as Qwen3's is),
  so a (160, 320, 320) volume gives 10 x 20 x 20 patches -> 10 x 10 x 10 = 1000 LLM tokens.
"""

from __future__ import annotations

import functools
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photon.adapters.base import BackboneSpec, Loaded
from photon.adapters.qwen2_5_vl import IM_END_ID, IM_START_ID, inflate_rgb_kernel, photon_weights
from photon.core import its
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.core.sgp import gather_tokens

FAMILY = "qwen3-vl"
MODEL_TYPE = "qwen3_vl"
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)
VOLUME_KERNEL = (16, 16, 16)
VOLUME_INPUT = (160, 320, 320)  # (D, H, W): 1000 LLM tokens through VOLUME_KERNEL

# "<12.5 seconds>" in Qwen's byte-level BPE (the same ranks for Qwen2, 2.5 and 3):
# ["<", "1", "2", ".", "5", " seconds", ">"]. The "<" may merge with punctuation before it
# (" <", ":<"), so it is found by position rather than by id.
_DIGIT_IDS = tuple(range(15, 25))  # "0".."9"
_DOT_ID = 13
_SECONDS_ID = 6486  # " seconds"
_CLOSE_ID = 29  # ">"

TINY_TEXT = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    tie_word_embeddings=True,
)
# Three DeepStack injections (after decoder layers 0, 1, 2): with 8 layers a test can put the
# selection layer before the last injection (0, 1) or after it (2..6).
TINY_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=64,
    deepstack_visual_indexes=[0, 1, 2],
    in_channels=3,
)


@dataclass
class DeepStack:
    """Qwen3-VL's per-token side input: ViT features added to the visual rows after early layers.

    embeds[i] holds one row per True of visual_pos_masks, in row-major order (as stock builds it).
    """

    visual_pos_masks: torch.Tensor  # (B, L) bool
    embeds: list[torch.Tensor]  # one (n_visual, D) tensor per injection

    def apply(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        if layer_idx >= len(self.embeds):
            return hidden
        mask = self.visual_pos_masks.to(hidden.device)
        hidden = hidden.clone()  # stock clones too: the input may be needed for backward
        hidden[mask] = hidden[mask] + self.embeds[layer_idx].to(hidden.device, hidden.dtype)
        return hidden

    def gather(self, index: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> "DeepStack":
        mask = self.visual_pos_masks.to(keep.device)
        # Packing keeps each sample's order and samples stay in batch order, so the kept visual
        # rows stay in the row-major order the packed mask enumerates.
        kept_rows = keep.bool()[mask]
        packed = gather_tokens(mask, index, valid, fill=False)
        return DeepStack(packed, [e[kept_rows.to(e.device)] for e in self.embeds])


def timestamp_mask(input_ids: torch.Tensor, vision_start_id: int) -> torch.Tensor:
    """(B, L) bool: the "<t seconds>" text right before each <|vision_start|>."""
    B, L = input_ids.shape

    def back(d):  # input_ids[:, t - d], -1 before the start
        return F.pad(input_ids, (d, 0), value=-1)[:, :L]

    digits = torch.tensor(_DIGIT_IDS, device=input_ids.device)

    def is_digit(x):
        return torch.isin(x, digits)

    starts = (
        (input_ids == vision_start_id)
        & (back(1) == _CLOSE_ID)
        & (back(2) == _SECONDS_ID)
        & is_digit(back(3))
        & (back(4) == _DOT_ID)
        & is_digit(back(5))
    )
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    # The integer part is a run of digits; the token before it holds the "<".
    last_non_digit = torch.where(is_digit(input_ids), -1, positions).cummax(dim=1).values
    opening = last_non_digit.gather(1, (positions - 5).clamp_min(0)).clamp_min(0)
    edges = torch.zeros(B, L + 1, dtype=torch.long, device=input_ids.device)
    edges.scatter_add_(1, torch.where(starts, opening, L), starts.long())
    edges.scatter_add_(1, torch.where(starts, positions, L), -starts.long())
    return edges.cumsum(1)[:, :L] > 0


def instruction_tokens(input_ids, image_id, video_id, vision_start_id, vision_end_id, im_end_id) -> torch.Tensor:
    """Spec section 3's instruction tokens, less the timestamps and <|vision_start|> between frame blocks."""
    exclude = (
        (input_ids == image_id)
        | (input_ids == video_id)
        | (input_ids == vision_start_id)
        | timestamp_mask(input_ids, vision_start_id)
    )
    return its.instruction_mask(input_ids, vision_end_id, im_end_id, exclude=exclude, im_start_id=IM_START_ID)


class Qwen3VLAdapter:
    """The runtime's view of a Qwen3VLForConditionalGeneration.

    Standalone rather than a Qwen2.5-VL subclass, so nothing Qwen2.5-specific added there later
    (a patch embedding, a position rule) silently applies here.
    """

    family = FAMILY

    def __init__(self, model, im_end_id: int = IM_END_ID):
        config = model.config
        self.image_id = config.image_token_id
        self.video_id = config.video_token_id
        self.vision_start_id = config.vision_start_token_id
        self.vision_end_id = config.vision_end_token_id
        self.im_end_id = im_end_id
        self.merge_size = config.vision_config.spatial_merge_size

    def text_model(self, model):
        return model.model.language_model

    def vision_tower(self, model):
        return model.model.visual

    def patch_embedding(self, model):
        return model.model.visual.patch_embed

    def install_volume_embedding(self, model, *, init: str, seed: int = 0):
        return install_volume_embedding(model, init=init, seed=seed)

    def query_key(self, layer, hidden, position_embeddings):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
        cos, sin = position_embeddings
        return apply_rotary_pos_emb(q, k, cos, sin)

    def visual_kinds(self, input_ids):
        return (input_ids == self.image_id).long() + 2 * (input_ids == self.video_id).long()

    def instruction_mask(self, input_ids):
        return instruction_tokens(input_ids, self.image_id, self.video_id, self.vision_start_id, self.vision_end_id, self.im_end_id)

    def capture_vision_attention(self, model):
        from photon.adapters.qwen_vision_attention import VisionAttentionCapture

        return VisionAttentionCapture(model, self.visual_kinds)

    def split_extras(self, kwargs):
        mask = kwargs.get("visual_pos_masks")
        embeds = kwargs.get("deepstack_visual_embeds")
        rest = {k: v for k, v in kwargs.items() if k not in ("visual_pos_masks", "deepstack_visual_embeds")}
        if mask is None or not embeds:
            return None, rest
        return DeepStack(mask.bool(), list(embeds)), rest


# -- the Photon 3D patch embedding ---------------------------------------------------------
def install_volume_embedding(model, *, init: str = "inflate", kernel: tuple[int, int, int] = VOLUME_KERNEL, seed: int = 0):
    """Replace Qwen3-VL's RGB patch embedding by Photon's grey 3D one (in place; returns model).

    init "inflate" derives the kernel from the RGB one (the same rule as on Qwen2.5-VL) and keeps
    the bias, so a constant volume embeds as a constant RGB clip of the same value did; "random"
    draws the kernel (seeded) with a zero bias. The vision config is updated so saving and
    reloading keep the embedding.
    """
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

    visual = model.model.visual
    old = visual.patch_embed
    kd, kh, kw = kernel
    if kh != kw or kh != old.patch_size:
        raise PhotonError(f"the 3D kernel's spatial size {kh}x{kw} must equal the ViT patch size {old.patch_size}")
    shape = types.SimpleNamespace(patch_size=kh, temporal_patch_size=kd, in_channels=1, hidden_size=old.embed_dim)
    new = Qwen3VLVisionPatchEmbed(shape)
    weight, bias = old.proj.weight.detach(), old.proj.bias.detach()
    with torch.no_grad():
        if init == "inflate":
            new.proj.weight.copy_(inflate_rgb_kernel(weight.float(), kd))
            new.proj.bias.copy_(bias.float())
        elif init == "random":
            generator = torch.Generator().manual_seed(seed)
            new.proj.weight.copy_(torch.randn(new.proj.weight.shape, generator=generator) / (kd * kh * kw) ** 0.5)
            new.proj.bias.zero_()
        else:
            raise PhotonError(f"volume embedding init must be 'inflate' or 'random', got {init!r}")
    visual.patch_embed = new.to(device=weight.device, dtype=weight.dtype)
    for cfg in (model.config.vision_config, visual.config):
        cfg.in_channels = 1
        cfg.temporal_patch_size = kd
    return model


# -- loading ------------------------------------------------------------------------------
def geometry_for(model, processor_config: dict | None = None):
    from photon.adapters.qwen_inputs import VisualGeometry

    vision = model.config.vision_config
    processor_config = processor_config or {}
    return VisualGeometry(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        in_channels=vision.in_channels,
        mean=tuple(processor_config.get("image_mean", PIXEL_MEAN)),
        std=tuple(processor_config.get("image_std", PIXEL_STD)),
    )


def chat_format():
    """Qwen3-VL's chat template: no default system prompt, timestamped frame blocks."""
    from photon.adapters.qwen_inputs import ChatFormat

    return ChatFormat(default_system=None, frame_timestamps=True)


def encoder_for(model, tokenizer, processor_config: dict | None = None, template: str | None = None):
    from photon.adapters.qwen_inputs import QwenEncoder

    chat = chat_format()
    ids = tokenizer.convert_tokens_to_ids
    # The batch's instruction mask is the one the adapter reads.
    instructions = functools.partial(
        instruction_tokens,
        image_id=ids(chat.image_pad),
        video_id=ids(chat.video_pad),
        vision_start_id=ids(chat.vision_start),
        vision_end_id=ids(chat.vision_end),
        im_end_id=ids(chat.im_end),
    )
    return QwenEncoder(tokenizer, geometry_for(model, processor_config), chat, instructions, template=template)


def tiny_config(attn_implementation: str = "sdpa", **text_overrides):
    from transformers import Qwen3VLConfig

    text = {**TINY_TEXT, **text_overrides}
    # The merger (and DeepStack) project ViT features to the LLM width: follow a resized text model.
    vision = {**TINY_VISION, "out_hidden_size": text["hidden_size"]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    config._attn_implementation = attn_implementation
    return config


def load_tiny(
    source: str | None = None,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    volume_embedding: str | None = None,
    dtype: torch.dtype | None = None,
    allow_weight_mismatch: bool = False,  # accepted like the folder loaders': built in memory, nothing to mismatch
    **text_overrides,
) -> Loaded:
    """The real Qwen3-VL architecture, small and random: seeded, offline, for tests and the demo."""
    from transformers import Qwen3VLForConditionalGeneration

    from photon.adapters.tokenizer import qwen3_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(tiny_config(attn_implementation, **text_overrides))
        if volume_embedding:
            install_volume_embedding(model, init=volume_embedding, seed=seed)
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return Loaded(model=model, encoder=encoder_for(model, qwen3_tokenizer()), backbone="qwen3-vl-tiny")


def load_pretrained(
    source: str,
    *,
    dtype: Any = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    volume_embedding: str | None = None,
    backbone: str | None = None,
    allow_weight_mismatch: bool = False,
) -> Loaded:
    """A hub id or a local folder: the stock model, its tokenizer, chat template and processor
    limits, and Photon weights if present.

    volume_embedding ("inflate" | "random") installs the Photon 3D patch embedding on a
    checkpoint that still has Qwen's RGB one (phase 1 then trains it).
    """
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    from photon.adapters import hub_folder

    hub_folder.check_attention(attn_implementation)
    folder = hub_folder.resolve(source, alias=backbone)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PhotonError(f"{folder}: no config.json; expected a Qwen3-VL checkpoint folder")
    model_type = hub_folder.read_json(config_path).get("model_type")
    if model_type != MODEL_TYPE:
        raise PhotonError(f"{config_path}: model_type is {model_type!r}; the Qwen3-VL adapter reads {MODEL_TYPE!r}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    tokenizer, model = hub_folder.load_checked(
        Qwen3VLForConditionalGeneration, folder, config, dtype=dtype, trust_remote_code=trust_remote_code,
        strict=not allow_weight_mismatch,
    )
    if volume_embedding:
        if model.config.vision_config.in_channels == 1:
            raise PhotonError(f"{folder}: the checkpoint already has a 1-channel (Photon 3D) patch embedding")
        install_volume_embedding(model, init=volume_embedding)
    if device is not None:
        model.to(device)
    model.eval()
    vision = model.config.vision_config
    image_config, _ = hub_folder.processor_configs(folder)
    return Loaded(
        model=model,
        encoder=encoder_for(model, tokenizer, image_config, template=hub_folder.chat_template(folder)),
        backbone=backbone or str(source),
        photon=photon_weights(folder),
        media_defaults=hub_folder.media_defaults(folder, patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                                 total_video_budget=True),
    )


def make_adapter(model) -> Qwen3VLAdapter:
    return Qwen3VLAdapter(model)


def _load_2b(source: str | None = None, **options) -> Loaded:
    return load_pretrained(source or "Qwen/Qwen3-VL-2B-Instruct", backbone="qwen3-vl-2b", **options)


def _spec(name, source, description, load, volume_input, num_layers) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family=FAMILY,
        source=source,
        description=description,
        load=load,
        model_type=MODEL_TYPE,
        make_adapter=make_adapter,
        load_folder=load_pretrained,
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        volume_input=volume_input,
        num_layers=num_layers,
    )


@hookimpl
def register_backbones(register):
    register("qwen3-vl-2b", _spec("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL 2B Instruct", _load_2b, VOLUME_INPUT, 28))
    register("qwen3-vl-tiny", _spec("qwen3-vl-tiny", None, "Qwen3-VL architecture, 8 layers x 64 wide, 3 DeepStack injections, random seeded weights (offline; answers are meaningless)",
                                    load_tiny, (32, 128, 128), TINY_TEXT["num_hidden_layers"]))
