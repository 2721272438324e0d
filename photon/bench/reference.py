"""A stock-only reference for pruned runs (tests, and scripts/gpu_check.sh on CUDA): the unpruned model's own decoder layers on the full
sequence, with pruned keys masked out where Photon removed them (DESIGN "tests that carry weight").

Family-agnostic: the text model's inputs are captured from the stock multimodal forward, so
visual features, M-RoPE positions and DeepStack inputs are exactly what stock computes.
"""

from __future__ import annotations

import torch


def capture_text_inputs(model, text_model, inputs: dict) -> dict:
    """Run the (detached, stock) model once and keep what it hands its text model."""
    captured = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)

    handle = text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def reference_logits(model, text_model, captured: dict, keep: torch.Tensor, layer: int, *, evict_all: bool, prompt_len: int):
    """Logits of every position of the full sequence with Photon's visibility rules.

    keep (B, prompt_len) bool: what Photon kept of the prompt. Generated positions (beyond
    prompt_len) see only kept prompt keys in every layer whose cache was reduced; prompt
    positions see every earlier key in layers <= layer and only kept keys after it.
    """
    embeds = captured["inputs_embeds"]
    position_ids = captured["position_ids"]
    mrope = position_ids[1:] if position_ids.shape[0] == 4 else position_ids
    B, L, _ = embeds.shape
    attention_mask = captured.get("attention_mask")
    device = embeds.device
    real = attention_mask.bool() if attention_mask is not None else torch.ones(B, L, dtype=torch.bool, device=device)
    keep_key = torch.cat([keep.bool().to(device), torch.ones(B, L - prompt_len, dtype=torch.bool, device=device)], dim=1) & real
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    generated_row = (torch.arange(L, device=device) >= prompt_len).view(1, 1, L, 1)
    base = causal.view(1, 1, L, L) & real.view(B, 1, 1, L)
    late = base & keep_key.view(B, 1, 1, L)
    early = torch.where(generated_row, late, base) if evict_all else base
    eye = torch.eye(L, dtype=torch.bool, device=device).view(1, 1, L, L)  # keeps padding rows finite

    def additive(mask):
        return torch.zeros(mask.shape, dtype=embeds.dtype, device=device).masked_fill(~(mask | eye), torch.finfo(embeds.dtype).min)

    position_embeddings = text_model.rotary_emb(embeds, mrope)
    visual_pos = captured.get("visual_pos_masks")
    deepstack = captured.get("deepstack_visual_embeds") or []
    hidden = embeds
    for i, decoder_layer in enumerate(text_model.layers):
        hidden = decoder_layer(
            hidden,
            attention_mask=additive(early if i <= layer else late),
            position_embeddings=position_embeddings,
            position_ids=None,
            use_cache=False,
        )
        if i < len(deepstack):
            hidden = hidden.clone()
            hidden[visual_pos] = hidden[visual_pos] + deepstack[i].to(hidden.dtype)
    return model.lm_head(text_model.norm(hidden))


@torch.no_grad()
def reference_greedy(model, text_model, inputs: dict, keep: torch.Tensor, layer: int, *, evict_all: bool, max_new_tokens: int,
                     prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy continuation (B, max_new_tokens) computed by the stock layers alone, with Photon's
    visibility rules (reference_logits) over the growing sequence. Run on a detached model.
    prompt_embeds: the prompt's input rows as a merging pruner rewrote them before layer 0."""
    prompt_len = inputs["input_ids"].shape[1]
    sequences = inputs["input_ids"]
    for _ in range(max_new_tokens):
        grown = sequences.shape[1] - prompt_len
        full = dict(inputs, input_ids=sequences)
        if "attention_mask" in inputs:
            full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, prompt_len:])], 1)
        if "mm_token_type_ids" in inputs:
            types = inputs["mm_token_type_ids"]
            full["mm_token_type_ids"] = torch.cat(
                [types, torch.zeros(sequences.shape[0], grown, dtype=types.dtype, device=types.device)], 1)
        captured = capture_text_inputs(model, text_model, full)
        if prompt_embeds is not None:
            captured["inputs_embeds"] = captured["inputs_embeds"].clone()
            captured["inputs_embeds"][:, :prompt_len] = prompt_embeds
        logits = reference_logits(model, text_model, captured, keep, layer, evict_all=evict_all, prompt_len=prompt_len)
        sequences = torch.cat([sequences, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequences[:, prompt_len:]
