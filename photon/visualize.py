"""Pictures of what the selection kept: each medium's frames with kept tokens coloured and
dropped ones greyed (the paper's Figure 3), and the selection record as reloadable JSON.

A selection record (photon.last_selection) holds `keep` over the sample's visual tokens in
sequence order and `grids`: per medium, its LLM token grid (t, h, w). Qwen orders a medium's
tokens t-major, then rows, then columns; temporal token r covers model-input frames
[r * temporal_patch, (r + 1) * temporal_patch) and each spatial token a square of
H / h pixels. A panel shows the middle frame of one temporal token: for a CT volume the
axial slice in the model-input convention (rows anterior -> posterior, columns patient-left
-> patient-right), for a video a frame.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from photon.core.errors import PhotonError

PANEL = 224  # longest side of one panel, pixels
COLUMNS = 8
MAX_PANELS = 16  # temporal rows drawn per medium (evenly spaced when there are more)
LABEL_HEIGHT = 16
HEADER_HEIGHT = 20
LEGEND_HEIGHT = 18  # the colour key under the title
SWATCH = 12
KEPT_TINT = np.array([255.0, 120.0, 0.0])
KEPT_ALPHA = 0.45
DROPPED_GREY = 96.0
DROPPED_CONTRAST = 0.35  # how much of the image stays visible under the grey
GRID_LINE = (40, 40, 40)
OUTLINE = (0, 200, 255)  # tokens a caller marks (e.g. the region a question is about)
SELECTION_FILE = "selection.json"


def token_grids(record: dict[str, Any]) -> list[np.ndarray]:
    """The record's keep list cut per medium into (t, h, w) bool arrays."""
    keep = np.asarray(record["keep"], dtype=bool)
    grids, offset = [], 0
    for grid in record["grids"]:
        t, h, w = grid["t"], grid["h"], grid["w"]
        size = t * h * w
        if offset + size > keep.size:
            raise PhotonError(f"selection record: grids {record['grids']} need {offset + size} keep flags, it has {keep.size}")
        grids.append(keep[offset : offset + size].reshape(t, h, w))
        offset += size
    return grids


def panel_rows(t: int, max_panels: int = MAX_PANELS) -> list[int]:
    """Which temporal token rows get a panel: all, or max_panels evenly spaced."""
    if t <= max_panels:
        return list(range(t))
    return sorted({int(round(x)) for x in np.linspace(0, t - 1, max_panels)})


