"""Video files (NExT-QA mp4): uniform frame sampling, decord when installed, PyAV otherwise.

The sampled frame count follows Qwen's rule: duration x fps, clamped to [min_frames,
max_frames] and to the frames the file has, then a multiple of frame_factor. The chosen
frames' timestamps (seconds) go to meta["timestamps"] (Qwen3-VL prints them between frame
blocks); Media.fps is the rate of the sampled frames.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.modalities.base import Media, Modality, explain
from photon.modalities.config import VideoConfig, options_from
from photon.modalities.resize import frame_pixel_bounds, resize_frames, smart_resize

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BACKENDS = ("auto", "decord", "pyav")


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps


def choose_backend(requested: str) -> str:
    if requested not in BACKENDS:
        raise PhotonError(f"video backend {requested!r} must be one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    if importlib.util.find_spec("decord" if requested == "decord" else "av") is None:
        raise PhotonError(f"video backend {requested} is not installed: pip install 'photon[video]'")
    return requested


def sample_count(info: VideoInfo, cfg: VideoConfig) -> int:
    wanted = int(info.duration * cfg.fps)
    count = min(max(wanted, cfg.min_frames), cfg.max_frames, info.frames)
    if count >= cfg.frame_factor:
        count -= count % cfg.frame_factor
    return max(count, 1)


def sample_indices(info: VideoInfo, cfg: VideoConfig) -> np.ndarray:
    """Uniformly spread frame indices over the whole video, first and last frame included."""
    return np.linspace(0, info.frames - 1, sample_count(info, cfg)).round().astype(int)


def probe(path: Path, backend: str) -> VideoInfo:
    try:
        if backend == "decord":
            reader = _decord_reader(path)
            height, width = reader[0].shape[:2]
            return VideoInfo(len(reader), float(reader.get_avg_fps()), int(height), int(width))
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            return VideoInfo(int(frames), fps, int(stream.codec_context.height), int(stream.codec_context.width))
    except PhotonError:
        raise
    except Exception as exc:
        raise PhotonError(f"{path}: not a readable video ({explain(exc)}); truncated or corrupt?") from exc


def _decord_reader(path: Path):
    from decord import VideoReader, cpu

    return VideoReader(str(path), ctx=cpu(0), num_threads=1)


def read_frames(path: Path, indices: np.ndarray, backend: str) -> np.ndarray:
    """(n, H, W, 3) uint8 frames at `indices`."""
    try:
        if backend == "decord":
            return _decord_reader(path).get_batch(list(indices)).asnumpy()
        return _read_frames_pyav(path, indices)
    except PhotonError:
        raise
    except Exception as exc:
        raise PhotonError(f"{path}: cannot decode frames ({explain(exc)}); truncated or corrupt?") from exc


def _read_frames_pyav(path: Path, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = {int(i) for i in indices}
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n in wanted:
                found[n] = frame.to_ndarray(format="rgb24")
            if n >= max(wanted):
                break
    if not found:
        raise PhotonError(f"{path}: no frame could be decoded")
    # A container may announce more frames than it holds: fall back to the last decoded one.
    return np.stack([found.get(int(i), found[max(found)]) for i in indices])


def load_video(path: str | Path, **options) -> Media:
    path = Path(path)
    cfg = options_from(VideoConfig, options, str(path))
    backend = choose_backend(cfg.backend)
    info = probe(path, backend)
    if info.frames < 1 or info.fps <= 0:
        raise PhotonError(f"{path}: the video reports {info.frames} frames at {info.fps} fps; expected a playable video")
    indices = sample_indices(info, cfg)
    raw = read_frames(path, indices, backend)
    height, width = frame_size(raw.shape[1], raw.shape[2], len(indices), cfg)
    frames = resize_frames(raw.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, height, width)
    meta = {"timestamps": [round(float(i) / info.fps, 4) for i in indices], "indices": indices.tolist(),
            "video_fps": info.fps, "video_frames": info.frames, "duration": round(info.duration, 4),
            "original_size": [int(raw.shape[1]), int(raw.shape[2])], "backend": backend}
    return Media(frames=frames, kind="video", source=str(path), fps=len(indices) / info.duration, meta=meta)


def describe_video(path: str | Path) -> dict[str, Any]:
    backend = choose_backend("auto")
    info = probe(Path(path), backend)
    return {"kind": "video", "frames": info.frames, "fps": info.fps, "duration": round(info.duration, 3),
            "size": [info.height, info.width], "backend": backend}


def model_shape(facts: dict[str, Any], **options) -> tuple[int, int, int, int]:
    cfg = options_from(VideoConfig, options, "video options")
    info = VideoInfo(facts["frames"], facts["fps"], *facts["size"])
    count = sample_count(info, cfg)
    height, width = frame_size(info.height, info.width, count, cfg)
    return (count, 3, height, width)


def frame_size(height: int, width: int, frames: int, cfg: VideoConfig) -> tuple[int, int]:
    """Each sampled frame's size: Qwen's smart_resize within the per-frame bounds, tightened by
    a budget over all frames when one is set (total_pixels, Qwen3-VL's video processor)."""
    low, high = frame_pixel_bounds(cfg.min_pixels, cfg.max_pixels, cfg.total_pixels, cfg.min_total_pixels, frames)
    return smart_resize(height, width, cfg.factor, low, high)


@hookimpl
def register_modalities(register):
    register("video", Modality(kind="video", load=load_video, describe=describe_video, model_shape=model_shape))


@hookimpl
def choose_modality(path, kind):
    if kind in (None, "video") and Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    return None
