"""The flash_attention_2 path: pruned prefill and decode agree with sdpa (needs CUDA and flash-attn)."""

import pytest
import torch

pytest.importorskip("flash_attn", reason="flash-attn (the `flash` extra) is not installed")
if not torch.cuda.is_available():
    pytest.skip("flash-attn needs a CUDA device", allow_module_level=True)


def test_flash_attention_keeps_parity_and_matches_the_stock_reference():
    """Keep-all parity and the pruned prefill/decode against the stock-only reference, in bf16 on a
    ragged batch (photon.bench.gpu_check, which scripts/gpu_check.sh runs too)."""
    from photon.bench.gpu_check import check, ragged_prompts
    from photon.bench.models import ModelSpec, build_model

    model, encoder = build_model(ModelSpec(size="tiny", dtype="bfloat16", device="cuda", attn="sdpa"))
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in ragged_prompts(encoder).items()}
    results = check(model, inputs, "flash_attention_2", "bfloat16")
    failed = [r for r in results if not r["passed"]]
    assert not failed, failed
