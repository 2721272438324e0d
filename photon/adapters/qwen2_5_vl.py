"""Qwen2.5-VL 3B/7B, the Photon-S1/S2 releases, and a tiny offline variant.

The adapter exposes the stock modules the runtime drives; the loaders build the stock
transformers model (from the hub, a local folder, or a seeded tiny config) with Photon's
own input encoder. The Photon 3D patch embedding is the stock Qwen2_5_VisionPatchEmbed
with in_channels 1 and a 14^3 kernel (spec section 1), installed by install_volume_embedding.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from photon.adapters.base import BackboneSpec, Loaded
from photon.core import its
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl

IM_START_ID = 151644
IM_END_ID = 151645
FAMILY = "qwen2.5-vl"
# The released Photon checkpoints hold the threshold MLP under this prefix (transformers 4.51 names).
_PREDICTOR_KEY = re.compile(r"^(?:model\.)?(?:language_model\.)?layers\.(\d+)\.atp\.predictor\.(mlp\.\d+\.(?:weight|bias))$")

TINY_TEXT = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    tie_word_embeddings=True,
)
TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=[1],
    in_channels=3,
    tokens_per_second=2,
)


class Qwen25VLAdapter:
    """The runtime's view of a Qwen2_5_VLForConditionalGeneration."""

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
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        B, L, _ = x.shape
        q = attn.q_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(B, L, -1, attn.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        return apply_rotary_pos_emb(q, k, cos, sin)

    def visual_kinds(self, input_ids):
        return (input_ids == self.image_id).long() + 2 * (input_ids == self.video_id).long()

    def instruction_mask(self, input_ids):
        exclude = (self.visual_kinds(input_ids) > 0) | (input_ids == self.vision_start_id)
        return its.instruction_mask(input_ids, self.vision_end_id, self.im_end_id, exclude=exclude, im_start_id=IM_START_ID)

    def split_extras(self, kwargs):
        return None, kwargs

    def capture_vision_attention(self, model):
        from photon.adapters.qwen_vision_attention import VisionAttentionCapture

        return VisionAttentionCapture(model, self.visual_kinds)


# -- the Photon 3D patch embedding ---------------------------------------------------------
def inflate_rgb_kernel(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """(out, 3, t, p, p) RGB kernel -> (out, 1, depth, p, p) grey kernel.

    Sum over RGB, repeat along depth, and divide by depth / t, so a constant volume gives
    the output a constant RGB clip of the same value gave.
    """
    grey = weight.sum(dim=1, keepdim=True)
    t = grey.shape[2]
    if depth % t:
        raise ValueError(f"depth {depth} must be a multiple of the RGB kernel's temporal size {t}")
    return grey.repeat(1, 1, depth // t, 1, 1) * (t / depth)


def install_volume_embedding(model, *, init: str = "inflate", kernel: tuple[int, int, int] = (14, 14, 14), seed: int = 0):
    """Replace Qwen's RGB patch embedding by Photon's grey 3D one (in place; returns model).

    init "inflate" derives the kernel from the RGB one (this project's choice, spec section 1);
    "random" draws it (seeded). The vision config is updated so saving and reloading keep it.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    visual = model.model.visual
    old = visual.patch_embed
    kd, kh, kw = kernel
    if kh != kw or kh != old.patch_size:
        raise PhotonError(f"the 3D kernel's spatial size {kh}x{kw} must equal the ViT patch size {old.patch_size}")
    new = Qwen2_5_VisionPatchEmbed(patch_size=kh, temporal_patch_size=kd, in_channels=1, embed_dim=old.embed_dim)
    weight = old.proj.weight.detach()
    with torch.no_grad():
        if init == "inflate":
            new.proj.weight.copy_(inflate_rgb_kernel(weight.float(), kd).to(weight.dtype))
        elif init == "random":
            generator = torch.Generator().manual_seed(seed)
            fan_in = kd * kh * kw
            new.proj.weight.copy_((torch.randn(new.proj.weight.shape, generator=generator) / fan_in**0.5).to(weight.dtype))
        else:
            raise PhotonError(f"volume embedding init must be 'inflate' or 'random', got {init!r}")
    visual.patch_embed = new.to(device=weight.device, dtype=weight.dtype)
    for cfg in (model.config.vision_config, visual.config):
        cfg.in_channels = 1
        cfg.temporal_patch_size = kd
    return model


# -- loading ------------------------------------------------------------------------------
def geometry_for(model, processor_config: dict | None = None):
    from photon.adapters.qwen_inputs import CLIP_MEAN, CLIP_STD, VisualGeometry

    vision = model.config.vision_config
    processor_config = processor_config or {}
    return VisualGeometry(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        in_channels=vision.in_channels,
        mean=tuple(processor_config.get("image_mean", CLIP_MEAN)),
        std=tuple(processor_config.get("image_std", CLIP_STD)),
    )


def tiny_config(attn_implementation: str = "sdpa", **text_overrides):
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(
        text_config={**TINY_TEXT, **text_overrides}, vision_config=dict(TINY_VISION), tie_word_embeddings=True
    )
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
    """The real architecture, small and random: seeded, offline, for tests and the demo."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from photon.adapters.qwen_inputs import QwenEncoder
    from photon.adapters.tokenizer import qwen2_5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(tiny_config(attn_implementation, **text_overrides))
        if volume_embedding:
            install_volume_embedding(model, init=volume_embedding, seed=seed)
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return Loaded(model=model, encoder=QwenEncoder(qwen2_5_tokenizer(), geometry_for(model)), backbone="qwen2.5-vl-tiny")


def read_config(folder: Path) -> dict:
    """config.json with transformers-4.51 vision names mapped to the current ones."""
    path = folder / "config.json"
    if not path.is_file():
        raise PhotonError(f"{folder}: no config.json; expected a Qwen2.5-VL checkpoint folder")
    raw = json.loads(path.read_text())
    vision = raw.get("vision_config", {})
    if "in_chans" in vision:
        vision["in_channels"] = vision.pop("in_chans")
    return raw


def photon_weights(folder: Path) -> dict[str, Any] | None:
    """The released checkpoints' threshold predictor: {"layer": l, "state": {...}}, or None."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    state, layers = {}, set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = _PREDICTOR_KEY.match(key)
                if match:
                    layers.add(int(match.group(1)))
                    state[f"predictor.{match.group(2)}"] = handle.get_tensor(key)
    if not state:
        return None
    if len(layers) != 1:
        raise PhotonError(f"{folder}: threshold predictor weights at several layers {sorted(layers)}; expected one")
    return {"layer": layers.pop(), "state": state}


def load_pretrained(
    source: str,
    *,
    dtype: Any = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    backbone: str | None = None,
    allow_weight_mismatch: bool = False,
) -> Loaded:
    """A hub id or a local folder: the stock model, its tokenizer, chat template and processor
    limits, and Photon weights if present.

    The released Photon checkpoints' names (transformers 4.51, `visual.vision_patch_embed`) are
    mapped to the stock ones; any weight the folder lacks or the model does not know is an error
    unless allow_weight_mismatch.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from photon.adapters import hub_folder
    from photon.adapters.qwen_inputs import QwenEncoder

    hub_folder.check_attention(attn_implementation)
    folder = hub_folder.resolve(source, alias=backbone)
    config = Qwen2_5_VLConfig(**read_config(folder))
    if attn_implementation:
        config._attn_implementation = attn_implementation
    tokenizer, model = hub_folder.load_checked(
        Qwen2_5_VLForConditionalGeneration, folder, config, dtype=dtype, trust_remote_code=trust_remote_code,
        strict=not allow_weight_mismatch, key_mapping=hub_folder.RELEASE_KEY_MAPPING,
    )
    if device is not None:
        model.to(device)
    model.eval()
    vision = model.config.vision_config
    image_config, _ = hub_folder.processor_configs(folder)
    return Loaded(
        model=model,
        encoder=QwenEncoder(tokenizer, geometry_for(model, image_config), template=hub_folder.chat_template(folder)),
        backbone=backbone or str(source),
        photon=photon_weights(folder),
        media_defaults=hub_folder.media_defaults(folder, patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                                 total_video_budget=False),
    )


def _hub_loader(default_source: str, name: str):
    def load(source: str | None = None, **options) -> Loaded:
        return load_pretrained(source or default_source, backbone=name, **options)

    return load


def make_adapter(model) -> Qwen25VLAdapter:
    return Qwen25VLAdapter(model)


def _spec(name, source, description, load, **geometry) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family=FAMILY,
        source=source,
        description=description,
        load=load,
        model_type="qwen2_5_vl",
        make_adapter=make_adapter,
        load_folder=load_pretrained,
        **geometry,
    )


PHOTON_VOLUME = dict(volume_input=(140, 280, 280), volume_patch=(14, 14, 14), num_layers=36)


@hookimpl
def register_backbones(register):
    register("qwen2.5-vl-3b", _spec("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B Instruct",
                                    _hub_loader("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-3b"), volume_input=(140, 280, 280), num_layers=36))
    register("qwen2.5-vl-7b", _spec("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL 7B Instruct",
                                    _hub_loader("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl-7b"), volume_input=(140, 280, 280), num_layers=28))
    register("photon-s1", _spec("photon-s1", "Alibaba-DAMO-Academy/Photon-S1", "Photon-S1 (Qwen2.5-VL 3B, 3D patch embedding)",
                                _hub_loader("Alibaba-DAMO-Academy/Photon-S1", "photon-s1"), **PHOTON_VOLUME))
    register("photon-s2", _spec("photon-s2", "Alibaba-DAMO-Academy/Photon-S2", "Photon-S2 (Qwen2.5-VL 3B, 3D patch embedding)",
                                _hub_loader("Alibaba-DAMO-Academy/Photon-S2", "photon-s2"), **PHOTON_VOLUME))
    register("qwen2.5-vl-tiny", _spec("qwen2.5-vl-tiny", None, "Qwen2.5-VL architecture, 8 layers x 64 wide, random seeded weights (offline; answers are meaningless)",
                                      load_tiny, volume_input=(28, 112, 112), num_layers=TINY_TEXT["num_hidden_layers"]))
