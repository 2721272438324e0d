"""BERTScore F1 with the published defaults: roberta-large, layer 17, no idf, no baseline
rescaling.

Written here rather than called through the bert-score package because that package, under
transformers 5, silently drops the prefix space RoBERTa-style tokenisers need (its
`add_prefix_space=True` encode argument is ignored), which changes every score against
the published numbers; and because loading must stay offline unless asked. The maths is
bert-score's: cosine similarities of layer-`layer` token embeddings, special tokens
(CLS/SEP) kept as match candidates but given zero weight, greedy matching, F = 2PR/(P+R).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from photon.core.errors import PhotonError

DEFAULT_MODEL = "roberta-large"
DEFAULT_LAYER = 17
MAX_TOKENS = 512  # when the tokenizer states no limit


class BERTScoreUnavailable(PhotonError):
    """The BERTScore model cannot be loaded (not a local folder, not cached, no network)."""


@dataclass
class Encoder:
    tokenizer: Any
    model: Any
    layer: int
    device: str
    name: str

    @property
    def special_ids(self) -> set[int]:
        return {i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if i is not None}

    @property
    def max_length(self) -> int:
        limit = getattr(self.tokenizer, "model_max_length", None) or MAX_TOKENS
        return limit if limit < 1_000_000 else MAX_TOKENS


def _unavailable(name: str, reason: str) -> BERTScoreUnavailable:
    return BERTScoreUnavailable(
        f"BERTScore model {name!r} could not be loaded ({reason}). Pass --bertscore-model with a "
        "local folder holding the model (for the published numbers: a saved roberta-large), "
        "add --bertscore-download to fetch it from the Hugging Face hub, or use --no-bertscore."
    )


def load_encoder(
    name: str = DEFAULT_MODEL, layer: int = DEFAULT_LAYER, *, download: bool = False, device: str = "auto"
) -> Encoder:
    """Load a tokenizer and encoder from a local folder or the local hub cache (the hub only
    with download=True); a failure is a BERTScoreUnavailable naming the model."""
    try:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:  # pragma: no cover - core dependencies
        raise _unavailable(name, f"transformers is not importable: {exc}") from exc
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.is_dir():
        raise _unavailable(name, f"{path} is not a folder")
    source = str(path) if looks_local else name
    offline = not download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        if hasattr(tokenizer, "add_prefix_space") and not tokenizer.add_prefix_space:
            # bert-score encodes RoBERTa/GPT-2 style inputs with a leading space.
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline, add_prefix_space=True)
        depth = getattr(config, "num_hidden_layers", None)
        if depth is not None and not 1 <= layer <= depth:
            raise PhotonError(f"BERTScore layer {layer} is out of range: {name} has layers 1..{depth}")
        overrides = {"num_hidden_layers": layer} if depth is not None else {}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # dropping the unused top layers is intended
        try:
            model = AutoModel.from_pretrained(source, local_files_only=offline, **overrides)
        finally:
            hf_logging.set_verbosity(verbosity)
    except PhotonError:
        raise
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "not a local folder and not in the local Hugging Face cache" if offline else first_line
        raise _unavailable(name, where) from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return Encoder(tokenizer=tokenizer, model=model, layer=layer, device=device, name=name)


def _embed(encoder: Encoder, sentences: Sequence[str]):
    """Unit-norm token embeddings (B, T, D), padding mask (B, T), weights (B, T) summing to 1."""
    import torch

    batch = encoder.tokenizer(
        [s.strip() for s in sentences],
        padding=True,
        truncation=True,
        max_length=encoder.max_length,
        return_tensors="pt",
    )
    ids = batch["input_ids"].to(encoder.device)
    mask = batch["attention_mask"].to(encoder.device).bool()
    with torch.no_grad():
        out = encoder.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    emb = out.hidden_states[encoder.layer].float()
    emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    weights = mask.float()
    for special in encoder.special_ids:
        weights = weights * (ids != special)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return emb, mask, weights


def bertscore_f1(
    candidates: Sequence[str], references: Sequence[str], encoder: Encoder, *, batch_size: int = 32, progress=None
) -> np.ndarray:
    """Per-pair BERTScore F1 x 100. Empty candidates or references score 0."""
    import torch

    if len(candidates) != len(references):
        raise ValueError("candidates and references differ in length")
    scores = np.zeros(len(candidates))
    todo = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
    todo.sort(key=lambda i: len(candidates[i]) + len(references[i]))  # less padding per batch
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        c_emb, c_mask, c_w = _embed(encoder, [candidates[i] for i in chunk])
        r_emb, r_mask, r_w = _embed(encoder, [references[i] for i in chunk])
        sim = torch.bmm(c_emb, r_emb.transpose(1, 2))
        sim = sim.masked_fill(~(c_mask[:, :, None] & r_mask[:, None, :]), float("-inf"))
        precision = (sim.max(dim=2).values.clamp_min(-1.0) * c_w).sum(dim=1)
        recall = (sim.max(dim=1).values.clamp_min(-1.0) * r_w).sum(dim=1)
        f1 = torch.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0)
        scores[chunk] = 100.0 * f1.cpu().numpy()
        if progress is not None:
            progress.update(len(chunk))
    return scores
