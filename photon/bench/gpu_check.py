"""`python -m photon.bench.gpu_check --out DIR`: Photon's correctness on an accelerator, in one run.

For each attention implementation available (sdpa; flash_attention_2 when flash-attn imports)
on a ragged batch of three prompts (different frame counts and sizes):
- keep-all parity: Photon attached with keep="all" gives the stock model's logits and greedy
  tokens;
- pruned reference: with keep_ratio 0.25 at layer 1, the pruned prefill's logits at the kept
  positions and every decode step's logits equal a stock-only reference (the stock layers on
  the full sequence with the pruned keys masked out, photon.bench.reference), computed with
  sdpa on the same weights.
Writes DIR/parity.json and prints one line per check; exits 1 when a check fails. On a CPU
(`--device cpu --dtype float32`) the same checks run at float32 tolerances (tested in CI).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

# Largest |difference| accepted, relative to the largest |logit|: bf16 keeps 8 bits of mantissa,
# and different kernels (FlashAttention vs the sdpa reference) round differently.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


def ragged_prompts(encoder, seed: int = 0) -> dict:
    from photon.adapters.qwen_inputs import model_inputs
    from photon.modalities.base import Media
    from photon.modalities.dataset import Sample

    rng = np.random.default_rng(seed)
    side = encoder.geometry.patch_size * encoder.geometry.merge_size
    shapes = [(4, 2 * side, 3 * side), (2, 4 * side, 2 * side), (6, 2 * side, 2 * side)]
    questions = ["Is there a lesion in the upper left region?", "How many lesions are there?",
                 "Which region holds the lesion, left or right? Describe it."]
    samples = []
    for i, ((frames, height, width), question) in enumerate(zip(shapes, questions)):
        media = Media(frames=rng.random((frames, 3, height, width), dtype=np.float32), kind="video", source=f"v{i}", fps=1.0)
        samples.append(Sample(str(i), [{"role": "user", "content": "<video>" + question}], [media]))
    inputs = model_inputs(encoder.collate([encoder.encode(s, train=False) for s in samples]))
    inputs.pop("labels")
    return inputs


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def check(model, inputs: dict, attn: str, dtype: str, new_tokens: int = 4) -> list[dict]:
    import photon
    from photon.bench.reference import capture_text_inputs, reference_logits
    from photon.core.api import runtime_of

    tolerance = TOLERANCE[dtype]
    text_model = model.model.language_model
    results = []

    def record(name: str, difference: float, extra: dict | None = None, exact: bool | None = None):
        passed = difference <= tolerance if exact is None else exact and difference <= tolerance
        results.append({"check": name, "attn": attn, "dtype": dtype, "max_relative_difference": difference,
                        "tolerance": tolerance, "passed": bool(passed), **(extra or {})})

    model.set_attn_implementation(attn)
    with torch.no_grad():
        stock_logits = model(**inputs).logits
        stock_tokens = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        photon.attach(model, mode="zero_shot", keep="all")
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    photon.detach(model)
    same_tokens = bool(torch.equal(tokens, stock_tokens))
    record("keep-all logits equal stock", _relative(logits, stock_logits))
    record("keep-all greedy tokens equal stock", 0.0, {"tokens_equal": same_tokens}, exact=same_tokens)

    photon.attach(model, mode="zero_shot", keep_ratio=0.25, layer=1)
    with torch.no_grad():
        out = model(**inputs)
        info = runtime_of(model).last
        gen = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
        decode_keep = runtime_of(model).last.keep
    photon.detach(model)
    model.set_attn_implementation("sdpa")  # the reference's additive masks need sdpa (or eager)
    prompt_len = inputs["input_ids"].shape[1]
    captured = capture_text_inputs(model, text_model, inputs)
    ref = reference_logits(model, text_model, captured, info.keep, 1, evict_all=True, prompt_len=prompt_len)
    worst = 0.0
    for b in range(info.keep.shape[0]):
        kept = info.keep[b].nonzero().squeeze(1)
        worst = max(worst, _relative(out.logits[b, info.valid[b]], ref[b, kept]))
    record("pruned prefill equals the stock-only reference", worst, {"kept": info.keep.sum(1).tolist()})
    full = dict(inputs, input_ids=gen.sequences)
    new = gen.sequences[:, prompt_len:]
    full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
    full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new, dtype=inputs["mm_token_type_ids"].dtype)], 1)
    captured = capture_text_inputs(model, text_model, full)
    ref = reference_logits(model, text_model, captured, decode_keep, 1, evict_all=True, prompt_len=prompt_len)
    worst = max(_relative(step, ref[:, prompt_len - 1 + k]) for k, step in enumerate(gen.logits))
    record("pruned decode equals the stock-only reference", worst)
    return results


def main(argv: list[str] | None = None) -> int:
    from photon.bench.models import ModelSpec, build_model

    parser = argparse.ArgumentParser(prog="python -m photon.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for parity.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(TOLERANCE))
    parser.add_argument("--size", default="small", help="a photon bench --size (random weights)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    attns = ["sdpa"]
    flash = importlib.util.find_spec("flash_attn") is not None and args.device.startswith("cuda")
    if flash:
        attns.append("flash_attention_2")
    model, encoder = build_model(ModelSpec(size=args.size, dtype=args.dtype, device=args.device, attn="sdpa"))
    inputs = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in ragged_prompts(encoder).items()}
    results = []
    for attn in attns:
        results += check(model, inputs, attn, args.dtype)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "torch": torch.__version__,
              "size": args.size, "flash_attn_available": flash, "checks": results}
    if not flash:
        report["note"] = "flash-attn is not importable here: the flash_attention_2 checks did not run"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "parity.json").write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['attn']:<18} {r['dtype']:<9} {r['check']}: "
              f"max relative difference {r['max_relative_difference']:.2e} (tolerance {r['tolerance']:.0e})")
    if not flash:
        print(f"note: {report['note']}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
