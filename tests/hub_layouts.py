"""Model folders laid out as their owners publish them, with tiny random weights.

Each writer copies a real artifact's layout, not this project's naming:
- Qwen2.5-VL-3B-Instruct on the hub: config.json in the transformers-4.4x layout (text fields at
  the top level, rope_scaling {"type": "mrope"}, vision in_chans), sharded safetensors with
  model.safetensors.index.json and the 4.4x key names (`model.layers.*`, `visual.*`), tokenizer.json,
  vocab.json, merges.txt, tokenizer_config.json carrying the chat template, chat_template.json,
  preprocessor_config.json (min_pixels 3136, max_pixels 12845056) and generation_config.json.
- Photon-S1/S2 (alibaba-damo-academy/Photon, configs/config.json and swift/photon/modeling_photon_s*.py):
  the same config layout with in_chans 1 and temporal_patch_size 14, the 3D kernel under
  `visual.vision_patch_embed.proj.weight` (no bias), and for S2 the threshold MLP under
  `model.layers.{l}.atp.predictor.mlp.{0,2}.*` beside an unused `atp.pos_proj.weight`.
- Qwen3-VL-2B-Instruct: config.json with text_config/vision_config (rope_scaling with
  mrope_interleaved, deepstack_visual_indexes), no default system prompt in its template,
  preprocessor_config.json and video_preprocessor_config.json with `size` bounds.
The chat templates in fixtures/hub are the hub's own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"


def official_template(family: str) -> str:
    name = {"qwen2.5-vl": "qwen2_5_vl_chat_template.json", "qwen3-vl": "qwen3_vl_chat_template.json"}[family]
    return json.loads((FIXTURES / name).read_text())["chat_template"]


# -- tokenizer files ------------------------------------------------------------------------
def write_tokenizer(folder: Path, tokenizer, template: str, *, model_max_length: int = 131072) -> None:
    """tokenizer.json, vocab.json, merges.txt and a transformers-4.x tokenizer_config.json (with
    added_tokens_decoder and the chat template), as the Qwen hub folders hold them."""
    tokenizer.save_pretrained(folder)
    raw = json.loads((folder / "tokenizer.json").read_text())
    (folder / "vocab.json").write_text(json.dumps(raw["model"]["vocab"], ensure_ascii=False))
    merges = raw["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    added = {str(t["id"]): {"content": t["content"], "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": t["special"]} for t in raw["added_tokens"]}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t["content"] for t in raw["added_tokens"] if t["special"] and t["content"] not in
                                      ("<|endoftext|>", "<|im_start|>", "<|im_end|>")],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


# -- weights ----------------------------------------------------------------------------------
def write_shards(folder: Path, state: dict[str, torch.Tensor], n_shards: int = 2) -> None:
    """model-0000k-of-0000n.safetensors and model.safetensors.index.json, as save_pretrained shards."""
    keys = sorted(state)
    per = -(-len(keys) // n_shards)
    weight_map = {}
    for k in range(n_shards):
        name = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {key: state[key].contiguous() for key in keys[k * per : (k + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def legacy_qwen2_5_keys(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """transformers-5 names -> the 4.4x names the hub's Qwen2.5-VL files use."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight" and tied:
            continue
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        out[key] = value
    return out


# -- Qwen2.5-VL and the Photon release ----------------------------------------------------------
def qwen2_5_hub_config(model, *, in_chans: int, temporal_patch_size: int) -> dict:
    """config.json as Qwen2.5-VL-3B-Instruct (and the Photon release's configs/config.json) lay it out."""
    text = model.config.get_text_config()
    vision = model.config.vision_config
    rope = text.rope_parameters
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": text.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": 128000,
        "max_window_layers": 70,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": rope["rope_theta"],
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": vision.depth,
            "hidden_act": "silu",
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_heads": vision.num_heads,
            "in_chans": in_chans,
            "out_hidden_size": vision.out_hidden_size,
            "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "spatial_patch_size": vision.patch_size,
            "window_size": vision.window_size,
            "fullatt_block_indexes": list(vision.fullatt_block_indexes),
            "tokens_per_second": vision.tokens_per_second,
            "temporal_patch_size": temporal_patch_size,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
        "vocab_size": text.vocab_size,
    }


QWEN2_5_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
QWEN2_5_GENERATION = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
    "transformers_version": "4.49.0",
}


def write_qwen2_5_hub_folder(folder: Path, *, seed: int = 11, system_prompt: str | None = None) -> torch.nn.Module:
    """A Qwen2.5-VL-3B-Instruct-layout folder with tiny random weights (returns the model written).
    system_prompt replaces "You are a helpful assistant." in the template, as a finetune's might."""
    from photon.adapters.qwen2_5_vl import load_tiny
    from photon.adapters.tokenizer import qwen2_5_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = load_tiny(seed=seed).model.to(torch.bfloat16)  # the hub stores bf16 (torch_dtype)
    write_shards(folder, legacy_qwen2_5_keys(model.state_dict(), tied=True))
    (folder / "config.json").write_text(json.dumps(qwen2_5_hub_config(model, in_chans=3, temporal_patch_size=2), indent=2))
    (folder / "generation_config.json").write_text(json.dumps(QWEN2_5_GENERATION, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN2_5_PREPROCESSOR, indent=2))
    template = official_template("qwen2.5-vl")
    if system_prompt is not None:
        template = template.replace("You are a helpful assistant.", system_prompt)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    write_tokenizer(folder, qwen2_5_tokenizer(), template)
    return model


