"""The flash_attention_2 path: pruned prefill and decode agree with sdpa (needs CUDA and flash-attn)."""

import pytest
import torch

import photon
from photon.adapters.qwen2_5_vl import load_tiny
from photon.adapters.qwen_inputs import model_inputs

pytest.importorskip("flash_attn", reason="flash-attn (the `flash` extra) is not installed")
if not torch.cuda.is_available():
    pytest.skip("flash-attn needs a CUDA device", allow_module_level=True)


def test_flash_attention_pruned_generate_matches_sdpa(ragged_samples):
    results = {}
    for attn in ("sdpa", "flash_attention_2"):
        loaded = load_tiny(attn_implementation=attn, initializer_range=0.3, dtype=torch.bfloat16)
        model = loaded.model.cuda()
        photon.attach(model, mode="zero_shot", layer=2)
        batch = loaded.encoder.collate([loaded.encoder.encode(s, train=False) for s in ragged_samples])
        inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in model_inputs(batch).items() if k != "labels"}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
        results[attn] = (out.sequences.cpu(), torch.stack(out.logits).float().cpu(), photon.last_selection(model))
    # bf16 kernels differ slightly before the selection layer, so a token near the threshold may flip.
    for a, b in zip(results["sdpa"][2], results["flash_attention_2"][2]):
        agree = sum(x == y for x, y in zip(a["keep"], b["keep"])) / len(a["keep"])
        assert agree >= 0.9
    assert torch.isfinite(results["flash_attention_2"][1]).all()
    assert results["flash_attention_2"][0].shape == results["sdpa"][0].shape
