"""Qwen2.5-VL 3B/7B, the Photon-S1/S2 releases, and a tiny offline variant: what differs from the
other Qwen-VL generations (photon/adapters/qwen.py holds what they share).

- patch 14 (grid multiple 28), CLIP pixel mean/std, a default system prompt;
- no q/k normalisation; M-RoPE sections from the text config (merged by the rotary module from
  transformers 5.17, by the attention before: photon.core.compat.apply_text_rope);
- a video's temporal M-RoPE input is second_per_grid_ts (no timestamp text);
- the released Photon checkpoints (transformers 4.51 names) keep the 3D kernel at
  `visual.vision_patch_embed` and the threshold MLP at `layers.{l}.atp.predictor` (PHOTON_SPEC 6c);
- the Photon 3D patch embedding is the stock Qwen2_5_VisionPatchEmbed with in_channels 1 and a
  14^3 kernel, no bias (spec section 1).
"""

from __future__ import annotations

from photon.adapters import qwen
from photon.adapters.hub_folder import RELEASE_KEY_MAPPING
from photon.adapters.qwen import IM_END_ID, IM_START_ID, Release, inflate_rgb_kernel, photon_weights
from photon.adapters.qwen_inputs import CLIP_MEAN, CLIP_STD
from photon.core import its
from photon.core.hookspecs import hookimpl

__all__ = ["FAMILY", "IM_END_ID", "IM_START_ID", "QWEN2_5_VL", "TINY_TEXT", "TINY_VISION",
           "inflate_rgb_kernel", "install_volume_embedding", "load_pretrained", "load_tiny", "make_adapter", "photon_weights"]

FAMILY = "qwen2.5-vl"

TINY_TEXT = dict(qwen.TINY_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
TINY_VISION = dict(qwen.TINY_VISION, depth=2, patch_size=14, window_size=112, fullatt_block_indexes=[1], tokens_per_second=2)


def instruction_tokens(input_ids, ids):
    """Spec section 3's instruction tokens: after each <|vision_end|>, before <|im_end|>."""
    exclude = (input_ids == ids.image_id) | (input_ids == ids.video_id) | (input_ids == ids.vision_start_id)
    return its.instruction_mask(input_ids, ids.vision_end_id, ids.im_end_id, exclude=exclude, im_start_id=IM_START_ID)


def _tokenizer():
    from photon.adapters.tokenizer import qwen2_5_tokenizer

    return qwen2_5_tokenizer()


QWEN2_5_VL = qwen.QwenFamily(
    FAMILY,
    "qwen2_5_vl",
    qwen.Classes("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
                 "Qwen2_5_VisionPatchEmbed"),
    (TINY_TEXT, TINY_VISION),
    _tokenizer,
    (CLIP_MEAN, CLIP_STD),
    (14, 14, 14),
    instruction_tokens,
    key_mapping=RELEASE_KEY_MAPPING,  # and the defaults: no q/k norm, no DeepStack, one block per video
)


make_adapter, install_volume_embedding, load_tiny, load_pretrained = qwen.bind(QWEN2_5_VL, "qwen2.5-vl-tiny")


PHOTON_VOLUME = dict(volume_input=(140, 280, 280), volume_patch=(14, 14, 14), num_layers=36)
RELEASES = (
    Release("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B Instruct", (140, 280, 280), 36),
    Release("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL 7B Instruct", (140, 280, 280), 28),
    Release("photon-s1", "Alibaba-DAMO-Academy/Photon-S1", "Photon-S1 (Qwen2.5-VL 3B, 3D patch embedding)", **PHOTON_VOLUME),
    Release("photon-s2", "Alibaba-DAMO-Academy/Photon-S2", "Photon-S2 (Qwen2.5-VL 3B, 3D patch embedding)", **PHOTON_VOLUME),
    Release("qwen2.5-vl-tiny", None, "Qwen2.5-VL architecture, 8 layers x 64 wide, random seeded weights (offline; answers are meaningless)",
            (28, 112, 112), TINY_TEXT["num_hidden_layers"]),
)


@hookimpl
def register_backbones(register):
    for release in RELEASES:
        register(release.name, qwen.backbone_spec(QWEN2_5_VL, release))
