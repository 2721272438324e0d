"""The demo's table and the measured statements under it (numbers, not claims)."""

from __future__ import annotations

from typing import Any

from photon.demo.phantoms import KINDS

# Coverage differences smaller than this are within what a few dozen test cases can tell apart.
NOISE = 0.05
# Issue 28's targets for the demo.
MAX_KEEP = 0.30
MIN_LIFT = 0.20
MAX_JACCARD = 0.5
MIN_ABOVE_RANDOM = 0.10
WITHIN_UNPRUNED = 0.03


def _fmt(value: Any, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _get(run: dict, group: str, key: str):
    return (run.get(group) or {}).get(key)


def table(result: dict) -> str:
    header = ["run", "accuracy", "closed", "outside", *KINDS, "kept tokens", "keep ratio", "region coverage (blind)",
              "LLM prefill GFLOPs", "train samples/s", "prefill ms/case", "train step MB"]
    rows = []
    for label, run in result["runs"].items():
        coverage = "all kept" if run["relevant_coverage"] is None else (
            f"{run['relevant_coverage']:.2f} ({run['blind_coverage']:.2f})")
        rows.append([
            label, _fmt(run["accuracy"]), _fmt(run.get("closed_accuracy")), _fmt(run.get("outside_share")), *(_fmt(run["accuracy_by_kind"][k]) for k in KINDS),
            f"{run['kept_tokens']:.0f}/{run['visual_tokens']:.0f}", _fmt(run["keep_ratio"]), coverage,
            _fmt(run["llm_prefill_gflops"], "{:.3f}"), _fmt(_get(run, "timing", "train_samples_per_s"), "{:.1f}"), _fmt(_get(run, "timing", "prefill_ms"), "{:.2f}"),
            _fmt(_get(run, "timing", "train_step_memory_mb"), "{:.0f}"),
        ])
    return _markdown(header, rows)


def _line(cells, widths) -> str:
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"


def _markdown(header: list[str], rows: list[list]) -> str:
    """A markdown table, each column as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join([_line(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(_line(r, widths) for r in rows)])


def curve_table(result: dict) -> str:
    """Accuracy (closed scoring) of each pruner at each kept fraction, trained Photon's point below."""
    curve = result.get("pruner_curve")
    if not curve:
        return ""
    keeps = sorted({r["keep"] for r in curve["rows"]})
    header = ["pruner on the unpruned model", *(f"keep {k:g}" for k in keeps)]
    rows = []
    for name in dict.fromkeys(r["pruner"] for r in curve["rows"]):
        cells = {r["keep"]: f"{_fmt(r['accuracy'])} ({_fmt(r['closed_accuracy'])})" for r in curve["rows"] if r["pruner"] == name}
        rows.append([name, *(cells.get(k, "-") for k in keeps)])
    point = curve["photon"]
    return "\n".join([
        "accuracy (closed scoring) against the kept fraction:", _markdown(header, rows),
        f"trained Photon: {_fmt(point.get('accuracy'))} ({_fmt(point.get('closed_accuracy'))}) at keep {_fmt(point.get('keep_ratio'))}",
    ])


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


def _kinds_above_prior(run: dict, priors: dict) -> tuple[bool, str]:
    below = [k for k in KINDS if priors.get(k) is not None and (run["accuracy_by_kind"][k] or 0) <= priors[k]]
    return not below, ", ".join(f"{k} {_fmt(run['accuracy_by_kind'][k])} (prior {_fmt(priors.get(k))})" for k in KINDS)


def targets(result: dict) -> list[dict]:
    """Each target the demo sets itself (issue 28), whether the measurements meet it, and the
    figures that decide it. held is None where the run did not measure it."""
    runs, out = result["runs"], []
    base, photon = runs["unpruned"], runs["photon"]
    out.append(_target(f"Photon keeps at most {MAX_KEEP:.2f} of the visual tokens", photon["keep_ratio"] <= MAX_KEEP,
                       f"keep ratio {photon['keep_ratio']:.2f}"))
    lift = photon["relevant_coverage"] - photon["blind_coverage"]
    out.append(_target(f"Photon's kept tokens cover the question's region at least {MIN_LIFT:.2f} above a blind selection "
                       "(inside the body)", lift >= MIN_LIFT,
                       f"coverage {photon['relevant_coverage']:.2f}, blind {photon['blind_coverage']:.2f}, lift {lift:+.2f}"))
    jaccard = photon.get("region_jaccard")
    out.append(_target(
        f"one volume asked about each quadrant: Photon's kept sets differ (mean pairwise Jaccard at most {MAX_JACCARD:.1f})",
        None if jaccard is None else jaccard["mean"] <= MAX_JACCARD,
        "not measured" if jaccard is None else f"Jaccard {jaccard['mean']:.2f} over {jaccard['volumes']} volumes "
        f"(range {jaccard['min']:.2f}-{jaccard['max']:.2f})"))
    zero = runs.get("zero-shot ITS")
    out.append(_target(
        "zero-shot ITS on the grounded backbone covers the region above blind",
        None if zero is None else zero["relevant_coverage"] > zero["blind_coverage"],
        "not run" if zero is None else f"coverage {zero['relevant_coverage']:.2f}, blind {zero['blind_coverage']:.2f}"))
    out.append(_target(f"Photon's accuracy within {WITHIN_UNPRUNED * 100:.0f} points of unpruned",
                       photon["accuracy"] >= base["accuracy"] - WITHIN_UNPRUNED - 1e-9,
                       f"{photon['accuracy']:.2f} against {base['accuracy']:.2f}"))
    random = runs.get("random")
    out.append(_target(
        f"Photon's accuracy at least {MIN_ABOVE_RANDOM * 100:.0f} points above random selection at the same rate",
        None if random is None else photon["accuracy"] >= random["accuracy"] + MIN_ABOVE_RANDOM - 1e-9,
        "not run" if random is None else f"{photon['accuracy']:.2f} against {random['accuracy']:.2f}"))
    priors = result.get("answer_prior_by_kind") or {}
    for label, run in (("unpruned", base), ("Photon", photon)):
        held, measured = _kinds_above_prior(run, priors)
        out.append(_target(f"every question kind above its answer prior ({label})", held, measured))
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


def _verdict(target: dict) -> str:
    mark = {True: "held", False: "MISSED", None: "not measured"}[target["held"]]
    return f"{mark}: {target['target']} ({target['measured']})"


def verdicts(result: dict) -> list[str]:
    return [_verdict(t) for t in result.get("targets") or targets(result)]


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
    if base.get("closed_accuracy") is not None:
        lines.append(
            "scored by the likeliest allowed answer instead of the free one: " + ", ".join(
                f"{label} {_fmt(run.get('closed_accuracy'))}" for label, run in runs.items()) +
            "; free answers outside the allowed set: " + ", ".join(
                f"{label} {_fmt(run.get('outside_share'))}" for label, run in runs.items()))
    jaccards = {label: run["region_jaccard"] for label, run in runs.items() if run.get("region_jaccard")}
    if jaccards:
        lines.append(
            "asked about each quadrant of one volume, the kept sets overlap at a mean pairwise Jaccard of " + ", ".join(
                f"{j['mean']:.2f} ({label}, {j['volumes']} volumes)" for label, j in jaccards.items()) +
            " (1: the same tokens whatever the question)")
    if photon["relevant_coverage"] is not None:
        lift = photon["relevant_coverage"] - photon["blind_coverage"]
        verdict = ("more of the region than chance" if lift > NOISE else "less of the region than chance" if lift < -NOISE
                   else "about as much of the region as chance")
        lines.append(
            f"Photon's kept tokens covered {photon['relevant_coverage']:.0%} of each question's region; a blind selection "
            f"of the same size covers {photon['blind_coverage']:.0%}: {verdict}")
        if lift <= NOISE:
            lines.append(
                "ITS ranks visual tokens by the attention the question's tokens pay them at the selection layer; where "
                "the starting backbone's question tokens do not attend to the asked region, neither does the selection "
                "(SGP trains the threshold, not the saliency): that attention comes from pretraining")
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
    grounding = result.get("grounding") or {}
    check = grounding.get("check")
    grounded = "folder" in grounding  # grounded in this demo, or loaded as pretrained
    if check:
        learned = check["region_accuracy"] - check["region_prior"]
        taught = "grounding" if grounded else "pretraining"
        verdict = (f"{taught} taught it the regions" if learned > NOISE else
                   f"{taught} taught it the answers' wording, not where lesions are")
        lines.append(
            f"the {'grounded' if grounded else 'starting'} backbone, asked about each quadrant of the {check['cases'] // 4} "
            f"test volumes (\"Describe the left anterior quadrant.\" -> lesion / clear): accuracy {check['region_accuracy']:.2f}, "
            f"always the commoner answer {check['region_prior']:.2f}: {verdict}")
    if grounded:
        how = "reused from" if grounding["cached"] else "trained into"
        lines.append(f"grounded backbone {how} {grounding['folder']}; the demo took {result['seconds']:.0f} s")
    elif grounding.get("pretrained"):
        made = grounding["pretrained"]
        lines.append(f"started from the shipped demo backbone {made['weights']} (pretrained {made['steps']} steps, "
                     f"{made['seconds'] / 3600:.1f} h, by `photon demo --pretrain`); the demo took {result['seconds']:.0f} s")
    elif grounding:
        lines.append(f"started from {grounding.get('backbone')} as loaded; the demo took {result['seconds']:.0f} s")
    return lines


# -- several runs (seeds) side by side ------------------------------------------------------------
def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _spread(values: list[float | None], pattern: str = "{:.2f}") -> str:
    """mean [min-max] of the values a figure took over the runs ("-" where none measured it)."""
    mean, values = _mean(values), [v for v in values if v is not None]
    if mean is None:
        return "-"
    if len(values) == 1:
        return pattern.format(mean)
    return f"{pattern.format(mean)} [{pattern.format(min(values))}-{pattern.format(max(values))}]"


def _lift(run: dict) -> float | None:
    if run.get("relevant_coverage") is None or run.get("blind_coverage") is None:
        return None
    return run["relevant_coverage"] - run["blind_coverage"]


SPREAD_COLUMNS = (
    ("accuracy", lambda run: run.get("accuracy")),
    ("closed", lambda run: run.get("closed_accuracy")),
    ("outside", lambda run: run.get("outside_share")),
    ("keep ratio", lambda run: run.get("keep_ratio")),
    ("coverage", lambda run: run.get("relevant_coverage")),
    ("blind", lambda run: run.get("blind_coverage")),
    ("lift", _lift),
    ("quadrant Jaccard", lambda run: (run.get("region_jaccard") or {}).get("mean")),
)


def mean_targets(results: list[dict]) -> list[dict]:
    """Issue 28's selection and accuracy targets decided on the means over the runs (it asks them
    of the default run and of the mean over seeds); held is None where no run measured a figure."""
    def photon(get):
        return _mean([get(r["runs"]["photon"]) for r in results])

    keep, lift = photon(lambda run: run.get("keep_ratio")), photon(_lift)
    jaccard = photon(lambda run: (run.get("region_jaccard") or {}).get("mean"))
    accuracy = photon(lambda run: run.get("accuracy"))
    unpruned = _mean([r["runs"]["unpruned"].get("accuracy") for r in results])
    random = _mean([(r["runs"].get("random") or {}).get("accuracy") for r in results])

    def check(held, *values):
        return None if any(v is None for v in values) else held()

    out = [
        _target(f"Photon keeps at most {MAX_KEEP:.2f} of the visual tokens", check(lambda: keep <= MAX_KEEP, keep),
                f"keep ratio {_fmt(keep)}"),
        _target(f"Photon's kept tokens cover the question's region at least {MIN_LIFT:.2f} above a blind selection",
                check(lambda: lift >= MIN_LIFT, lift), f"lift {_fmt(lift, '{:+.2f}')}"),
        _target(f"Photon's kept sets differ by quadrant (mean pairwise Jaccard at most {MAX_JACCARD:.1f})",
                check(lambda: jaccard <= MAX_JACCARD, jaccard), f"Jaccard {_fmt(jaccard)}"),
        _target(f"Photon's accuracy within {WITHIN_UNPRUNED * 100:.0f} points of unpruned",
                check(lambda: accuracy >= unpruned - WITHIN_UNPRUNED - 1e-9, accuracy, unpruned),
                f"{_fmt(accuracy, '{:.3f}')} against {_fmt(unpruned, '{:.3f}')}"),
        _target(f"Photon's accuracy at least {MIN_ABOVE_RANDOM * 100:.0f} points above random selection at the same rate",
                check(lambda: accuracy >= random + MIN_ABOVE_RANDOM - 1e-9, accuracy, random),
                f"{_fmt(accuracy, '{:.3f}')} against {_fmt(random, '{:.3f}')}"),
    ]
    priors = {k: _mean([(r.get("answer_prior_by_kind") or {}).get(k) for r in results]) for k in KINDS}
    for label, name in (("unpruned", "unpruned"), ("Photon", "photon")):
        by_kind = {k: _mean([(r["runs"][name].get("accuracy_by_kind") or {}).get(k) for r in results]) for k in KINDS}
        held, measured = _kinds_above_prior({"accuracy_by_kind": by_kind}, priors)
        out.append(_target(f"every question kind above its answer prior ({label})", held, measured))
    return out


def spread_report(results: list[dict]) -> str:
    """Several demo.json (one per seed) as one report: every figure as its mean [min-max] over
    them, the answer prior, the pruners' accuracy at each kept fraction, and how many runs held
    each target."""
    if not results:
        raise ValueError("no demo.json given")
    seeds = [r.get("settings", {}).get("seed") for r in results]
    labels = list(dict.fromkeys(label for r in results for label in r["runs"]))
    header = ["run", *(name for name, _ in SPREAD_COLUMNS), *KINDS]
    rows = []
    for label in labels:
        runs = [r["runs"][label] for r in results if label in r["runs"]]
        rows.append([label, *(_spread([get(run) for run in runs]) for _, get in SPREAD_COLUMNS),
                     *(_spread([(run.get("accuracy_by_kind") or {}).get(k) for run in runs]) for k in KINDS)])
    rows.append(["answer prior", _spread([r.get("answer_prior_accuracy") for r in results]), *[""] * (len(SPREAD_COLUMNS) - 1),
                 *(_spread([(r.get("answer_prior_by_kind") or {}).get(k) for r in results]) for k in KINDS)])
    lines = [f"{len(results)} runs (seeds {', '.join(str(s) for s in seeds)}): mean [min-max] of each figure", "",
             _markdown(header, rows)]
    curves = [r["pruner_curve"] for r in results if r.get("pruner_curve")]
    if curves:
        keeps = sorted({row["keep"] for c in curves for row in c["rows"]})
        names = list(dict.fromkeys(row["pruner"] for c in curves for row in c["rows"]))
        head = ["accuracy (closed) on the unpruned model", *(f"keep {k:g}" for k in keeps)]
        body = []
        for name in names:
            cells = []
            for keep in keeps:
                found = [row for c in curves for row in c["rows"] if row["pruner"] == name and row["keep"] == keep]
                cells.append(f"{_spread([f['accuracy'] for f in found])} ({_spread([f['closed_accuracy'] for f in found])})")
            body.append([name, *cells])
        lines += ["", _markdown(head, body),
                  f"trained Photon: {_spread([c['photon'].get('accuracy') for c in curves])} "
                  f"({_spread([c['photon'].get('closed_accuracy') for c in curves])}) at keep "
                  f"{_spread([c['photon'].get('keep_ratio') for c in curves])}"]
    scaled = [r["efficiency"] for r in results if r.get("efficiency")]
    if scaled:
        lines += ["", f"{scaled[0]['model']}, {scaled[0]['visual_tokens']} visual tokens, Photon over unpruned: prefill "
                  f"{_spread([s['ratios']['prefill_s'] for s in scaled])}x (ideal {_spread([s['ideal_ratios']['prefill_s'] for s in scaled])}x), "
                  f"train step {_spread([s['ratios']['train_step_s'] for s in scaled])}x "
                  f"(ideal {_spread([s['ideal_ratios']['train_step_s'] for s in scaled])}x)"]
    held: dict[str, list] = {}
    for r in results:
        for t in r.get("targets") or targets(r):
            held.setdefault(t["target"], []).append(t["held"])
    lines += ["", "targets (runs that held each):"]
    lines += [f"- {sum(v is True for v in values)} of {len(values)}: {name}" for name, values in held.items()]
    lines += ["", "targets on the means over the runs:", *(f"- {_verdict(t)}" for t in mean_targets(results))]
    lines += ["", f"wall time {_spread([r.get('seconds') for r in results], '{:.0f}')} s"]
    return "\n".join(lines)
