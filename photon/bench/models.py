"""The models `photon bench` measures: published Qwen2.5-VL sizes with random weights, or a
registered backbone / local folder with its real weights.

Random weights give the real shapes, hence the real time, memory and FLOPs, without a
download; answers are meaningless, which a speed benchmark does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from photon.adapters.qwen2_5_vl import TINY_TEXT, TINY_VISION
from photon.core.errors import PhotonError

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

# text config, vision config, and what each size is
SIZES = {
    "tiny": (TINY_TEXT, TINY_VISION, "the test architecture: 8 layers x 64 wide, ViT 2 x 32"),
    "small": (
        dict(
            vocab_size=151936, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
        ),
        dict(TINY_VISION, depth=4, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=512, fullatt_block_indexes=[3]),
        "8 layers x 512 wide (GQA 8/2), ViT 4 x 128: CPU-sized, with the attention/MLP balance of a real model",
    ),
    "3b": (
        dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
            num_key_value_heads=2, max_position_embeddings=128000, tie_word_embeddings=True, rope_parameters=_MROPE,
        ),
        dict(_QWEN_VISION, out_hidden_size=2048),
        "Qwen2.5-VL-3B-Instruct's shapes (36 x 2048, GQA 16/2, ViT 32 x 1280), random weights",
    ),
    "7b": (
        dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, max_position_embeddings=128000, tie_word_embeddings=False, rope_parameters=_MROPE,
        ),
        dict(_QWEN_VISION, out_hidden_size=3584),
        "Qwen2.5-VL-7B-Instruct's shapes (28 x 3584, GQA 28/4, ViT 32 x 1280), random weights",
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

    def describe(self) -> str:
        if self.backbone:
            return self.backbone
        return f"qwen2.5-vl {self.size}: {SIZES[self.size][2]}"


def size_config(size: str, attn: str = "sdpa"):
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise PhotonError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    text, vision, _ = SIZES[size]
    config = Qwen2_5_VLConfig(text_config=dict(text), vision_config=dict(vision), tie_word_embeddings=text["tie_word_embeddings"])
    config._attn_implementation = attn
    return config


def build_model(spec: ModelSpec, *, with_encoder: bool = True):
    """(model, encoder or None): the stock model in eval mode on spec.device."""
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise PhotonError(f"unknown dtype {spec.dtype!r}; use float32, bfloat16 or float16")
    if spec.backbone:
        from photon.adapters.qwen2_5_vl import load_pretrained
        from photon.core import plugins

        known = plugins.backbones()
        if spec.backbone in known:
            loaded = known[spec.backbone].obj.load(None, attn_implementation=spec.attn)
        else:
            loaded = load_pretrained(spec.backbone, attn_implementation=spec.attn)
        model = loaded.model.to(device=spec.device, dtype=dtype).eval()
        return model, loaded.encoder if with_encoder else None
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = size_config(spec.size, spec.attn)
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    encoder = None
    if with_encoder:
        from photon.adapters.qwen2_5_vl import geometry_for
        from photon.adapters.qwen_inputs import QwenEncoder
        from photon.adapters.tokenizer import qwen2_5_tokenizer

        encoder = QwenEncoder(qwen2_5_tokenizer(), geometry_for(model))
    return model, encoder
