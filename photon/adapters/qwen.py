"""What the Qwen-VL generations share, written once: the adapter the runtime reads, Photon's grey
3D patch embedding, the seeded tiny builds, and loading a model folder.

A generation's own file (qwen2_5_vl.py, qwen3_vl.py) describes only what it does differently, as
one QwenFamily value (which transformers classes, the q/k normalisation, the instruction tokens,
DeepStack, patch size and pixel statistics); every function here takes that value. Composition
rather than subclassing: nothing one family adds can silently apply to the other.
"""

from __future__ import annotations

import functools
import importlib
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from photon.adapters.base import BackboneSpec, LayerExtras, Loaded
from photon.core import compat
from photon.core.errors import PhotonError

IM_START_ID = 151644
IM_END_ID = 151645
# The offline tiny builds: the real architectures at test size (8 layers x 64, a 2-head ViT of
# width 32); each family adds its own position rule and vision layout.
TINY_TEXT = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, temporal_patch_size=2,
                   spatial_merge_size=2, in_channels=3)
# The released Photon checkpoints hold the threshold MLP under this prefix (transformers 4.51 names).
_PREDICTOR_KEY = re.compile(r"^(?:model\.)?(?:language_model\.)?layers\.(\d+)\.atp\.predictor\.(mlp\.\d+\.(?:weight|bias))$")


def no_extras(kwargs: dict) -> tuple[LayerExtras | None, dict]:
    return None, kwargs


class Classes(NamedTuple):
    """Where transformers keeps a family's classes: the modeling module and the names in it."""

    module: str
    model: str
    config: str
    patch_embed: str


@dataclass(frozen=True)
class QwenFamily:
    """How one Qwen-VL generation differs from the others."""

    name: str  # the adapter family ("qwen2.5-vl")
    model_type: str  # transformers config.model_type
    classes: Classes
    tiny: tuple[dict, dict]  # the offline tiny build's text and vision configs
    tokenizer: Callable[[], Any]  # the real tokenizer of the offline tiny build
    pixels: tuple[tuple[float, float, float], tuple[float, float, float]]  # default pixel mean, std
    volume_kernel: tuple[int, int, int]  # Photon's 3D kernel (D, H, W): the ViT patch, cubed
    # (input_ids, ids) -> (B, L) bool: the instruction tokens ITS reads (spec section 3); ids carries
    # image_id, video_id, vision_start_id, vision_end_id and im_end_id (the adapter, or the encoder's)
    instruction_mask: Callable[[torch.Tensor, Any], torch.Tensor]
    qk_norm: bool = False  # q and k are normalised per head before RoPE (Qwen3)
    extras: Callable[[dict], tuple[LayerExtras | None, dict]] = no_extras  # per-token side inputs
    frame_timestamps: bool = False  # a video is one block per temporal step after "<t seconds>"
    default_system: str | None = "You are a helpful assistant."
    total_video_budget: bool = False  # the video processor's pixel limit covers every frame
    key_mapping: dict[str, str] | None = None  # checkpoint names -> stock names

    def module(self):
        return importlib.import_module(self.classes.module)

    def cls(self, role: str):
        """The transformers class playing `role` ("model", "config", "patch_embed")."""
        return getattr(self.module(), getattr(self.classes, role))


