"""The demo's table and the measured statements under it (numbers, not claims)."""

from __future__ import annotations

from typing import Any

from photon.demo.phantoms import KINDS

# Coverage differences smaller than this are within what a few dozen test cases can tell apart.
NOISE = 0.05


def _fmt(value: Any, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _get(run: dict, group: str, key: str):
    return (run.get(group) or {}).get(key)


def table(result: dict) -> str:
    header = ["run", "accuracy", *KINDS, "kept tokens", "keep ratio", "region coverage (blind)",
              "LLM prefill GFLOPs", "train samples/s", "prefill ms/case", "train step MB"]
    rows = []
    for label, run in result["runs"].items():
        coverage = "all kept" if run["relevant_coverage"] is None else (
            f"{run['relevant_coverage']:.2f} ({run['blind_coverage']:.2f})")
        rows.append([
            label, _fmt(run["accuracy"]), *(_fmt(run["accuracy_by_kind"][k]) for k in KINDS),
            f"{run['kept_tokens']:.0f}/{run['visual_tokens']:.0f}", _fmt(run["keep_ratio"]), coverage,
            _fmt(run["llm_prefill_gflops"], "{:.3f}"), _fmt(_get(run, "timing", "train_samples_per_s"), "{:.1f}"), _fmt(_get(run, "timing", "prefill_ms"), "{:.2f}"),
            _fmt(_get(run, "timing", "train_step_memory_mb"), "{:.0f}"),
        ])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def findings(result: dict) -> list[str]:
    """What the numbers say, each statement computed from them."""
    runs = result["runs"]
    base, photon = runs["unpruned"], runs["photon"]
    lines = [
        f"answer prior (the most common training answer for each kind of question): accuracy {result['answer_prior_accuracy']:.2f}",
        f"Photon: accuracy {photon['accuracy']:.2f} against {base['accuracy']:.2f} unpruned, keeping "
        f"{photon['kept_tokens']:.0f} of {photon['visual_tokens']:.0f} visual tokens ({photon['keep_ratio']:.0%})",
    ]
    if "random" in runs:
        lines.append(f"the same model keeping random tokens at that rate: accuracy {runs['random']['accuracy']:.2f}")
    if photon["relevant_coverage"] is not None:
        lift = photon["relevant_coverage"] - photon["blind_coverage"]
        verdict = ("more of the region than chance" if lift > NOISE else "less of the region than chance" if lift < -NOISE
                   else "about as much of the region as chance")
        lines.append(
            f"Photon's kept tokens covered {photon['relevant_coverage']:.0%} of each question's region; a blind selection "
            f"of the same size covers {photon['blind_coverage']:.0%}: {verdict}")
        if lift <= NOISE:
            lines.append(
                "ITS ranks visual tokens by the attention the question's tokens pay them at the selection layer; in a "
                "backbone trained from random weights for minutes nothing has taught that attention where lesions are "
                "(SGP trains the threshold, not the saliency), which a pretrained backbone brings with it")
    lines.append(
        f"the decoder's prefill needs {_ratio(photon['llm_prefill_gflops'], base['llm_prefill_gflops'])} the unpruned FLOPs "
        "(analytic); the measured times below also hold the vision encoder and fixed per-call costs, which no "
        "pruning removes and which dominate a model this small (photon bench shows larger ones)")
    timing_p, timing_b = photon.get("timing") or {}, base.get("timing") or {}
    lines.append(
        f"side by side on the same batches: a Photon training step (hard stage) runs at "
        f"{_ratio(timing_p.get('train_samples_per_s'), timing_b.get('train_samples_per_s'))} the unpruned samples/s; "
        f"prefill takes {_ratio(timing_p.get('prefill_ms'), timing_b.get('prefill_ms'))} the unpruned time")
    lines.append(
        f"a training step's memory (peak above what it started from): "
        f"{_ratio(timing_p.get('train_step_memory_mb'), timing_b.get('train_step_memory_mb'))} the unpruned model's")
    return lines
