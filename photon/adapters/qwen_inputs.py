"""Model inputs for Qwen-VL backbones without Hugging Face processors (they need torchvision).

Two jobs, both in exactly Qwen's layout:
- pack_frames: frames (T, C, H, W) -> flattened patches (N, C * tp * p * p) and grid (t, h, w),
  ordered as Qwen's image/video processors order them (merge windows contiguous);
- QwenEncoder: chat-format prompts with the right number of placeholder tokens,
  mm_token_type_ids, labels on the assistant turns, the instruction mask, and batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from photon.core.errors import PhotonError
from photon.core.its import instruction_mask
from photon.core.losses import IGNORE_INDEX

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MEDIA_TAG = re.compile(r"<(image|video)>")


def pack_frames(
    frames: torch.Tensor | np.ndarray,
    *,
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten frames (T, C, H, W) into Qwen's patch rows.

    T is padded to a multiple of temporal_patch_size by repeating the last frame (a single
    image becomes temporal_patch_size identical frames, as Qwen's image processor does).
    H and W must be multiples of patch_size * merge_size. mean/std, when given, normalise
    each channel first.
    """
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames).float()
    if x.ndim != 4:
        raise PhotonError(f"frames must be (T, C, H, W), got shape {tuple(x.shape)}")
    T, C, H, W = x.shape
    side = patch_size * merge_size
    if H % side or W % side:
        raise PhotonError(f"frame size {H}x{W} is not a multiple of the patch grid {side}; resize the frames first")
    if mean is not None:
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - m) / s
    if pad := -T % temporal_patch_size:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
        T += pad
    gt, gh, gw = T // temporal_patch_size, H // patch_size, W // patch_size
    x = x.view(gt, temporal_patch_size, C, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p): each 2x2 merge window's patches are contiguous.
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(gt * gh * gw, C * temporal_patch_size * patch_size * patch_size)
    return rows.contiguous(), torch.tensor([gt, gh, gw], dtype=torch.long)


