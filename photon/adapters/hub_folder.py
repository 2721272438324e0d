"""A model folder read the way its owners laid it out, for both Qwen-VL families.

What Qwen2.5-VL and Qwen3-VL folders share lives here once: resolving a hub id through the
Hugging Face cache, checking the folder before anything loads (tokenizer files and ids, weight
shards), loading the weights with a strict report, and reading the chat template and the
processor configs that decide image and video sizes. The adapters add only what differs
(config names of transformers 4.x, the released Photon key names, the encoder).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from photon.core.errors import PhotonError

# The released Photon checkpoints (transformers 4.51 layout) keep the 3D kernel in the vision
# tower's `vision_patch_embed` (PHOTON_SPEC 6c); the stock class calls it `patch_embed`.
RELEASE_KEY_MAPPING = {r"^visual\.vision_patch_embed\.": "visual.patch_embed."}
# Present in the released checkpoints and read by photon_weights (the threshold MLP), or unused (pos_proj).
RELEASE_EXTRA_KEYS = r"\.atp\."
# Tokens whose ids the model's config fixes: a tokenizer that disagrees would place the visual
# features at the wrong positions (or at none).
VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
TOKENIZER_FILES = ("tokenizer.json", ("vocab.json", "merges.txt"))


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def download_command(repo_id: str) -> str:
    """The command this huggingface_hub ships for a download: `hf` (0.34 and later; huggingface_hub
    2.x has no other), `huggingface-cli` before."""
    import importlib.util

    has_hf = importlib.util.find_spec("huggingface_hub.cli.hf") is not None
    return f"{'hf' if has_hf else 'huggingface-cli'} download {repo_id}"


def resolve(source: str, *, alias: str | None = None) -> Path:
    """A local folder as it is; a hub id through the Hugging Face cache (offline with
    HF_HUB_OFFLINE=1), as from_pretrained resolves it."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise PhotonError(f"{source}: a file, not a model folder")
    named = f"{alias} (hub id {source})" if alias else f"hub id {source!r}"
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1
    if looks_local:
        raise PhotonError(f"{source}: no such folder, and not a hub id (owner/name); pass a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source))
    except Exception as exc:  # offline and not cached, no network, no such repo, no access
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "not in the cache and HF_HUB_OFFLINE is set" if offline else f"not cached and not reachable ({type(exc).__name__})"
        raise PhotonError(
            f"{named}: {why}; looked in the Hugging Face cache {hub_cache()}. Download it where there is "
            f"network ({download_command(source)}), or pass its local folder as --backbone DIR"
        ) from exc


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PhotonError(f"{path}: not readable JSON ({exc})") from exc


# -- before loading -----------------------------------------------------------------------
def check_tokenizer_files(folder: Path) -> None:
    for entry in TOKENIZER_FILES:
        names = (entry,) if isinstance(entry, str) else entry
        if all((folder / name).is_file() for name in names):
            return
    raise PhotonError(
        f"{folder}: no tokenizer (expected tokenizer.json, or vocab.json and merges.txt, as the hub folders ship); "
        "copy the tokenizer files of the model this folder came from"
    )


def check_shards(folder: Path) -> None:
    """Every shard the index names is present, before from_pretrained fails on the first missing one."""
    for index in folder.glob("*.safetensors.index.json"):
        names = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise PhotonError(f"{folder}: weight shard(s) {', '.join(missing)} named in {index.name} are missing; "
                              "the download is incomplete")
    if not any(folder.glob("*.safetensors")):
        raise PhotonError(f"{folder}: no *.safetensors weights; Photon loads safetensors only")


def check_attention(attn_implementation: str | None) -> None:
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise PhotonError("--attn flash_attention_2 needs the flash-attn package (pip install 'photon[flash]' on a CUDA "
                          "machine); use sdpa, the default, or eager")
    if attn_implementation not in (None, "sdpa", "eager", "flash_attention_2"):
        raise PhotonError(f"attention implementation {attn_implementation!r}: expected sdpa, eager or flash_attention_2")


def check_token_ids(folder: Path, tokenizer, config) -> None:
    """The tokenizer's visual special tokens carry the ids the model's config expects."""
    wrong = []
    for field_name, token in VISION_TOKENS.items():
        expected = getattr(config, field_name, None)
        if expected is None:
            continue
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            wrong.append(f"{token} is {got} in the tokenizer, {expected} in config.json ({field_name})")
    if wrong:
        raise PhotonError(f"{folder}: tokenizer and config disagree: {'; '.join(wrong)}; the tokenizer files belong to another model")


# -- loading ------------------------------------------------------------------------------
def load_checked(model_class, folder: Path, config, *, dtype: Any, trust_remote_code: bool, strict: bool,
                 key_mapping: dict[str, str] | None = None):
    """The tokenizer and the model of a folder, each file checked before the weights are read:
    tokenizer files, visual token ids against the config, shards, then a strict weight load."""
    from transformers import AutoTokenizer

    check_tokenizer_files(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    check_token_ids(folder, tokenizer, config)
    check_shards(folder)
    model = load_weights(model_class, folder, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
                         strict=strict, key_mapping=key_mapping, ignore_unexpected=RELEASE_EXTRA_KEYS)
    return tokenizer, model


def load_weights(
    model_class,
    folder: Path,
    *,
    config,
    dtype: Any,
    trust_remote_code: bool,
    strict: bool = True,
    key_mapping: dict[str, str] | None = None,
    ignore_unexpected: str | None = None,
):
    """from_pretrained with its load report checked: a weight the folder lacks (left random) or
    holds under a name the model does not know (dropped) is an error naming the keys, unless
    strict=False (then a warning)."""
    import warnings

    ignored = model_class._keys_to_ignore_on_load_unexpected
    if ignore_unexpected:
        model_class._keys_to_ignore_on_load_unexpected = [*(ignored or []), ignore_unexpected]
    try:
        model, info = model_class.from_pretrained(
            folder, config=config, dtype=dtype, trust_remote_code=trust_remote_code, key_mapping=key_mapping,
            output_loading_info=True,
        )
    except OSError as exc:
        raise PhotonError(f"{folder}: cannot read the weights ({exc})") from exc
    finally:
        model_class._keys_to_ignore_on_load_unexpected = ignored
    import re

    unexpected = [k for k in info.get("unexpected_keys", []) if not (ignore_unexpected and re.search(ignore_unexpected, k))]
    problems = [f"{label} {', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing (would be random):", list(info.get("missing_keys", []))),
                                    ("unexpected (would be dropped):", unexpected),
                                    ("wrong shape:", [str(k) for k in info.get("mismatched_keys", [])]))
                if keys]
    if problems:
        message = f"{folder}: the weights do not match the model: {'; '.join(problems)}"
        if strict:
            raise PhotonError(message + ". Pass allow_weight_mismatch (--allow-weight-mismatch) to load anyway")
        warnings.warn(message, stacklevel=3)
    return model


