"""The tables `photon bench` prints: stock's absolute figures, then every configuration as
ratios to stock, each next to (in brackets) its ideal ratio from FLOPs."""

from __future__ import annotations

TIME_COLUMNS = (
    ("vision", "vision_s"),
    ("prefill", "prefill_s"),
    ("decode/tok", "decode_s_per_token"),
    ("generate", "generate_s"),
    ("train step", "train_step_s"),
)
# Phases whose time does not follow FLOPs show a second ideal beside the FLOPs one.
SECOND_IDEAL = {"prefill_s": "prefill_by_part", "decode_s_per_token": "decode_bytes", "generate_s": "generate_by_phase"}
MEMORY_COLUMNS = (
    ("gen peak", "generate_peak_memory"),
    ("gen above base", "generate_memory_above_base"),
    ("train peak", "train_peak_memory"),
    ("train above base", "train_memory_above_base"),
    ("ckpt/plain train", "train_checkpointed_memory_above_base"),
)


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _range(spread: dict | None) -> str:
    """The min-max of the per-round ratios, beside their median."""
    return "" if not spread else f" [{spread['min']:.2f}-{spread['max']:.2f}]"


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def render(result: dict) -> str:
    inp, configs = result["input"], result["configurations"]
    stock = configs[0]
    options = result["command_options"]
    model = options["model"]
    lines = [
        f"model: {result['model']['description']}",
        f"device: {model['device']} {model['dtype']} attn={model['attn']}; batch {inp['batch']}, "
        f"{inp['visual_tokens_per_sample'][0]} visual tokens/sample (grid t,h,w {inp['video_grid_thw'][0]}), "
        f"prompt {inp['prompt_tokens']} tokens, {inp['new_tokens']} new tokens; times: {options['statistic']} of "
        f"{options['repeats']} interleaved repeats after {options['warmup']} warm-up",
    ]
    t, f = {k: v[options["statistic"]] for k, v in stock["times"].items()}, stock["flops"]
    stock_line = (
        "stock: vision {:.1f} ms, prefill {:.1f} ms, decode {:.2f} ms/token, generate {:.1f} ms, train step {:.1f} ms; "
        "GFLOPs: vision {:.2f}, prefill {:.2f}, decode {:.4f}/token, train step {:.2f}"
    ).format(
        1e3 * t["vision_s"], 1e3 * t["prefill_s"], 1e3 * t["decode_s_per_token"], 1e3 * t["generate_s"], 1e3 * t["train_step_s"],
        f["vision"] / 1e9, f["prefill"] / 1e9, f["decode"] / 1e9, f["train"] / 1e9,
    )
    lines.append(stock_line)
    if "memory" in stock:
        m = stock["memory"]
        lines.append(
            f"stock memory ({m['method']}): generate peak {_mib(m['generate']['peak'])} (base {_mib(m['generate']['base'])}), "
            f"train peak {_mib(m['train']['peak'])} (base {_mib(m['train']['base'])})"
        )
    lines += ["", "ratio to stock, measured: the median of the per-round ratios [their min-max] (ideal from FLOPs; prefill: "
                  "FLOPs | the LM head's time fixed, the rest by FLOPs; decode: FLOPs | bytes read; generate: FLOPs | each "
                  "phase at its own ideal):"]
    header = ["config", "layer", "kept"] + [name for name, _ in TIME_COLUMNS]
    rows = []
    for c in configs[1:]:
        r, i = c["ratios"], c["ideal_ratios"]
        row = [c["label"], str(c["layer"]), f"{_num(r['kept_tokens'], 3)} ({_num(i['kept_tokens'])})"]
        row += [f"{_num(r[key])}{_range(c.get('ratio_spread', {}).get(key))} "
                f"({_num(i[key])}{' | ' + _num(i[SECOND_IDEAL[key]]) if key in SECOND_IDEAL else ''})"
                for _, key in TIME_COLUMNS]
        rows.append(row)
    lines += _grid(header, rows)
    if stock.get("prefill_parts") is not None:
        lines += ["", "prefill, where the time goes (ms; own: time outside the decoder layers beyond stock's, the runtime's "
                      "selection, gathers and masks; floor: the ratio to stock if the runtime added nothing, stock's time "
                      "outside its layers plus these layers as measured):"]
        part_rows = []
        for c in configs:
            parts = c["prefill_parts"]
            ms = lambda key: _num(1e3 * parts[key], 1)  # noqa: E731
            own = "-" if c is stock else ms("own_s")
            part_rows.append([c["label"], ms("layers_s"), ms("head_s"), ms("other_s"), own,
                              f"{_num(c['ratios']['prefill_s'])} ({_num(parts['floor'])})"])
        lines += _grid(["config", "decoder layers", "LM head", "other", "own", "prefill (floor)"], part_rows)
    kv = stock["kv_cache"]
    lines += ["", f"KV cache bytes, ratio to stock (ideal from the kept counts, no padding); stock holds "
                  f"{_mib(kv['after_prefill'])} after the prefill, {_mib(kv['final'])} after the last decode step:"]
    kv_rows = [[c["label"], f"{_num(c['ratios']['kv_bytes_after_prefill'], 3)} ({_num(c['ideal_ratios']['kv_bytes_after_prefill'], 3)})",
                f"{_num(c['ratios']['kv_bytes_final'], 3)} ({_num(c['ideal_ratios']['kv_bytes_final'], 3)})",
                _num(c["kv_cache"]["after_prefill"] / c["kv_cache"]["ideal_after_prefill"], 3)] for c in configs[1:]]
    lines += _grid(["config", "after prefill", "after decode", "measured/ideal"], kv_rows)
    if "memory" in stock:
        lines += ["", "peak memory, ratio to stock (above base: minus weights, inputs and runtime before the phase; "
                      "ckpt/plain train: the training step with activation checkpointing over the plain step, same configuration):"]
        mem_rows = [[c["label"]] + [_num(c["ratios"].get(key)) for _, key in MEMORY_COLUMNS]
                    + [_num(c["ideal_ratios"].get("generate_peak_memory"))] for c in configs]
        lines += _grid(["config"] + [name for name, _ in MEMORY_COLUMNS] + ["gen peak ideal"], mem_rows)
    return "\n".join(lines)