@dataclass(frozen=True)
class VisualGeometry:
    """How one backbone turns frames into patches."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    in_channels: int = 3
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    # Volumes through Photon's 3D embedding (in_channels 1) take min-max [0, 1] voxels as they
    # are (spec section 1). Through Qwen's own RGB embedding the grey frames are repeated to
    # three channels and normalised like images, which is what those weights were trained on.
    normalize_volumes: bool = True

    def tokens(self, grid_thw: torch.Tensor) -> int:
        return int(grid_thw.prod()) // (self.merge_size**2)


@dataclass
class PackedVisual:
    kind: str  # "image" | "video"
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    second_per_grid: float
    n_tokens: int
    timestamps: list[float] = field(default_factory=list)  # time of each temporal grid step (step_timestamps)


def pack_media(media: Any, geometry: VisualGeometry) -> PackedVisual:
    """Pack a photon.modalities.base.Media for this backbone."""
    frames = torch.as_tensor(np.asarray(media.frames), dtype=torch.float32)
    channels = frames.shape[1]
    normalize = True
    if media.kind == "volume":
        normalize = geometry.in_channels != 1 and geometry.normalize_volumes
    if channels != geometry.in_channels:
        if channels == 1:
            frames = frames.expand(-1, geometry.in_channels, -1, -1)
        elif geometry.in_channels == 1:
            frames = frames.mean(dim=1, keepdim=True)
        else:
            raise PhotonError(f"{media.source}: {channels} channels, the backbone expects {geometry.in_channels}")
    mean = std = None
    if normalize:
        mean, std = geometry.mean[: geometry.in_channels], geometry.std[: geometry.in_channels]
    pixel_values, grid = pack_frames(
        frames,
        patch_size=geometry.patch_size,
        temporal_patch_size=geometry.temporal_patch_size,
        merge_size=geometry.merge_size,
        mean=mean,
        std=std,
    )
    is_still = media.kind == "image" and frames.shape[0] == 1
    kind = "image" if is_still else "video"
    fps = float(media.fps or 1.0)
    second_per_grid = geometry.temporal_patch_size / fps
    n_frames = frames.shape[0]
    frame_times = media.meta.get("timestamps") or [k / fps for k in range(n_frames)]
    if len(frame_times) != n_frames:
        raise PhotonError(f"{media.source}: {len(frame_times)} timestamps in meta for {n_frames} frames")
    timestamps = step_timestamps([float(t) for t in frame_times], geometry.temporal_patch_size)
    return PackedVisual(kind, pixel_values, grid, second_per_grid, geometry.tokens(grid), timestamps)


def step_timestamps(frame_times: Sequence[float], temporal_patch_size: int) -> list[float]:
    """The time of each temporal grid step as Qwen3-VL prints it: the mean of the step's first and
    last frame times, after padding the frames by repeating the last one (as packing does)."""
    times = list(frame_times)
    times += times[-1:] * (-len(times) % temporal_patch_size)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


@dataclass(frozen=True)
class ChatFormat:
    """Token ids and text conventions of a Qwen chat template."""

    default_system: str | None = "You are a helpful assistant."
    image_pad: str = "<|image_pad|>"
    video_pad: str = "<|video_pad|>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"
    # Qwen3-VL: one block per temporal step with "<t seconds>" before each; time reaches the model
    # as this text, so batches carry no second_per_grid_ts (Qwen2.5-VL's temporal M-RoPE input).
    frame_timestamps: bool = False

    def visual_block(self, packed: PackedVisual) -> str:
        pad = self.image_pad if packed.kind == "image" else self.video_pad
        if not self.frame_timestamps or packed.kind == "image":
            return f"{self.vision_start}{pad * packed.n_tokens}{self.vision_end}"
        per_step = packed.n_tokens // int(packed.grid_thw[0])
        return "".join(
            f"<{t:.1f} seconds>{self.vision_start}{pad * per_step}{self.vision_end}" for t in packed.timestamps
        )


class QwenEncoder:
    """Turns a Sample (messages + loaded media) into model tensors, and samples into batches.

    Implements photon.modalities.dataset.SampleEncoder. Labels cover each assistant turn's
    content and its closing <|im_end|>; everything else is IGNORE_INDEX.
    """

    def __init__(
        self,
        tokenizer,
        geometry: VisualGeometry,
        chat: ChatFormat | None = None,
        instructions: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        """instructions(input_ids) -> (B, L) bool: the batch's instruction mask, when the backbone's
        adapter reads a different one than "after a vision block, before <|im_end|>"."""
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.chat = chat or ChatFormat()
        self.instructions = instructions
        ids = tokenizer.convert_tokens_to_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids("<|endoftext|>")
        self.image_id, self.video_id = ids(self.chat.image_pad), ids(self.chat.video_pad)
        self.vision_end_id, self.im_end_id = ids(self.chat.vision_end), ids(self.chat.im_end)
        self.vision_start_id = ids(self.chat.vision_start)

    # -- one sample -------------------------------------------------------------------
    def encode(self, sample: Any, *, train: bool) -> dict[str, Any]:
        """train=True: the full conversation with labels; False: the prompt up to the assistant turn."""
        messages = list(sample.messages)
        packed = [pack_media(m, self.geometry) for m in sample.media]
        if not train and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        pieces: list[tuple[str, bool]] = []  # (text, is_label)
        if self.chat.default_system is not None and (not messages or messages[0]["role"] != "system"):
            pieces.append((f"{self.chat.im_start}system\n{self.chat.default_system}{self.chat.im_end}\n", False))
        media_iter = iter(packed)
        n_tags = 0
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "assistant":
                pieces.append((f"{self.chat.im_start}assistant\n", False))
                pieces.append((f"{content}{self.chat.im_end}", True))
                pieces.append(("\n", False))
                continue

            def expand(match, _source=getattr(sample, "id", "?")):
                nonlocal n_tags
                n_tags += 1
                item = next(media_iter, None)
                if item is None:
                    raise PhotonError(f"record {_source}: more <image>/<video> tags than media")
                return self.chat.visual_block(item)

            text = MEDIA_TAG.sub(expand, content)
            pieces.append((f"{self.chat.im_start}{role}\n{text}{self.chat.im_end}\n", False))
        if n_tags != len(packed):
            raise PhotonError(f"record {getattr(sample, 'id', '?')}: {len(packed)} media but {n_tags} tags")
        if not train:
            pieces.append((f"{self.chat.im_start}assistant\n", False))
        input_ids: list[int] = []
        labels: list[int] = []
        for text, is_label in pieces:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            input_ids += ids
            labels += ids if is_label else [IGNORE_INDEX] * len(ids)
        ids_t = torch.tensor(input_ids, dtype=torch.long)
        return {
            "id": getattr(sample, "id", None),
            "input_ids": ids_t,
            "labels": torch.tensor(labels, dtype=torch.long),
            "visuals": packed,
        }

    # -- a batch --------------------------------------------------------------------
    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad to the longest sample; stack media in order; build M-RoPE side inputs."""
        length = max(len(e["input_ids"]) for e in encoded)
        B = len(encoded)
        input_ids = torch.full((B, length), self.pad_id, dtype=torch.long)
        labels = torch.full((B, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(B, length, dtype=torch.long)
        for b, e in enumerate(encoded):
            n = len(e["input_ids"])
            input_ids[b, length - n :] = e["input_ids"]
            labels[b, length - n :] = e["labels"]
            attention_mask[b, length - n :] = 1
        mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int)
        mm_token_type_ids[input_ids == self.image_id] = 1
        mm_token_type_ids[input_ids == self.video_id] = 2
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "mm_token_type_ids": mm_token_type_ids,
            "instruction_mask": self.instructions(input_ids) if self.instructions else instruction_mask(
                input_ids, self.vision_end_id, self.im_end_id,
                exclude=(mm_token_type_ids > 0) | (input_ids == self.vision_start_id),  # as the adapters do
            ),
            "ids": [e.get("id") for e in encoded],
        }
        for kind, pixels_key, grid_key in (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw")):
            items = [v for e in encoded for v in e["visuals"] if v.kind == kind]
            if items:
                batch[pixels_key] = torch.cat([v.pixel_values for v in items])
                batch[grid_key] = torch.stack([v.grid_thw for v in items])
                if kind == "video" and not self.chat.frame_timestamps:
                    batch["second_per_grid_ts"] = torch.tensor([v.second_per_grid for v in items])
        return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch entries a Qwen-VL forward/generate accepts (drops ids and the instruction mask)."""
    return {k: v for k, v in batch.items() if k not in ("ids", "instruction_mask")}


def prompt_length_check(n_placeholders: int, grid_thw: torch.Tensor, merge_size: int) -> None:
    expected = int(grid_thw.prod(-1).sum()) // merge_size**2
    if n_placeholders != expected:
        raise PhotonError(
            f"the prompt has {n_placeholders} visual placeholder tokens but the visual grid gives {expected}"
            f" (grid {grid_thw.tolist()}, merge {merge_size}); build prompts with photon's encoder"
        )
