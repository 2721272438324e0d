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
    steps = [r["step"] for r in rows]

    def series(key):
        return [(r["step"], r[key]) for r in rows if r.get(key) is not None]

    def smooth(points):
        values = [v for _, v in points]
        out_values = []
        for i in range(len(values)):
            chunk = values[max(0, i - window + 1) : i + 1]
            out_values.append(sum(chunk) / len(chunk))
        return [s for s, _ in points], out_values

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for ax in axes:
        for stage, first, last in _stage_spans(rows):
            ax.axvspan(first, last + 1, color=STAGE_COLOURS.get(stage, "#ffffff"), zorder=0)
    keep = series("keep_ratio_mean")
    if keep:
        x, y = smooth(keep)
        axes[0].plot(x, y, color="#1f77b4", label=f"mean keep ratio ({window}-step mean)")
        lo, hi = series("keep_ratio_min"), series("keep_ratio_max")
        axes[0].fill_between([s for s, _ in lo], [v for _, v in lo], [v for _, v in hi], color="#1f77b4", alpha=0.15, label="min-max over samples")
    theta = series("theta_mean")
    if theta:
        x, y = smooth(theta)
        axes[0].plot(x, y, color="#d62728", linestyle="--", label="mean theta")
    axes[0].set_ylabel("retention")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="best", fontsize=8)
    triggers = series("band_trigger_rate")
    if triggers:
        x, y = smooth(triggers)
        axes[1].plot(x, y, color="#ff7f0e")
    axes[1].set_ylabel("band trigger rate")
    axes[1].set_ylim(-0.02, 1.02)
    for key, colour in (("ce", "#2ca02c"), ("band", "#9467bd"), ("robust", "#8c564b"), ("flip", "#e377c2")):
        points = series(f"loss_{key}")
        if points:
            x, y = smooth(points)
            axes[2].plot(x, y, color=colour, label=key)
    axes[2].set_ylabel("loss")
    axes[2].set_xlabel("step (forward passes)")
    axes[2].legend(loc="best", fontsize=8)
    fig.suptitle(f"{Path(log).name}: {len(rows)} steps; shading: " + ", ".join(sorted({r['stage'] for r in rows})))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