class QwenAdapter:
    """The runtime's view of a Qwen-VL ForConditionalGeneration model (photon.adapters.base.Adapter)."""

    def __init__(self, model, family: QwenFamily, im_end_id: int = IM_END_ID):
        config = model.config
        self.spec = family
        self.family = family.name
        self.image_id = config.image_token_id
        self.video_id = config.video_token_id
        self.vision_start_id = config.vision_start_token_id
        self.vision_end_id = config.vision_end_token_id
        self.im_end_id = im_end_id
        self.merge_size = config.vision_config.spatial_merge_size

    def text_model(self, model):
        return model.model.language_model

    def vision_tower(self, model):
        return model.model.visual

    def patch_embedding(self, model):
        return model.model.visual.patch_embed

    def install_volume_embedding(self, model, *, init: str, seed: int = 0):
        return install_volume_embedding(self.spec, model, init=init, seed=seed)

    def query_key(self, layer, hidden, position_embeddings):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if self.spec.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = position_embeddings
        mrope_section = attn.config.rope_parameters.get("mrope_section")
        return compat.apply_text_rope(self.spec.module(), q.transpose(1, 2), k.transpose(1, 2), cos, sin, mrope_section)

    def visual_kinds(self, input_ids):
        return (input_ids == self.image_id).long() + 2 * (input_ids == self.video_id).long()

    def instruction_mask(self, input_ids):
        return self.spec.instruction_mask(input_ids, self)

    def split_extras(self, kwargs):
        return self.spec.extras(kwargs)

    def capture_vision_attention(self, model):
        from photon.adapters.qwen_vision_attention import VisionAttentionCapture

        return VisionAttentionCapture(model, self.visual_kinds)