RELEASE_PREPROCESSOR = {**QWEN2_5_PREPROCESSOR, "temporal_patch_size": 14}  # the release's configs/preprocessor_config.json


def write_photon_release_folder(folder: Path, *, stage: str = "S2", layer: int = 1, seed: int = 5, with_kernel: bool = True):
    """A Photon-S1/S2 folder as the authors' release writes it. Returns (model, predictor state):
    the model holds the weights written (its 3D kernel included); predictor is None for S1."""
    from photon.adapters.qwen2_5_vl import install_volume_embedding, load_tiny
    from photon.adapters.tokenizer import qwen2_5_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # A wide init makes greedy decoding vary, so token equality in tests means something.
    model = load_tiny(seed=seed, initializer_range=0.3).model
    install_volume_embedding(model, init="random", seed=seed + 1)
    model.to(torch.bfloat16)  # the release stores bf16 (torch_dtype)
    state = legacy_qwen2_5_keys(model.state_dict(), tied=True)
    kernel = state.pop("visual.patch_embed.proj.weight")
    if with_kernel:
        state["visual.vision_patch_embed.proj.weight"] = kernel  # the release's own attribute name
    predictor = None
    if stage == "S2":
        hidden = model.config.get_text_config().hidden_size
        generator = torch.Generator().manual_seed(seed + 2)
        predictor = {
            "mlp.0.weight": torch.randn(hidden // 8, 12, generator=generator),
            "mlp.0.bias": torch.randn(hidden // 8, generator=generator),
            "mlp.2.weight": torch.randn(1, hidden // 8, generator=generator),
            "mlp.2.bias": torch.tensor([0.5]),
        }
        predictor = {name: value.to(torch.bfloat16) for name, value in predictor.items()}
        for name, value in predictor.items():
            state[f"model.layers.{layer}.atp.predictor.{name}"] = value
        state[f"model.layers.{layer}.atp.pos_proj.weight"] = torch.randn(hidden, hidden, generator=generator)
    write_shards(folder, state)
    vision_temporal = model.config.vision_config.temporal_patch_size
    (folder / "config.json").write_text(json.dumps(qwen2_5_hub_config(model, in_chans=1, temporal_patch_size=vision_temporal), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(RELEASE_PREPROCESSOR, indent=2))
    template = official_template("qwen2.5-vl")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    write_tokenizer(folder, qwen2_5_tokenizer(), template)
    return model, predictor


# -- Qwen3-VL ---------------------------------------------------------------------------------
QWEN3_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}
QWEN3_VIDEO_PREPROCESSOR = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "video_processor_type": "Qwen3VLVideoProcessor",
}


def qwen3_hub_config(model) -> dict:
    """config.json as Qwen3-VL-2B-Instruct lays it out (transformers 4.57: rope_scaling in text_config)."""
    text = model.config.text_config
    vision = model.config.vision_config
    rope = text.rope_parameters
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": 151655,
        "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "dtype": "bfloat16",
            "eos_token_id": 151645,
            "head_dim": text.head_dim,
            "hidden_act": "silu",
            "hidden_size": text.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text",
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": list(rope["mrope_section"]), "rope_type": "default"},
            "rope_theta": rope["rope_theta"],
            "tie_word_embeddings": True,
            "use_cache": True,
            "vocab_size": text.vocab_size,
        },
        "tie_word_embeddings": True,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": 151656,
        "vision_config": {
            "deepstack_visual_indexes": list(vision.deepstack_visual_indexes),
            "depth": vision.depth,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": vision.hidden_size,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": vision.intermediate_size,
            "model_type": "qwen3_vl",
            "num_heads": vision.num_heads,
            "num_position_embeddings": vision.num_position_embeddings,
            "out_hidden_size": vision.out_hidden_size,
            "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "temporal_patch_size": vision.temporal_patch_size,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    }


def write_qwen3_hub_folder(folder: Path, *, seed: int = 13, system_prompt: str | None = None) -> torch.nn.Module:
    """A Qwen3-VL-2B-Instruct-layout folder with tiny random weights. system_prompt, when given,
    makes the template open every conversation with that system turn (a finetune's template)."""
    from photon.adapters.qwen3_vl import load_tiny
    from photon.adapters.tokenizer import qwen3_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = load_tiny(seed=seed).model.to(torch.bfloat16)  # the hub stores bf16 (dtype)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(qwen3_hub_config(model), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0, "temperature": 0.7, "transformers_version": "4.56.0"}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN3_PREPROCESSOR, indent=2))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(QWEN3_VIDEO_PREPROCESSOR, indent=2))
    template = official_template("qwen3-vl")
    if system_prompt is not None:
        opening = "{%- set image_count = namespace(value=0) %}"
        template = template.replace(
            opening, "{%- if messages[0].role != 'system' %}{{- '<|im_start|>system\\n" + system_prompt + "<|im_end|>\\n' }}{%- endif %}\n" + opening, 1)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    write_tokenizer(folder, qwen3_tokenizer(), template, model_max_length=262144)
    return model
