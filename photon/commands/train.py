"""`photon train` and `photon plot-training`."""

from __future__ import annotations

from photon.cli import Command
from photon.core.hookspecs import hookimpl


def configure_train(parser):
    parser.add_argument("--config", required=True, help="configs/train/phase1.yaml or phase2.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest exactly")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in run.output_dir (log, config, checkpoints) and start again")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. run.max_steps=200 data.train=x.jsonl")


def run_train(args):
    from photon.training.trainer import load_train_config, train

    # deepspeed's launcher appends --local_rank=N; the environment already carries it.
    overrides = [o for o in args.overrides if not o.startswith("--local_rank")]
    cfg = load_train_config(args.config, overrides)
    run = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if run.world.main:
        print(f"trained {run.opt_step} steps ({run.micro_step} forward passes); log: {run.log_path}")
    return 0


def configure_plot(parser):
    parser.add_argument("log", help="a training log (OUT/log.jsonl)")
    parser.add_argument("--out", help="PNG path (default: the log's name with .png)")
    parser.add_argument("--window", type=int, default=20, help="steps in the running mean")


def run_plot(args):
    from photon.training.plot import plot_training

    print(plot_training(args.log, args.out, args.window))
    return 0


@hookimpl
def register_commands(register):
    register("train", Command("Train phase 1 (3D patch embedding) or phase 2 (ITS/SGP) under DeepSpeed.", configure_train, run_train))
    register("plot-training", Command("Draw retention over training and band triggers from a training log to PNG.", configure_plot, run_plot))
