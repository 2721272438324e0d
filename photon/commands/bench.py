"""`photon bench`: time, memory and FLOPs of the stock model, Photon and the baselines, side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from photon.cli import Command
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise PhotonError(f"cannot read {text!r} as a comma-separated list: {exc}") from exc

    return parse


def configure(parser):
    from photon.bench.harness import BenchOptions
    from photon.bench.models import SIZES

    defaults = BenchOptions()
    parser.add_argument("--size", choices=list(SIZES), default=None, help="random-weight model of this size (default: tiny; qwen3-* are Qwen3-VL)")
    parser.add_argument("--backbone", help="a registered backbone name or a local folder (real weights) instead of --size")
    parser.add_argument("--pruners", default=",".join(defaults.pruners), help="comma-separated pruner names")
    parser.add_argument("--keep", default=",".join(f"{r:g}" for r in defaults.keep), help="comma-separated keep ratios, each run for every pruner")
    parser.add_argument("--visual-tokens", type=_csv(int), default=(defaults.visual_tokens,),
                        help="about this many visual tokens per sample reach the LLM; a comma-separated list runs a sweep "
                             "(growth exponents, targets, and a log-log plot beside --json)")
    parser.add_argument("--size-time-limit", type=float, default=None, metavar="SECONDS",
                        help="sweep: skip a size whose projected run time exceeds this (default: no limit)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="prompts per batch (same shape, different pixels)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.new_tokens, help="tokens each generate() produces")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="measured rounds (medians are reported)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="unmeasured rounds first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--attn", default=defaults.model.attn, help="attention implementation: sdpa, eager or flash_attention_2")
    parser.add_argument("--seed", type=int, default=defaults.model.seed)
    parser.add_argument("--statistic", choices=["min", "median"], default=defaults.statistic,
                        help="summary of the repeats for the absolute times and the ideals built on them (min: least disturbed by other work); ratios are always the median of per-round ratios")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--json", metavar="OUT", help="write every measurement to this JSON file")
    parser.add_argument("--paper-table", action="store_true",
                        help="the paper's efficiency table: stock, Photon (3D embedding + ITS) and Photon Max on one volume "
                             "(docs/benchmarks.md); --pruners and --keep do not apply")
    parser.add_argument("--volume", default="140,280,280", metavar="D,H,W",
                        help="with --paper-table: the volume's depth, height and width (default 140,280,280, the paper's)")


def options_from(args):
    import torch

    from photon.bench.harness import BenchOptions
    from photon.bench.models import ModelSpec

    if args.size and args.backbone:
        raise PhotonError("give --size (random weights) or --backbone (real weights), not both")
    for name in ("batch", "max_new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise PhotonError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.visual_tokens or min(args.visual_tokens) < 1:
        raise PhotonError(f"--visual-tokens must be one or more sizes >= 1, got {','.join(map(str, args.visual_tokens)) or 'none'}")
    if args.size_time_limit is not None and args.size_time_limit <= 0:
        raise PhotonError(f"--size-time-limit must be > 0 seconds, got {args.size_time_limit:g}")
    if args.threads is not None and args.threads < 1:
        raise PhotonError(f"--threads must be >= 1, got {args.threads}")
    if args.warmup < 0:
        raise PhotonError(f"--warmup must be >= 0, got {args.warmup}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return BenchOptions(
        model=ModelSpec(size=None if args.backbone else (args.size or "tiny"), backbone=args.backbone, seed=args.seed,
                        dtype=dtype, device=device, attn=args.attn),
        pruners=_csv(str)(args.pruners),
        keep=_csv(float)(args.keep),
        visual_tokens=args.visual_tokens[0],
        batch=args.batch,
        new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        statistic=args.statistic,
        threads=args.threads,
    )


def write_json(path: str, result: dict) -> None:
    from photon.core.files import write_atomic

    write_atomic(path, json.dumps(result, indent=2))


def run(args):
    from tqdm import tqdm

    from photon.bench.harness import run_bench
    from photon.bench.report import render, render_sweep

    options = options_from(args)
    sweep = len(set(args.visual_tokens)) > 1
    if sweep and args.paper_table:
        raise PhotonError("--paper-table measures one volume; give one --visual-tokens value (or none) with it")
    volume = _csv(int)(args.volume)
    if len(volume) != 3 or min(volume) < 1:
        raise PhotonError(f"--volume takes D,H,W (three positive sizes), got {args.volume!r}")
    with tqdm(desc="photon bench", file=sys.stderr, unit="step") as bar:

        def progress(message, step, total):
            bar.total = total
            bar.n = step
            bar.set_postfix_str(message, refresh=True)

        if args.paper_table:
            from photon.bench.paper import render_paper_table, run_paper_table

            result = run_paper_table(options, volume, progress=progress)
        elif sweep:
            from photon.bench.sweep import run_sweep

            plot = str(Path(args.json).with_suffix(".png")) if args.json else None
            # Each finished size is written at once (atomically), so a stopped sweep keeps it.
            keep = (lambda partial: write_json(args.json, partial)) if args.json else None  # noqa: E731
            result = run_sweep(options, args.visual_tokens, progress=progress, time_limit_s=args.size_time_limit, plot=plot,
                               on_size=keep)
        else:
            result = run_bench(options, progress=progress)
        bar.n = bar.total
    if args.paper_table:
        print(render_paper_table(result))
    else:
        print(render_sweep(result) if sweep else render(result))
        if sweep and not args.json:
            print("\n(give --json OUT to keep the measurements and draw the log-log plot beside them)")
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0


@hookimpl
def register_commands(register):
    register("bench", Command("Time, memory and FLOPs of the stock model, Photon and baseline pruners, side by side.", configure, run))
