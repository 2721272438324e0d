"""The sweep's log-log picture: time and peak memory against the visual tokens, one line per
configuration (the repeats' min-max as error bars), each pruned configuration's ideal dashed
(stock's figure at that size times the ideal ratio the table prints)."""

from __future__ import annotations

from pathlib import Path

from photon.bench.sweep import MEMORY_PHASES, PLOT_IDEAL, TIME_PHASES

PANELS = [("time", key, name) for key, name in TIME_PHASES if key != "vision_s"] + [("memory", key, name) for key, name in MEMORY_PHASES]


def write_plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [e for e in result["sweep"] if "configurations" in e]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [p for p in PANELS if p[0] == "time" or all("memory" in e["configurations"][0] for e in measured)]
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    statistic = result["command_options"]["statistic"]
    xs = [e["visual_tokens"] for e in measured]
    labels = [c["label"] for c in measured[0]["configurations"]] if measured else []
    colours = {label: f"C{n % 10}" for n, label in enumerate(labels)}
    for axis, (kind, key, name) in zip(axes.flat, panels):
        for index, label in enumerate(labels):
            rows_of = [e["configurations"][index] for e in measured]
            stock_rows = [e["configurations"][0] for e in measured]
            if kind == "time":
                ys = [r["times"][key][statistic] for r in rows_of]
                low = [y - min(r["times"][key]["samples"]) for y, r in zip(ys, rows_of)]
                high = [max(r["times"][key]["samples"]) - y for y, r in zip(ys, rows_of)]
                axis.errorbar(xs, ys, yerr=[low, high], color=colours[label], marker="o", markersize=3, capsize=2,
                              linewidth=1.2, label=label)
                ideal_key = PLOT_IDEAL[key]
                ideal = [s["times"][key][statistic] * r["ideal_ratios"].get(ideal_key) if r["ideal_ratios"].get(ideal_key) else None
                         for s, r in zip(stock_rows, rows_of)]
            else:
                ys = [r["memory"][key]["peak"] / 2**20 for r in rows_of]
                axis.plot(xs, ys, color=colours[label], marker="o", markersize=3, linewidth=1.2, label=label)
                ideal = ([s["memory"]["generate"]["peak"] / 2**20 * r["ideal_ratios"]["generate_peak_memory"]
                          for s, r in zip(stock_rows, rows_of)] if key == "generate" else [None] * len(xs))
            if index and any(v is not None for v in ideal):
                points = [(x, v) for x, v in zip(xs, ideal) if v is not None]
                axis.plot(*zip(*points), color=colours[label], linestyle="--", linewidth=0.9, alpha=0.8)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("visual tokens per sample")
        axis.set_ylabel("seconds" if kind == "time" else "peak MiB")
        axis.set_title(name)
        axis.grid(True, which="both", alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if labels:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    skipped = [f"{e['visual_tokens']}: {e['skipped']}" for e in result["sweep"] if "skipped" in e]
    title = f"{result['model']['description'] if result.get('model') else ''}: solid measured ({statistic} of repeats, bars "
    title += "min-max), dashed ideal"
    figure.suptitle(title + ("\nskipped " + "; ".join(skipped) if skipped else ""), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