def _rgb(frame: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) float in [0, 255]."""
    image = np.clip(np.asarray(frame, dtype=np.float32), 0, 1) * 255.0
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return image[:3].transpose(1, 2, 0)


def shade(frame: np.ndarray, keep_hw: np.ndarray) -> np.ndarray:
    """One frame (C, H, W) with kept token squares tinted and dropped ones greyed: (H, W, 3) uint8."""
    _, height, width = frame.shape
    h, w = keep_hw.shape
    if height % h or width % w or height // h != width // w:
        raise PhotonError(f"a {height}x{width} frame does not split into the selection's {h}x{w} token grid")
    cell = height // h
    kept = np.kron(keep_hw, np.ones((cell, cell), dtype=bool))[..., None]
    image = _rgb(frame)
    luminance = image.mean(axis=2, keepdims=True)
    tinted = (1 - KEPT_ALPHA) * image + KEPT_ALPHA * KEPT_TINT
    greyed = np.repeat(DROPPED_CONTRAST * luminance + (1 - DROPPED_CONTRAST) * DROPPED_GREY, 3, axis=2)
    return np.where(kept, tinted, greyed).round().astype(np.uint8)


def panel_size(height: int, width: int, panel: int = PANEL) -> tuple[int, int]:
    scale = panel / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def draw_medium(
    frames: np.ndarray,
    keep_thw: np.ndarray,
    *,
    temporal_patch: int,
    kind: str = "volume",
    title: str = "",
    panel: int = PANEL,
    columns: int = COLUMNS,
    max_panels: int = MAX_PANELS,
    outline: np.ndarray | None = None,
):
    """A grid of panels, one per drawn temporal token row, as a PIL image. `outline`, a bool
    array shaped like keep_thw, frames the marked tokens."""
    from PIL import Image, ImageDraw, ImageFont

    frames = np.asarray(frames)
    n_frames = frames.shape[0]
    t, h, w = keep_thw.shape
    if math.ceil(n_frames / temporal_patch) != t:
        raise PhotonError(
            f"{n_frames} frames in temporal patches of {temporal_patch} make {math.ceil(n_frames / temporal_patch)} "
            f"token rows, the selection has {t}; draw with the input the model was given"
        )
    rows = panel_rows(t, max_panels)
    pw, ph = panel_size(frames.shape[2], frames.shape[3], panel)
    cols = min(columns, len(rows))
    grid_rows = math.ceil(len(rows) / cols)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    key = [("kept", tuple(int(v) for v in np.asarray(KEPT_TINT).ravel()[:3]), None), ("dropped", (int(DROPPED_GREY),) * 3, None)]
    if outline is not None:
        key.append(("the question's region", None, OUTLINE))
    key_width = sum(SWATCH + 6 + math.ceil(measure.textlength(label, font=font)) + 14 for label, _, _ in key)
    title_width = math.ceil(measure.textlength(title, font=font)) + 8
    header = HEADER_HEIGHT + LEGEND_HEIGHT
    canvas = Image.new("RGB", (max(cols * pw, title_width, key_width + 8), header + grid_rows * (ph + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    x = 4
    for label, fill, edge in key:  # the legend: what the colours and frames mean
        box = [x, HEADER_HEIGHT + 2, x + SWATCH, HEADER_HEIGHT + 2 + SWATCH]
        draw.rectangle(box, fill=fill or "white", outline=edge or (0, 0, 0), width=2 if edge else 1)
        draw.text((x + SWATCH + 6, HEADER_HEIGHT + 2), label, fill=(0, 0, 0), font=font)
        x += SWATCH + 6 + math.ceil(measure.textlength(label, font=font)) + 14
    unit = {"volume": "slices", "video": "frames"}.get(kind, "frame")
    for n, r in enumerate(rows):
        first, last = r * temporal_patch, min((r + 1) * temporal_patch, n_frames) - 1
        image = Image.fromarray(shade(frames[(first + last) // 2], keep_thw[r])).resize((pw, ph), Image.NEAREST)
        x, y = (n % cols) * pw, header + (n // cols) * (ph + LABEL_HEIGHT)
        canvas.paste(image, (x, y))
        for i in range(h + 1):
            yy = y + min(round(i * ph / h), ph - 1)
            draw.line([(x, yy), (x + pw - 1, yy)], fill=GRID_LINE)
        for j in range(w + 1):
            xx = x + min(round(j * pw / w), pw - 1)
            draw.line([(xx, y), (xx, y + ph - 1)], fill=GRID_LINE)
        if outline is not None:
            for i, j in zip(*np.nonzero(outline[r])):
                box = [x + round(j * pw / w), y + round(i * ph / h), x + round((j + 1) * pw / w) - 1, y + round((i + 1) * ph / h) - 1]
                draw.rectangle(box, outline=OUTLINE, width=2)
        span = f"{unit} {first}" if first == last else f"{unit} {first}-{last}"
        draw.text((x + 3, y + ph + 2), f"{span}: kept {int(keep_thw[r].sum())}/{h * w}", fill=(0, 0, 0), font=font)
    return canvas


def describe_rule(rule: str) -> str:
    """"mode: rule" as a person reads it: zero_shot:mean -> "zero_shot: mean"; trained stays."""
    mode, _, how = rule.partition(":")
    return f"{mode}: {how}" if how else rule


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_selection(
    folder: str | Path,
    record: dict[str, Any],
    media: Sequence[Any],
    *,
    temporal_patch: int,
    context: dict[str, Any] | None = None,
) -> list[Path]:
    """Write folder/selection.json (the record and context) and one overlay-K.png per medium.

    media: the photon.modalities.base.Media the model was given, in prompt order.
    Returns the written paths, JSON first.
    """
    folder = Path(folder)
    grids = token_grids(record)
    if len(grids) != len(media):
        raise PhotonError(f"the selection covers {len(grids)} media, {len(media)} were given")
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"overlay-{k}.png" for k in range(len(media))]
    title = f"{describe_rule(record['rule'])} | kept {record['n_kept']}/{record['n_visual']} visual tokens | layer {record['layer']}"
    written = []
    for name, medium, keep in zip(names, media, grids):
        image = draw_medium(medium.frames, keep, temporal_patch=temporal_patch, kind=medium.kind, title=title)
        _write_atomic(folder / name, lambda path, image=image: image.save(path, format="PNG"))
        written.append(folder / name)
    document = {**(context or {}), "overlays": names, "selection": record}
    path = folder / SELECTION_FILE
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(document, indent=1), encoding="utf-8"))
    return [path, *written]


def load_selection(path: str | Path) -> dict[str, Any]:
    """The selection record a save_selection folder (or its selection.json) holds."""
    path = Path(path)
    if path.is_dir():
        path = path / SELECTION_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))["selection"]
    except (OSError, ValueError, KeyError) as exc:
        raise PhotonError(f"{path}: not a selection file written by `photon attach --save-selection` ({exc})") from exc
