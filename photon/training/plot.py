"""`photon plot-training LOG`: retention over training and band triggers (the paper's Figures 5-6)."""

from __future__ import annotations

import json
from pathlib import Path

from photon.core.errors import PhotonError

STAGE_COLOURS = {"full": "#eeeeee", "soft": "#fff2cc", "hard": "#dbe9f6", "flip": "#e2f0d9", "phase1": "#eeeeee"}


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PhotonError(f"{path}: no such training log")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PhotonError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    if not rows:
        raise PhotonError(f"{path}: the log is empty")
    return rows


def _stage_spans(rows):
    spans, start = [], rows[0]
    for previous, row in zip(rows, rows[1:]):
        if row["stage"] != start["stage"]:
            spans.append((start["stage"], start["step"], previous["step"]))
            start = row
    spans.append((start["stage"], start["step"], rows[-1]["step"]))
    return spans


def plot_training(log: str | Path, out: str | Path | None = None, window: int = 20) -> Path:
    """Draw keep ratio (mean and min-max band), band-trigger rate and loss parts against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log)
    out = Path(out) if out else Path(log).with_suffix(".png")

    def series(key):
        return [(r["step"], r[key]) for r in rows if r.get(key) is not None]

    def smooth(points):
        values = [v for _, v in points]
        out_values = []
        for i in range(len(values)):
            chunk = values[max(0, i - window + 1) : i + 1]
            out_values.append(sum(chunk) / len(chunk))
        return [s for s, _ in points], out_values

    # One panel per quantity the log holds: phase 1 logs no retention or band (no pruning).
    losses = [(key, colour, series(f"loss_{key}")) for key, colour in
              (("ce", "#2ca02c"), ("band", "#9467bd"), ("robust", "#8c564b"), ("flip", "#e377c2"))]
    panels = [name for name, present in (("retention", bool(series("keep_ratio_mean") or series("theta_mean"))),
                                         ("band", bool(series("band_trigger_rate"))),
                                         ("loss", True)) if present]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels) + 0.6), sharex=True, squeeze=False)
    axes = dict(zip(panels, axes[:, 0]))
    stages = []
    for ax in axes.values():
        for stage, first, last in _stage_spans(rows):
            ax.axvspan(first, last + 1, color=STAGE_COLOURS.get(stage, "#ffffff"), zorder=0)
            if stage not in stages:
                stages.append(stage)
    if "retention" in axes:
        ax = axes["retention"]
        keep = series("keep_ratio_mean")
        if keep:
            x, y = smooth(keep)
            ax.plot(x, y, color="#1f77b4", label=f"mean keep ratio ({window}-step mean)")
            lo, hi = series("keep_ratio_min"), series("keep_ratio_max")
            ax.fill_between([s for s, _ in lo], [v for _, v in lo], [v for _, v in hi], color="#1f77b4", alpha=0.15, label="min-max over samples")
        theta = series("theta_mean")
        if theta:
            x, y = smooth(theta)
            ax.plot(x, y, color="#d62728", linestyle="--", label="mean theta")
        ax.set_ylabel("retention")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="best", fontsize=8)
    if "band" in axes:
        x, y = smooth(series("band_trigger_rate"))
        axes["band"].plot(x, y, color="#ff7f0e")
        axes["band"].set_ylabel("band trigger rate")
        axes["band"].set_ylim(-0.02, 1.02)
    for key, colour, points in losses:
        if points:
            x, y = smooth(points)
            axes["loss"].plot(x, y, color=colour, label=key)
    axes["loss"].set_ylabel("loss")
    axes["loss"].set_xlabel("step (forward passes)")
    axes["loss"].legend(loc="best", fontsize=8)
    from matplotlib.patches import Patch

    # The colour key of the stage shading, in the order the stages came.
    fig.legend(handles=[Patch(facecolor=STAGE_COLOURS.get(stage, "#ffffff"), edgecolor="#999999", label=f"{stage} stage")
                        for stage in stages],
               loc="upper right", ncol=len(stages), fontsize=8, title="shading", title_fontsize=8)
    fig.suptitle(f"{Path(log).name}: {len(rows)} steps", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
