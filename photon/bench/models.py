"""The models `photon bench` measures: published Qwen2.5-VL and Qwen3-VL sizes with random
weights, or a registered backbone / local folder with its real weights.

Random weights give the real shapes, hence the real time, memory and FLOPs, without a
download; answers are meaningless, which a speed benchmark does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from photon.adapters import qwen, qwen3_vl
from photon.adapters.qwen2_5_vl import QWEN2_5_VL, TINY_TEXT, TINY_VISION
from photon.core.errors import PhotonError

QWEN25, QWEN3 = QWEN2_5_VL.name, qwen3_vl.QWEN3_VL.name
FAMILIES = {family.name: family for family in (QWEN2_5_VL, qwen3_vl.QWEN3_VL)}

_QWEN_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    in_channels=3,
    tokens_per_second=2,
)
_MROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}

# Qwen3-VL-2B-Instruct's shapes: Qwen3-1.7B (28 x 2048, GQA 16/8, head_dim 128) and a 24-block ViT
# with 16-pixel patches and DeepStack mergers after blocks 5, 11 and 17.
_QWEN3_2B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
)
_QWEN3_2B_VISION = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048, patch_size=16,
    temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
    in_channels=3,
)

# family, text config, vision config, and what each size is
SIZES = {
    "tiny": (QWEN25, TINY_TEXT, TINY_VISION, "the test architecture: 8 layers x 64 wide, ViT 2 x 32"),
    "small": (
        QWEN25,
        dict(
            vocab_size=151936, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        ),
        dict(TINY_VISION, depth=4, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=512, fullatt_block_indexes=[3]),
        "8 layers x 512 wide (GQA 8/2), ViT 4 x 128: CPU-sized, with the attention/MLP balance of a real model",
    ),
    "3b": (
        QWEN25,
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
            num_key_value_heads=2, max_position_embeddings=128000, tie_word_embeddings=True, rope_parameters=_MROPE,
        ),
        dict(_QWEN_VISION, out_hidden_size=2048),
        "Qwen2.5-VL-3B-Instruct's shapes (36 x 2048, GQA 16/2, ViT 32 x 1280), random weights",
    ),
    "7b": (
        QWEN25,
        dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, max_position_embeddings=128000, tie_word_embeddings=False, rope_parameters=_MROPE,
        ),
        dict(_QWEN_VISION, out_hidden_size=3584),
        "Qwen2.5-VL-7B-Instruct's shapes (28 x 3584, GQA 28/4, ViT 32 x 1280), random weights",
    ),
    "qwen3-tiny": (
        QWEN3, qwen3_vl.TINY_TEXT, qwen3_vl.TINY_VISION,
        "the Qwen3-VL test architecture: 8 layers x 64 wide, ViT 3 x 32, DeepStack after layers 0-2",
    ),
    "qwen3-small": (
        QWEN3,
        dict(qwen3_vl.TINY_TEXT, hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=2,
             head_dim=64, rope_parameters=dict(qwen3_vl.TINY_TEXT["rope_parameters"], mrope_section=[16, 8, 8])),
        dict(qwen3_vl.TINY_VISION, depth=4, hidden_size=128, intermediate_size=512, out_hidden_size=512,
             deepstack_visual_indexes=[1, 2]),
        "Qwen3-VL, 8 layers x 512 wide (GQA 8/2), ViT 4 x 128, DeepStack after layers 0-1: CPU-sized",
    ),
    "qwen3-2b": (
        QWEN3, _QWEN3_2B_TEXT, _QWEN3_2B_VISION,
        "Qwen3-VL-2B-Instruct's shapes (28 x 2048, GQA 16/8, ViT 24 x 1024, DeepStack 5/11/17), random weights",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """Enough to rebuild the same model in another process (the CPU memory probe)."""

    size: str | None = "tiny"  # a key of SIZES (random weights) ...
    backbone: str | None = None  # ... or a registered backbone name / local folder (real weights)
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    attn: str = "sdpa"
    volume_embedding: bool = False  # install Photon's grey 3D patch embedding (seeded random kernel)

    def describe(self) -> str:
        if self.backbone:
            return self.backbone
        family, _, _, what = SIZES[self.size]
        return f"{family} {self.size}: {what}"


def size_config(size: str, attn: str = "sdpa"):
    if size not in SIZES:
        raise PhotonError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    family, text, vision, _ = SIZES[size]
    make = FAMILIES[family].cls("config")
    config = make(text_config=dict(text), vision_config=dict(vision), tie_word_embeddings=text["tie_word_embeddings"])
    config._attn_implementation = attn
    return config


def build_model(spec: ModelSpec, *, with_encoder: bool = True):
    """(model, encoder or None): the stock model in eval mode on spec.device."""
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise PhotonError(f"unknown dtype {spec.dtype!r}; use float32, bfloat16 or float16")
    if spec.backbone:
        loaded = _load_backbone(spec.backbone, spec.attn)
        model = loaded.model.to(device=spec.device, dtype=dtype).eval()
        if spec.volume_embedding:
            raise PhotonError("volume_embedding applies to the random-weight sizes; a real backbone brings its own")
        return model, loaded.encoder if with_encoder else None
    config = size_config(spec.size, spec.attn)
    family = SIZES[spec.size][0]
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        model = FAMILIES[family].cls("model")._from_config(config, dtype=dtype)
    if spec.volume_embedding:
        volume_embedding(model, seed=spec.seed).install(model)
    model.eval()
    return model, encoder_for_model(model, family) if with_encoder else None


class EmbeddingSwap:
    """One patch embedding of a model, with the vision-config fields that go with it, so a
    benchmark can switch one model between Qwen's RGB embedding and Photon's 3D one."""

    def __init__(self, module, in_channels: int, temporal_patch_size: int):
        self.module, self.in_channels, self.temporal_patch_size = module, in_channels, temporal_patch_size

    @classmethod
    def current(cls, model) -> "EmbeddingSwap":
        vision = model.config.vision_config
        return cls(model.model.visual.patch_embed, vision.in_channels, vision.temporal_patch_size)

    def install(self, model) -> None:
        model.model.visual.patch_embed = self.module
        for config in (model.config.vision_config, model.model.visual.config):
            config.in_channels, config.temporal_patch_size = self.in_channels, self.temporal_patch_size


def volume_embedding(model, seed: int = 0) -> EmbeddingSwap:
    """Photon's 3D patch embedding for this model (seeded random kernel), not yet installed."""
    rgb = EmbeddingSwap.current(model)
    qwen.install_volume_embedding(family_of(model), model, init="random", seed=seed)
    grey = EmbeddingSwap.current(model)
    rgb.install(model)
    return grey


def _load_backbone(source: str, attn: str):
    """A registered backbone, or a local folder / hub id whose config.json names its family."""
    import json
    from pathlib import Path

    from photon.core import plugins
    from photon.core.api import spec_for_model_type

    known = plugins.backbones()
    if source in known:
        return known[source].obj.load(None, attn_implementation=attn)
    raw = Path(source) / "config.json"
    if raw.is_file():
        model_type = json.loads(raw.read_text()).get("model_type")
    else:  # a hub id: its name says the family
        model_type = "qwen3_vl" if "qwen3" in source.lower() else "qwen2_5_vl"
    return spec_for_model_type(model_type).load_folder(source, attn_implementation=attn)


def family_of(model) -> qwen.QwenFamily:
    return next(f for f in FAMILIES.values() if f.model_type == model.config.model_type)


def encoder_for_model(model, family: str):
    """Photon's input encoder for a random-weight model, with the family's real tokenizer."""
    return qwen.encoder_for(FAMILIES[family], model, FAMILIES[family].tokenizer())
