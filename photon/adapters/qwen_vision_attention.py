"""Vision-encoder attention for pruners that choose tokens before the LLM (VisionZip).

Qwen's ViT has no [CLS] token, so a patch's importance is the attention it receives from
every patch of its frame in the last full-attention block. VisionAttentionCapture hooks that
block, keeps its input (a reference, no copy) and, when a pruner asks, scores each LLM visual
token: the attention received by its merge^2 patches, and their mean key (for similarity).
"""

from __future__ import annotations

import torch

from photon.core.errors import PhotonError

# Query rows per attention chunk: bounds the (heads x rows x frame) score block in memory.
_SCORE_ELEMENTS = 1 << 20


class VisionAttentionCapture:
    def __init__(self, model, visual_kinds):
        visual = model.model.visual
        self.visual = visual
        self.visual_kinds = visual_kinds
        # Qwen2.5-VL: the last full-attention block (the others attend within windows);
        # Qwen3-VL has no windows: its last block.
        full = [i for i in getattr(visual, "fullatt_block_indexes", []) if i < len(visual.blocks)]
        self.attention = visual.blocks[max(full) if full else len(visual.blocks) - 1].attn
        self.calls: list[dict] = []
        self._handles = [
            visual.register_forward_pre_hook(self._on_encoder, with_kwargs=True),
            self.attention.register_forward_hook(self._on_attention, with_kwargs=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.calls = []

    # -- hooks: the encoder runs once per modality (images, then videos) --------------------
    def _on_encoder(self, module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        # A forward that never selects (a full-stage training step) must not pile up calls.
        self.calls = self.calls[-1:] + [{"grid": grid}]

    def _on_attention(self, module, args, kwargs, output):
        if not self.calls:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        self.calls[-1].update(hidden=hidden.detach(), cu_seqlens=kwargs["cu_seqlens"], rope=kwargs["position_embeddings"])

    # -- what a pruner reads --------------------------------------------------------------
    def read(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """received (B, L) float32 and keys (B, L, Dh) float32 at visual positions, zeros elsewhere.

        Consumes the captured passes: images come first, then videos, as the model encodes them.
        """
        kinds = self.visual_kinds(input_ids)
        present = [kind for kind in (1, 2) if bool((kinds == kind).any())]
        calls, self.calls = self.calls[-len(present):] if present else [], []
        if len(calls) < len(present) or any("hidden" not in c for c in calls):
            raise PhotonError("no vision-encoder pass was captured for this prompt; pass pixel values with the prompt")
        B, L = input_ids.shape
        head_dim = self.attention.head_dim
        received = torch.zeros(B, L, dtype=torch.float32, device=input_ids.device)
        keys = torch.zeros(B, L, head_dim, dtype=torch.float32, device=input_ids.device)
        for kind, call in zip(present, calls):
            scores, token_keys = self._score(call)
            where = kinds == kind  # row-major order is the order the model scatters features in
            if int(where.sum()) != scores.numel():
                raise PhotonError(
                    f"the vision encoder produced {scores.numel()} tokens but the prompt has {int(where.sum())} "
                    f"{'image' if kind == 1 else 'video'} placeholders"
                )
            received[where] = scores.to(received.device)
            keys[where] = token_keys.to(keys.device)
        return received, keys

    @torch.no_grad()
    def _score(self, call: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        attn, visual = self.attention, self.visual
        hidden = call["hidden"]
        n = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).unbind(1)
        cos, sin = call["rope"]
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k = q.float().transpose(0, 1), k.float().transpose(0, 1)  # (H, n, Dh)
        received = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        bounds = call["cu_seqlens"].tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            k_seg = k[:, start:end]
            rows = max(1, _SCORE_ELEMENTS // (attn.num_heads * (end - start)))
            for lo in range(start, end, rows):
                hi = min(end, lo + rows)
                probs = torch.softmax(torch.einsum("hqd,hkd->hqk", q[:, lo:hi], k_seg) * attn.scaling, dim=-1)
                received[start:end] += probs.sum(dim=(0, 1)) / attn.num_heads
        unit = visual.config.spatial_merge_size**2
        # Each LLM token's merge^2 patches are contiguous rows. Qwen2.5-VL's rows are in window
        # order: undo it. Qwen3-VL's are in the prompt's order already.
        token_received = received.view(-1, unit).sum(1)
        token_keys = k.mean(0).view(-1, unit, k.shape[-1]).mean(1)
        if getattr(visual, "window_size", None):
            window_index, _ = get_vision_window_index(
                call["grid"], spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size, patch_size=visual.patch_size
            )
            order = torch.argsort(window_index.to(hidden.device))
            token_received, token_keys = token_received[order], token_keys[order]
        return token_received, token_keys
