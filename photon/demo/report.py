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


def efficiency_table(result: dict) -> str:
    """Photon over unpruned on the larger random-weight model, measured (FLOP ideal)."""
    scaled = result.get("efficiency")
    if not scaled:
        return ""
    ratios, ideal = scaled["ratios"], scaled["ideal_ratios"]
    cells = [f"{ratios[k]:.2f}x ({ideal[k]:.2f}x)" for k in ("prefill_s", "decode_s_per_token", "generate_s", "train_step_s")]
    return "\n".join([
        f"where pruning pays: {scaled['model']}, random weights (time does not depend on them), "
        f"{scaled['visual_tokens']} visual tokens, Photon keeping {scaled['kept_tokens']} at layer {scaled['layer']}; "
        "time over unpruned, measured (FLOP ideal):",
        "| prefill | decode/token | generate | train step |",
        "|---|---|---|---|",
        "| " + " | ".join(cells) + " |",
    ])


def _target(name: str, held: bool | None, measured: str) -> dict:
    return {"target": name, "held": held, "measured": measured}


def targets(result: dict) -> list[dict]:
    """Each target the demo sets itself (issue 19), whether the measurements meet it, and the
    figures that decide it. held is None where the run did not measure it."""
    runs, out = result["runs"], []
    base, photon = runs["unpruned"], runs["photon"]
    out.append(_target("Photon keeps at most half of the visual tokens", photon["keep_ratio"] <= 0.5,
                       f"keep ratio {photon['keep_ratio']:.2f}"))
    lift = photon["relevant_coverage"] - photon["blind_coverage"]
    out.append(_target("Photon's kept tokens cover the question's region at least 0.15 above a blind selection",
                       lift >= 0.15, f"coverage {photon['relevant_coverage']:.2f}, blind {photon['blind_coverage']:.2f}, lift {lift:+.2f}"))
    zero = runs.get("zero-shot ITS")
    out.append(_target(
        "zero-shot ITS on the grounded backbone covers the region above blind",
        None if zero is None else zero["relevant_coverage"] > zero["blind_coverage"],
        "not run" if zero is None else f"coverage {zero['relevant_coverage']:.2f}, blind {zero['blind_coverage']:.2f}"))
    out.append(_target("Photon's accuracy within 3 points of unpruned", photon["accuracy"] >= base["accuracy"] - 0.03,
                       f"{photon['accuracy']:.2f} against {base['accuracy']:.2f}"))
    random = runs.get("random")
    out.append(_target(
        "Photon's accuracy at least 3 points above random selection at the same rate",
        None if random is None else photon["accuracy"] >= random["accuracy"] + 0.03,
        "not run" if random is None else f"{photon['accuracy']:.2f} against {random['accuracy']:.2f}"))
    priors = result.get("answer_prior_by_kind") or {}
    below = [k for k in KINDS if priors.get(k) is not None and (photon["accuracy_by_kind"][k] or 0) <= priors[k]]
    out.append(_target("every question kind above its answer prior (Photon)", not below, ", ".join(
        f"{k} {_fmt(photon['accuracy_by_kind'][k])} (prior {_fmt(priors.get(k))})" for k in KINDS)))
    where = photon["accuracy_by_kind"]["where"]
    out.append(_target("the spatial kind (which quadrant, 4 choices) above 0.4 (Photon)", where is not None and where > 0.4,
                       f"where {_fmt(where)}; unpruned {_fmt(base['accuracy_by_kind']['where'])}"))
    scaled = result.get("efficiency")
    tp, tb = photon.get("timing") or {}, base.get("timing") or {}
    tiny = (f"tiny model: train step {_ratio(tp.get('train_step_ms'), tb.get('train_step_ms'))}, "
            f"prefill {_ratio(tp.get('prefill_ms'), tb.get('prefill_ms'))} the unpruned time")
    for name, key, tiny_key in (("training step", "train_step_s", "train_step_ms"), ("prefill", "prefill_s", "prefill_ms")):
        if scaled:
            held, where_ = scaled["ratios"][key] < 1, f"{scaled['model']}: {scaled['ratios'][key]:.2f}x; {tiny}"
        else:
            held = None if not tp.get(tiny_key) else tp[tiny_key] < tb[tiny_key]
            where_ = tiny
        out.append(_target(f"a Photon {name} faster than unpruned, side by side", held, where_))
    pictures = result["pictures"]
    out.append(_target("pictures: one volume asked about each quadrant, and the retention curve",
                       bool(pictures.get("quadrants")) and bool(pictures.get("retention")),
                       f"{pictures.get('quadrants')}, {pictures.get('retention')}"))
    return out


def verdicts(result: dict) -> list[str]:
    mark = {True: "held", False: "MISSED", None: "not measured"}
    return [f"{mark[t['held']]}: {t['target']} ({t['measured']})" for t in result.get("targets") or targets(result)]


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
                "ITS ranks visual tokens by the attention the question's tokens pay them at the selection layer; the "
                "demo's few hundred grounding steps teach a tiny random-initialised backbone little of that attention "
                "(SGP trains the threshold, not the saliency), which a released backbone brings from pretraining")
    lines.append(
        f"the decoder's prefill needs {_ratio(photon['llm_prefill_gflops'], base['llm_prefill_gflops'])} the unpruned FLOPs "
        "(analytic); the measured times below also hold the vision encoder and fixed per-call costs, which no "
        "pruning removes and which dominate a model this small (the larger model's row below shows where pruning pays)")
    timing_p, timing_b = photon.get("timing") or {}, base.get("timing") or {}
    lines.append(
        f"side by side on the same batches: a Photon training step (hard stage) runs at "
        f"{_ratio(timing_p.get('train_samples_per_s'), timing_b.get('train_samples_per_s'))} the unpruned samples/s; "
        f"prefill takes {_ratio(timing_p.get('prefill_ms'), timing_b.get('prefill_ms'))} the unpruned time")
    lines.append(
        f"a training step's memory (peak above what it started from): "
        f"{_ratio(timing_p.get('train_step_memory_mb'), timing_b.get('train_step_memory_mb'))} the unpruned model's")
    grounding = result.get("grounding")
    check = (grounding or {}).get("check")
    if check:
        learned = check["region_accuracy"] - check["region_prior"]
        verdict = ("grounding taught it the regions" if learned > NOISE else
                   "grounding taught it the answers' wording, not where lesions are")
        lines.append(
            f"the grounded backbone, asked about each quadrant of the {check['cases'] // 4} test volumes as grounding asks "
            f"(\"Describe the left anterior quadrant.\" -> lesion / clear): accuracy {check['region_accuracy']:.2f}, "
            f"always the commoner answer {check['region_prior']:.2f}: {verdict}")
    if grounding:
        how = "reused from" if grounding["cached"] else "trained into"
        lines.append(f"grounded backbone {how} {grounding['folder']}; the demo took {result['seconds']:.0f} s")
    return lines
