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
    if media.kind == "volume" and media.meta.get("windows") and geometry.in_channels == 1 and channels > 1:
        raise PhotonError(f"{media.source}: {channels} HU-window channels (ct.windows) for a backbone whose 3D patch "
                          "embedding takes one grey channel; windows are for the stock RGB embedding (unset ct.windows)")
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
        template: str | None = None,
    ):
        """instructions(input_ids) -> (B, L) bool: the batch's instruction mask, when the backbone's
        adapter reads a different one than "after a vision block, before <|im_end|>".
        template: the model folder's Jinja chat template; None writes the built-in Qwen format."""
        self.tokenizer = tokenizer
        self.geometry = geometry
        self.chat = chat or ChatFormat()
        self.instructions = instructions
        self.template = template
        ids = tokenizer.convert_tokens_to_ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids("<|endoftext|>")
        self.image_id, self.video_id = ids(self.chat.image_pad), ids(self.chat.video_pad)
        self.vision_end_id, self.im_end_id = ids(self.chat.vision_end), ids(self.chat.im_end)
        self.im_start_id = ids(self.chat.im_start)
        self.vision_start_id = ids(self.chat.vision_start)

    # -- one sample -------------------------------------------------------------------
    def encode(self, sample: Any, *, train: bool) -> dict[str, Any]:
        """train=True: the full conversation with labels; False: the prompt up to the assistant turn."""
        messages = list(sample.messages)
        packed = [pack_media(m, self.geometry) for m in sample.media]
        if not train and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        source = getattr(sample, "id", "?")
        n_tags = sum(len(MEDIA_TAG.findall(m["content"])) for m in messages if m["role"] != "assistant")
        if n_tags > len(packed):
            raise PhotonError(f"record {source}: more <image>/<video> tags than media")
        if n_tags != len(packed):
            raise PhotonError(f"record {source}: {len(packed)} media but {n_tags} tags")
        if self.template is not None:
            pieces = self._template_pieces(messages, packed, train=train, source=source)
        else:
            pieces = self._builtin_pieces(messages, packed, train=train)
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
            "prompt": "".join(text for text, _ in pieces),
        }

    def _builtin_pieces(self, messages: list[dict], packed: list[PackedVisual], *, train: bool) -> list[tuple[str, bool]]:
        """The Qwen chat format written out (the offline tiny backbones, whose folders have no template)."""
        chat = self.chat
        pieces: list[tuple[str, bool]] = []  # (text, is_label)
        if chat.default_system is not None and (not messages or messages[0]["role"] != "system"):
            pieces.append((f"{chat.im_start}system\n{chat.default_system}{chat.im_end}\n", False))
        media_iter = iter(packed)
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "assistant":
                pieces.append((f"{chat.im_start}assistant\n", False))
                pieces.append((f"{content}{chat.im_end}", True))
                pieces.append(("\n", False))
                continue
            text = MEDIA_TAG.sub(lambda _: chat.visual_block(next(media_iter)), content)
            pieces.append((f"{chat.im_start}{role}\n{text}{chat.im_end}\n", False))
        if not train:
            pieces.append((f"{chat.im_start}assistant\n", False))
        return pieces

    def _template_pieces(self, messages: list[dict], packed: list[PackedVisual], *, train: bool, source: Any) -> list[tuple[str, bool]]:
        """The folder's own chat template, rendered as the processor renders it: one placeholder
        per medium, then each placeholder expanded to the medium's visual block. Labels cover each
        assistant turn's text up to its <|im_end|>, found by rendering the conversation up to the
        turn with and without it."""
        media_iter = iter(packed)
        structured = []
        for message in messages:
            content = message["content"]
            if message["role"] != "assistant" and MEDIA_TAG.search(content):
                parts: list[dict] = []
                for piece in re.split(r"(<(?:image|video)>)", content):
                    if MEDIA_TAG.fullmatch(piece):
                        parts.append({"type": next(media_iter).kind})
                    elif piece:
                        parts.append({"type": "text", "text": piece})
                content = parts
            structured.append({"role": message["role"], "content": content})

        def render(upto: int, generation_prompt: bool) -> str:
            return self.tokenizer.apply_chat_template(
                structured[:upto], chat_template=self.template, tokenize=False, add_generation_prompt=generation_prompt
            )

        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(structured):
            if message["role"] != "assistant":
                continue
            head, full = render(i, True), render(i + 1, False)
            if not (head.startswith(done) and full.startswith(head)):
                raise PhotonError(
                    f"record {source}: the chat template does not render a conversation as a prefix of its continuation; "
                    "Photon cannot place the answer labels with it"
                )
            body = full[len(head):]
            cut = body.rfind(self.chat.im_end)
            cut = len(body) if cut < 0 else cut + len(self.chat.im_end)
            pieces += [(head[len(done):], False), (body[:cut], True), (body[cut:], False)]
            done = full
        final = render(len(structured), not train)
        if not final.startswith(done):
            raise PhotonError(f"record {source}: the chat template renders the prompt inconsistently; cannot encode it")
        pieces.append((final[len(done):], False))
        return self._expand_placeholders(pieces, packed, source)

    def _expand_placeholders(self, pieces: list[tuple[str, bool]], packed: list[PackedVisual], source: Any) -> list[tuple[str, bool]]:
        chat = self.chat
        placeholder = re.compile(re.escape(chat.vision_start) + "(" + re.escape(chat.image_pad) + "|"
                                 + re.escape(chat.video_pad) + ")" + re.escape(chat.vision_end))
        media_iter = iter(packed)
        expanded = []
        found = 0

        def block(_match):
            nonlocal found
            found += 1
            item = next(media_iter, None)
            if item is None:
                raise PhotonError(f"record {source}: the chat template wrote more visual placeholders than the record has media")
            return chat.visual_block(item)

        for text, is_label in pieces:
            expanded.append((text if is_label else placeholder.sub(block, text), is_label))
        if found != len(packed):
            raise PhotonError(f"record {source}: the chat template placed {found} of {len(packed)} media; "
                              "it does not render image/video content items as <|vision_start|>...<|vision_end|>")
        return expanded

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
                im_start_id=self.im_start_id,
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


PLACEHOLDER_RUN = re.compile(r"(<\|(?:image|video)_pad\|>)\1*")


def collapse_placeholders(text: str) -> str:
    """The prompt as a person reads it: each run of <|image_pad|> / <|video_pad|> becomes one
    marker with its count, e.g. <|video_pad|>*1000."""
    return PLACEHOLDER_RUN.sub(lambda m: f"{m.group(1)}*{len(m.group(0)) // len(m.group(1))}", text)


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
