"""Arguments `photon attach` and `photon infer` share: which model, how it is wrapped, how it decodes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from omegaconf import OmegaConf

from photon import opening
from photon.core.config import SelectionConfig, load_config
from photon.core.errors import PhotonError
from photon.inference import DEFAULT_MAX_NEW_TOKENS
from photon.modalities.config import DataConfig
from photon.opening import OpenRequest, Opened
from photon.wrapping import media_options

MODALITIES = ("ct", "frames", "video")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", help="a registered backbone (`photon plugins`) or a Hugging Face model folder")
    model.add_argument("--checkpoint", help="a Photon checkpoint folder (`photon attach --save`, a training run's) or a model folder")
    model.add_argument("--mode", choices=("zero_shot", "trained"),
                       help="zero_shot: a training-free rule; trained: the threshold predictor "
                            "(default: trained for checkpoints with a trained predictor, else zero_shot)")
    model.add_argument("--pruner", default="photon",
                       help="which registered pruner selects the tokens (`photon plugins`): photon (default), or a "
                            "baseline such as random, fastv, visionzip, divprune, ise-topk (these need --keep-ratio)")
    model.add_argument("--layer", type=int, help="selection layer (default: floor(layers / 4) - 1, or the checkpoint's)")
    model.add_argument("--keep-ratio", type=float, help="keep this fraction of visual tokens, ranked by saliency")
    model.add_argument("--theta", type=float, help="keep visual tokens whose normalised saliency is above this")
    model.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="selection settings (docs/config.md, Selection), e.g. min_keep=8 cache=keep_early")
    model.add_argument("--media", action="append", default=[], metavar="KEY=VALUE",
                       help="loader option (docs/config.md, Data), e.g. ct.preprocess=false video.fps=1; repeatable")
    model.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    model.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="cast the model after loading (default: as stored)")
    model.add_argument("--attn", dest="attn_implementation", choices=("sdpa", "eager", "flash_attention_2"),
                       help="attention implementation: sdpa (default), eager, flash_attention_2 (needs the flash extra)")
    model.add_argument("--backbone-only", action="store_true",
                       help="open a Photon checkpoint's backbone without its trained head (zero-shot selection), e.g. "
                            "when the head's file is missing or damaged")
    model.add_argument("--allow-weight-mismatch", action="store_true",
                       help="load a folder whose weights lack some of the model's or hold unknown ones (left random / "
                            "dropped, with a warning); by default that is an error naming the keys")
    model.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                       help=f"answer length limit; decoding is greedy (default {DEFAULT_MAX_NEW_TOKENS})")


def selection_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotlist and the shortcut flags as SelectionConfig fields."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.from_dotlist(list(args.overrides)))
    except Exception as exc:
        raise PhotonError(f"selection overrides {' '.join(args.overrides)}: expected KEY=VALUE ({exc})") from exc
    known = {f.name for f in dataclasses.fields(SelectionConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PhotonError(f"unknown selection setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("layer", "keep_ratio", "theta"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def loader_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--media KEY=VALUE as {modality: {option: value}}, checked against the loaders' schemas."""
    if not args.media:
        return {}
    load_config(None, args.media, schema=DataConfig)  # unknown keys and bad types fail here, by name
    given = OmegaConf.to_container(OmegaConf.from_dotlist(list(args.media)))
    other = sorted(set(given) - set(MODALITIES))
    if other or not all(isinstance(v, dict) for v in given.values()):
        raise PhotonError(f"--media takes loader options {', '.join(f'{m}.KEY=VALUE' for m in MODALITIES)}; got {' '.join(args.media)}")
    return given


def request_from(args: argparse.Namespace) -> OpenRequest:
    """The arguments as the one plain request every front end hands photon.opening."""
    if not args.backbone and not args.checkpoint:
        raise PhotonError("give --backbone NAME (see `photon plugins`) or --checkpoint DIR")
    return OpenRequest(
        args.checkpoint or args.backbone, backbone=args.backbone if args.checkpoint else None, mode=args.mode,
        pruner=args.pruner, overrides=selection_overrides(args), device=args.device, dtype=args.dtype,
        attn_implementation=args.attn_implementation, allow_weight_mismatch=args.allow_weight_mismatch,
        backbone_only=args.backbone_only,
    )


def check_model_arguments(args: argparse.Namespace) -> None:
    """Cheap checks before the (slow) model load: names, types and ranges of every setting, the
    layer against the model's own decoder (read from its config, no weights)."""
    if args.max_new_tokens < 1:
        raise PhotonError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    loader_overrides(args)
    request = request_from(args)
    opening.check_request(request)
    if request.overrides.get("layer") is not None:
        source = opening.resolve_source(request.source, backbone=request.backbone, verify=False)
        opening.check_request(request, source)
    opening.resolve_device(args.device)  # a device this machine lacks is named before loading


def open_from(args: argparse.Namespace) -> tuple[Opened, dict[str, dict[str, Any]]]:
    """The wrapped model the arguments describe, and the loader options that fit it."""
    opened = opening.open_model(request_from(args))
    for note in opened.resolved.notes:  # what resolving the source decided, e.g. an older checkpoint than `latest`
        print(f"photon: {opened.resolved.given}: {note}", file=sys.stderr)
    return opened, media_options(opened.loaded, loader_overrides(args))