# -- the chat template ----------------------------------------------------------------------
def chat_template(folder: Path) -> str | None:
    """The folder's own chat template: chat_template.jinja, chat_template.json (the processor's,
    which AutoProcessor.apply_chat_template uses), then tokenizer_config.json's; None if none."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        template = read_json(path).get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str) and template.strip():
            return template
    return None


# -- processor configs ----------------------------------------------------------------------
def processor_configs(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image processor config, video processor config); the video one falls back to the image
    one, as Qwen's processors share a single file in older hub folders."""
    image = read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    video_path = folder / "video_preprocessor_config.json"
    video = read_json(video_path) if video_path.is_file() else {}
    return image, video


def _pixel_bounds(raw: dict[str, Any]) -> tuple[int | None, int | None]:
    """(min, max) pixels from either layout: min_pixels/max_pixels (Qwen2.5-VL), or
    size.shortest_edge/longest_edge (Qwen3-VL; also what transformers saves for Qwen2.5-VL)."""
    size = raw.get("size") or {}
    low = raw.get("min_pixels", size.get("min_pixels", size.get("shortest_edge")))
    high = raw.get("max_pixels", size.get("max_pixels", size.get("longest_edge")))
    return (int(low) if low is not None else None, int(high) if high is not None else None)


def check_processor_geometry(folder: Path, raw: dict[str, Any], *, patch_size: int, merge_size: int, name: str) -> None:
    for key, expected in (("patch_size", patch_size), ("merge_size", merge_size)):
        if key in raw and int(raw[key]) != expected:
            raise PhotonError(f"{folder / name}: {key} {raw[key]} but the model's vision config has {expected}; "
                              "the processor files belong to another model")


def media_defaults(folder: Path, *, patch_size: int, merge_size: int, total_video_budget: bool) -> dict[str, dict[str, Any]]:
    """Loader options the folder's processor configs imply, for media_options to apply over
    Photon's defaults and under the user's: image pixel bounds, and video frame sampling and
    pixel bounds. total_video_budget: the video `size` bounds all sampled frames together
    (Qwen3-VL's video processor), not each frame."""
    image, video = processor_configs(folder)
    check_processor_geometry(folder, image, patch_size=patch_size, merge_size=merge_size, name="preprocessor_config.json")
    check_processor_geometry(folder, video, patch_size=patch_size, merge_size=merge_size, name="video_preprocessor_config.json")
    out: dict[str, dict[str, Any]] = {}
    low, high = _pixel_bounds(image)
    frames = {k: v for k, v in (("min_pixels", low), ("max_pixels", high)) if v is not None}
    if frames:
        out["frames"] = frames
    video_options: dict[str, Any] = {}
    if video:
        low, high = _pixel_bounds(video)
        if total_video_budget:
            video_options["min_pixels"] = 0
            if high is not None:
                video_options.update(max_pixels=high, total_pixels=high)
            if low is not None:
                video_options["min_total_pixels"] = low
        else:
            video_options.update({k: v for k, v in (("min_pixels", low), ("max_pixels", high)) if v is not None})
        for key in ("fps", "min_frames", "max_frames"):
            if video.get(key) is not None:
                video_options[key] = float(video[key]) if key == "fps" else int(video[key])
    if video_options:
        out["video"] = video_options
    return out