# -- the Photon 3D patch embedding ---------------------------------------------------------
def inflate_rgb_kernel(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """(out, 3, t, p, p) RGB kernel -> (out, 1, depth, p, p) grey kernel.

    Sum over RGB, repeat along depth, and divide by depth / t, so a constant volume gives
    the output a constant RGB clip of the same value gave.
    """
    grey = weight.sum(dim=1, keepdim=True)
    t = grey.shape[2]
    if depth % t:
        raise ValueError(f"depth {depth} must be a multiple of the RGB kernel's temporal size {t}")
    return grey.repeat(1, 1, depth // t, 1, 1) * (t / depth)


def _new_patch_embed(family: QwenFamily, old, kernel: tuple[int, int, int]):
    kd, kh, _ = kernel
    make = family.cls("patch_embed")
    try:  # Qwen2.5-VL's takes its sizes as keywords
        return make(patch_size=kh, temporal_patch_size=kd, in_channels=1, embed_dim=old.embed_dim)
    except TypeError:  # Qwen3-VL's reads them from a config
        return make(types.SimpleNamespace(patch_size=kh, temporal_patch_size=kd, in_channels=1, hidden_size=old.embed_dim))


def install_volume_embedding(family: QwenFamily, model, *, init: str = "inflate", kernel: tuple[int, int, int] | None = None,
                             seed: int = 0):
    """Replace the backbone's RGB patch embedding by Photon's grey 3D one (in place; returns model).

    init "inflate" derives the kernel from the RGB one (this project's choice, spec section 1) and
    keeps a bias where the embedding has one, so a constant volume embeds as a constant RGB clip of
    the same value did; "random" draws the kernel (seeded) with a zero bias. The vision config is
    updated so saving and reloading keep the embedding.
    """
    visual = model.model.visual
    old = visual.patch_embed
    kd, kh, kw = kernel or family.volume_kernel
    if kh != kw or kh != old.patch_size:
        raise PhotonError(f"the 3D kernel's spatial size {kh}x{kw} must equal the ViT patch size {old.patch_size}")
    if init not in ("inflate", "random"):
        raise PhotonError(f"volume embedding init must be 'inflate' or 'random', got {init!r}")
    new = _new_patch_embed(family, old, (kd, kh, kw))
    weight = old.proj.weight.detach()
    with torch.no_grad():
        if init == "inflate":
            new.proj.weight.copy_(inflate_rgb_kernel(weight.float(), kd).to(new.proj.weight.dtype))
        else:
            generator = torch.Generator().manual_seed(seed)
            new.proj.weight.copy_(torch.randn(new.proj.weight.shape, generator=generator) / (kd * kh * kw) ** 0.5)
        if new.proj.bias is not None:
            new.proj.bias.copy_(old.proj.bias.detach().float() if init == "inflate" else torch.zeros_like(new.proj.bias))
    visual.patch_embed = new.to(device=weight.device, dtype=weight.dtype)
    for cfg in (model.config.vision_config, visual.config):
        cfg.in_channels = 1
        cfg.temporal_patch_size = kd
    return model


# -- encoders -----------------------------------------------------------------------------
def geometry_for(family: QwenFamily, model, processor_config: dict | None = None):
    from photon.adapters.qwen_inputs import VisualGeometry

    vision = model.config.vision_config
    processor_config = processor_config or {}
    return VisualGeometry(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        in_channels=vision.in_channels,
        mean=tuple(processor_config.get("image_mean", family.pixels[0])),
        std=tuple(processor_config.get("image_std", family.pixels[1])),
    )


def encoder_for(family: QwenFamily, model, tokenizer, processor_config: dict | None = None, template: str | None = None):
    """Photon's input encoder for this model: its pixel geometry, the family's chat format, and
    the instruction mask the adapter reads, computed once per batch."""
    from photon.adapters.qwen_inputs import ChatFormat, QwenEncoder

    chat = ChatFormat(default_system=family.default_system, frame_timestamps=family.frame_timestamps)
    ids = tokenizer.convert_tokens_to_ids
    tokens = types.SimpleNamespace(
        image_id=ids(chat.image_pad), video_id=ids(chat.video_pad), vision_start_id=ids(chat.vision_start),
        vision_end_id=ids(chat.vision_end), im_end_id=ids(chat.im_end),
    )

    def instructions(input_ids):
        return family.instruction_mask(input_ids, tokens)

    return QwenEncoder(tokenizer, geometry_for(family, model, processor_config), chat, instructions, template=template)


# -- loading ------------------------------------------------------------------------------
def tiny_config(family: QwenFamily, attn_implementation: str = "sdpa", vision: dict | None = None, **text_overrides):
    text = {**family.tiny[0], **text_overrides}
    # The merger (and DeepStack) project ViT features to the LLM width: follow a resized text model.
    vision = {**family.tiny[1], **(vision or {}), "out_hidden_size": text["hidden_size"]}
    config = family.cls("config")(text_config=text, vision_config=vision, tie_word_embeddings=True)
    config._attn_implementation = attn_implementation
    return config


def load_tiny(
    family: QwenFamily,
    backbone: str,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    volume_embedding: str | None = None,
    dtype: torch.dtype | None = None,
    vision: dict | None = None,
    **text_overrides,
) -> Loaded:
    """The real architecture, small and random: seeded, offline, for tests and the demo. `vision`
    and `text_overrides` resize it (the demo backbone, photon/demo/backbone.py)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.cls("model")(tiny_config(family, attn_implementation, vision, **text_overrides))
        if volume_embedding:
            install_volume_embedding(family, model, init=volume_embedding, seed=seed)
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return Loaded(model=model, encoder=encoder_for(family, model, family.tokenizer()), backbone=backbone)


def read_config(family: QwenFamily, folder: Path):
    """The folder's config.json as this family's config class, transformers-4.51 vision names
    (the released Photon checkpoints') mapped to the current ones."""
    from photon.adapters import hub_folder

    path = folder / "config.json"
    if not path.is_file():
        raise PhotonError(f"{folder}: no config.json; expected a {family.name} checkpoint folder")
    raw = hub_folder.read_json(path)
    if raw.get("model_type") != family.model_type:
        raise PhotonError(f"{path}: model_type is {raw.get('model_type')!r}; the {family.name} adapter reads {family.model_type!r}")
    vision = raw.get("vision_config", {})
    if "in_chans" in vision:
        vision["in_channels"] = vision.pop("in_chans")
    return family.cls("config")(**raw)


def photon_weights(folder: Path) -> dict[str, Any] | None:
    """The released checkpoints' threshold predictor: {"layer": l, "state": {...}}, or None."""
    from safetensors import safe_open

    state, layers = {}, set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = _PREDICTOR_KEY.match(key)
                if match:
                    layers.add(int(match.group(1)))
                    state[f"predictor.{match.group(2)}"] = handle.get_tensor(key)
    if not state:
        return None
    if len(layers) != 1:
        raise PhotonError(f"{folder}: threshold predictor weights at several layers {sorted(layers)}; expected one")
    return {"layer": layers.pop(), "state": state}


def load_pretrained(
    family: QwenFamily,
    source: str,
    *,
    dtype: Any = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    volume_embedding: str | None = None,
    backbone: str | None = None,
    allow_weight_mismatch: bool = False,
) -> Loaded:
    """A hub id or a local folder: the stock model, its tokenizer, chat template and processor
    limits, and Photon weights if present.

    Checkpoint names the family maps (the released Photon checkpoints' `visual.vision_patch_embed`)
    become the stock ones; any weight the folder lacks or the model does not know is an error unless
    allow_weight_mismatch. volume_embedding ("inflate" | "random") installs the Photon 3D patch
    embedding on a checkpoint that still has Qwen's RGB one (phase 1 then trains it).
    """
    from photon.adapters import hub_folder

    hub_folder.check_attention(attn_implementation)
    folder = hub_folder.resolve(source, alias=backbone)
    config = read_config(family, folder)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    tokenizer, model = hub_folder.load_checked(
        family.cls("model"), folder, config, dtype=dtype, trust_remote_code=trust_remote_code,
        strict=not allow_weight_mismatch, key_mapping=family.key_mapping,
    )
    if volume_embedding:
        if model.config.vision_config.in_channels == 1:
            raise PhotonError(f"{folder}: the checkpoint already has a 1-channel (Photon 3D) patch embedding")
        install_volume_embedding(family, model, init=volume_embedding)
    if device is not None:
        model.to(device)
    model.eval()
    vision = model.config.vision_config
    image_config, _ = hub_folder.processor_configs(folder)
    return Loaded(
        model=model,
        encoder=encoder_for(family, model, tokenizer, image_config, template=hub_folder.chat_template(folder)),
        backbone=backbone or str(source),
        photon=photon_weights(folder),
        media_defaults=hub_folder.media_defaults(folder, patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                                 total_video_budget=family.total_video_budget),
    )


# -- registration -------------------------------------------------------------------------
class Bound(NamedTuple):
    """The shared functions a family module exports, bound to its family."""

    make_adapter: Callable[[Any], QwenAdapter]
    install_volume_embedding: Callable[..., Any]
    load_tiny: Callable[..., Loaded]
    load_pretrained: Callable[..., Loaded]


def bind(family: QwenFamily, tiny_name: str) -> Bound:
    return Bound(
        functools.partial(QwenAdapter, family=family),
        functools.partial(install_volume_embedding, family),
        functools.partial(load_tiny, family, tiny_name),
        functools.partial(load_pretrained, family),
    )


@dataclass(frozen=True)
class Release:
    """A registered backbone of a family: its alias, hub id (None: the offline tiny build) and shape."""

    name: str
    source: str | None
    description: str
    volume_input: tuple[int, int, int]
    num_layers: int
    volume_patch: tuple[int, int, int] | None = None
    extras: dict = field(default_factory=dict)


def backbone_spec(family: QwenFamily, release: Release) -> BackboneSpec:
    if release.source is None:
        def load(source=None, *, allow_weight_mismatch: bool = False, **options) -> Loaded:
            # allow_weight_mismatch is accepted like the folder loaders': built in memory, nothing to mismatch
            return load_tiny(family, release.name, **options)
    else:
        def load(source=None, **options) -> Loaded:
            return load_pretrained(family, source or release.source, backbone=release.name, **options)

    return BackboneSpec(
        name=release.name,
        family=family.name,
        source=release.source,
        description=release.description,
        load=load,
        model_type=family.model_type,
        make_adapter=lambda model: QwenAdapter(model, family),
        load_folder=lambda source, **options: load_pretrained(family, source, **options),
        patch_size=family.tiny[1]["patch_size"],
        merge_size=family.tiny[1]["spatial_merge_size"],
        temporal_patch_size=family.tiny[1]["temporal_patch_size"],
        volume_input=release.volume_input,
        volume_patch=release.volume_patch,
        num_layers=release.num_layers,
        extras=dict(release.extras),
    )
