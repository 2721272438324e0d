"""The demo backbone: a small Qwen2.5-VL (stock classes) pretrained once on the demo's phantoms and
shipped in the package, so `photon demo` starts from a model that has learned to look.

Its shape differs from the `qwen2.5-vl-tiny` test build where the tiny one cannot localise:
- attention heads of 32 dims with M-RoPE sections [4, 6, 6] and rope_theta 10. Qwen2.5-VL gives
  the height and width axes the lowest rotary frequencies (contiguous sections, width last); at
  the releases' theta 1e6 a tiny head's width frequencies turn by ~1e-4 rad per token, so left
  and right tokens look alike to every query. At theta 10 the width section turns by 0.12-0.24
  rad per token and height by 0.27-0.56: a 4 x 4 token grid's quadrants are resolvable.
- a 4-block ViT of width 64 (the test build's is 2 x 32).

What ships (photon/demo/backbone.safetensors, written by `photon demo --pretrain`): every weight
except the tied token embedding, plus the embedding rows of the demo's vocabulary (the ids its
prompts and answers use) and those ids. Every other row is zero, in pretraining as after loading,
so the file is small and a reload equals the pretrained model exactly: zero rows give logit 0, and
pretraining's loss counts them in the softmax as the full model's does (photon/demo/pretrain.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from photon.core.errors import PhotonError
from photon.core.files import umask_mode
from photon.core.hookspecs import hookimpl

NAME = "qwen2.5-vl-demo"
WEIGHTS = Path(__file__).with_name("backbone.safetensors")
EMBEDDING = "model.language_model.embed_tokens.weight"  # tied to lm_head.weight
ROWS, IDS = "demo.embedding_rows", "demo.embedding_ids"
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [4, 6, 6]})
VISION = dict(hidden_size=64, intermediate_size=128, num_heads=2, depth=4, fullatt_block_indexes=[1, 3])
VOLUME = (16, 112, 112)  # the demo's model input (D, H, W): 8 x 4 x 4 = 128 visual tokens


def build(seed: int = 0, attn_implementation: str = "sdpa", **options):
    """The architecture with seeded random weights and every embedding row zero (pretraining's start)."""
    from photon.adapters import qwen2_5_vl

    loaded = qwen2_5_vl.load_tiny(seed=seed, attn_implementation=attn_implementation, vision=VISION, **TEXT, **options)
    loaded = dataclasses.replace(loaded, backbone=NAME)
    with torch.no_grad():
        embedding(loaded.model).zero_()
    return loaded


def embedding(model) -> torch.Tensor:
    return model.get_input_embeddings().weight


def save(model, vocabulary: list[int], path: str | Path, facts: dict[str, Any]) -> Path:
    """The compact file, written atomically: every weight but the embedding, the vocabulary's rows
    and ids, and `facts` (how it was made) as metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k not in (EMBEDDING, "lm_head.weight")}
    ids = torch.tensor(sorted(vocabulary), dtype=torch.long)
    table = embedding(model).detach()
    outside = torch.ones(table.shape[0], dtype=torch.bool)
    outside[ids] = False
    if table[outside].abs().max() > 0:
        raise PhotonError("the demo backbone has non-zero embedding rows outside its vocabulary; they would be lost on saving")
    state[ROWS] = table[ids].contiguous().clone()
    state[IDS] = ids
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"backbone": NAME, "facts": json.dumps(facts)})
    umask_mode(partial)  # safetensors creates it private; the package file is read by every user
    partial.replace(path)
    return path


def facts_of(path: str | Path = WEIGHTS) -> dict[str, Any]:
    """How the shipped file was made (the pretraining's settings and measurements)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("facts", "{}"))


def load(source: str | Path | None = None, *, seed: int = 0, attn_implementation: str = "sdpa",
         allow_weight_mismatch: bool = False, **options):
    """The pretrained demo backbone from its compact file (default: the one shipped in the package)."""
    from safetensors.torch import load_file

    path = Path(source) if source else WEIGHTS
    if not path.is_file():
        raise PhotonError(f"{path}: no demo backbone weights; `photon demo --pretrain` writes them")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise PhotonError(f"{path}: not a readable safetensors file ({exc})") from exc
    missing = [k for k in (ROWS, IDS) if k not in state]
    if missing:
        raise PhotonError(f"{path}: not a demo backbone file (no {', '.join(missing)})")
    loaded = build(seed=seed, attn_implementation=attn_implementation, **options)
    rows, ids = state.pop(ROWS), state.pop(IDS)
    model = loaded.model
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in (EMBEDDING, "lm_head.weight")]
    if (unexpected or missing) and not allow_weight_mismatch:
        raise PhotonError(f"{path}: weights do not fit {NAME} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        table = embedding(model)
        if rows.shape != (len(ids), table.shape[1]):
            raise PhotonError(f"{path}: embedding rows of shape {tuple(rows.shape)}; {NAME} expects (n, {table.shape[1]})")
        table[ids] = rows.to(table.dtype)
    model.eval()
    return loaded


@hookimpl
def register_backbones(register):
    from photon.adapters import qwen, qwen2_5_vl

    release = qwen.Release(NAME, None, "Qwen2.5-VL architecture, 8 layers x 128 wide, pretrained on the demo's CT phantoms "
                           "(shipped; `photon demo` starts from it)", VOLUME, TEXT["num_hidden_layers"],
                           extras={"weights": str(WEIGHTS)})
    spec = qwen.backbone_spec(qwen2_5_vl.QWEN2_5_VL, release)
    register(NAME, dataclasses.replace(spec, load=load))
