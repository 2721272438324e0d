"""Qwen3-VL 2B, and a tiny offline variant: what differs from the other Qwen-VL generations
(photon/adapters/qwen.py holds what they share; the runtime, the pixel packing and the prompt
builder are shared too: photon/core/runtime.py, photon/adapters/qwen_inputs.py):
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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from photon.adapters import qwen
from photon.adapters.qwen import IM_START_ID, Release
from photon.core import its
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
    qwen.TINY_TEXT,
    head_dim=16,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
)
# Three DeepStack injections (after decoder layers 0, 1, 2): with 8 layers a test can put the
# selection layer before the last injection (0, 1) or after it (2..6).
TINY_VISION = dict(qwen.TINY_VISION, depth=3, patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2])


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


def instruction_tokens(input_ids, ids) -> torch.Tensor:
    """Spec section 3's instruction tokens, less the timestamps and <|vision_start|> between frame blocks."""
    exclude = (
        (input_ids == ids.image_id)
        | (input_ids == ids.video_id)
        | (input_ids == ids.vision_start_id)
        | timestamp_mask(input_ids, ids.vision_start_id)
    )
    return its.instruction_mask(input_ids, ids.vision_end_id, ids.im_end_id, exclude=exclude, im_start_id=IM_START_ID)


def split_deepstack(kwargs: dict):
    """Take DeepStack's inputs out of the text model's kwargs (photon.adapters.base.LayerExtras)."""
    mask = kwargs.get("visual_pos_masks")
    embeds = kwargs.get("deepstack_visual_embeds")
    rest = {k: v for k, v in kwargs.items() if k not in ("visual_pos_masks", "deepstack_visual_embeds")}
    if mask is None or not embeds:
        return None, rest
    return DeepStack(mask.bool(), list(embeds)), rest


def _tokenizer():
    from photon.adapters.tokenizer import qwen3_tokenizer

    return qwen3_tokenizer()


QWEN3_VL = qwen.QwenFamily(
    FAMILY,
    MODEL_TYPE,
    qwen.Classes("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLConfig",
                 "Qwen3VLVisionPatchEmbed"),
    (TINY_TEXT, TINY_VISION),
    _tokenizer,
    (PIXEL_MEAN, PIXEL_STD),
    VOLUME_KERNEL,
    instruction_tokens,
    qk_norm=True, extras=split_deepstack, frame_timestamps=True, default_system=None, total_video_budget=True,
)


make_adapter, install_volume_embedding, load_tiny, load_pretrained = qwen.bind(QWEN3_VL, "qwen3-vl-tiny")


RELEASES = (
    Release("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL 2B Instruct", VOLUME_INPUT, 28),
    Release("qwen3-vl-tiny", None, "Qwen3-VL architecture, 8 layers x 64 wide, 3 DeepStack injections, random seeded weights "
            "(offline; answers are meaningless)", (32, 128, 128), TINY_TEXT["num_hidden_layers"]),
)


@hookimpl
def register_backbones(register):
    for release in RELEASES:
        register(release.name, qwen.backbone_spec(QWEN3_VL, release))