def render_sweep(result: dict) -> str:
    """Each measured size's tables, the skipped sizes with their reasons, the growth exponents and the targets."""
    from photon.bench.sweep import MEMORY_PHASES, TIME_PHASES

    lines = []
    for entry in result["sweep"]:
        if "skipped" in entry:
            lines += [f"== {entry['visual_tokens']} visual tokens: skipped: {entry['skipped']}", ""]
            continue
        lines += [f"== {entry['visual_tokens']} visual tokens ({entry['wall_s']:.0f} s)"]
        lines += [render({**result, "input": entry["input"], "configurations": entry["configurations"]}), ""]
    growth = result["growth"]
    if growth:
        phases = [(key, name) for key, name in TIME_PHASES] + [(f"{key}_peak_memory", name) for key, name in MEMORY_PHASES]
        phases = [(key, name) for key, name in phases if any(key in g for g in growth.values())]
        lines += ["growth exponents: log-log slope of each phase against the visual tokens, least-squares fit over the "
                  "measured sizes (smallest to largest size):"]
        rows = [[label] + [f"{_num(g[key]['fit'])} ({_num(g[key]['ends'])})" if key in g else "-" for key, _ in phases]
                for label, g in growth.items()]
        lines += _grid(["config"] + [name for _, name in phases], rows)
    if result.get("targets"):
        lines += ["", "targets:"]
        for t in result["targets"]:
            verdict = {True: "holds", False: "MISSED", None: "reported"}[t["holds"]]
            lines.append(f"  {t['configuration']}: {t['target']}: {verdict} ({t['detail']})")
    if result.get("plot"):
        lines += ["", f"plot: {result['plot']}"]
    return "\n".join(lines)
