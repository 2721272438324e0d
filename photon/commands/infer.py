"""`photon infer`: predictions for a records file, batched and resumable (photon.inference.infer)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from photon.cli import Command
from photon.commands.model_options import add_model_arguments, check_model_arguments, open_from
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl
from photon.inference import ON_CHANGE, Shard, infer, kept_summary
from photon.wrapping import random_weights_note


def configure(parser):
    parser.add_argument("--data", required=True, metavar="FILE.jsonl", help="records (docs/records.md), e.g. from `photon convert`")
    parser.add_argument("--out", required=True, metavar="PREDS.jsonl", help="predictions to write; ids already there are skipped")
    parser.add_argument("--batch-size", type=int, default=4, help="records per generate() call (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="start OUT again instead of resuming it")
    parser.add_argument("--on-change", choices=ON_CHANGE, default="refuse",
                        help="when resuming finds predictions whose record changed (question, media content, reference) or "
                             "left --data: refuse (default, naming the ids) or redo (predict them again, drop the others)")
    parser.add_argument("--unpruned", action="store_true", help="predict with the stock forward (the baseline for `photon eval --compare`)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of reporting and skipping it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    add_model_arguments(parser)


def run(args):
    if not Path(args.data).is_file():
        raise PhotonError(f"--data {args.data}: no such records file")
    with open(args.data, encoding="utf-8", errors="replace") as handle:
        if not any(line.strip() for line in handle):
            raise PhotonError(f"--data {args.data}: the records file is empty; nothing to predict")
    if args.batch_size < 1:
        raise PhotonError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_model_arguments(args)
    shard = join_launcher(args)
    opened, options = open_from(args)
    outcome = infer(
        opened.loaded, args.data, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        media_options=options, strict=args.strict, overwrite=args.overwrite, on_change=args.on_change, prune=not args.unpruned,
        progress=not args.no_progress, shard=shard,
    )
    if shard.rank == 0:
        print(f"photon infer: {outcome}", file=sys.stderr)
        for facts in outcome.ranks:
            rate = facts["written"] / facts["seconds"] if facts["seconds"] else 0.0
            print(f"photon infer: rank {facts['rank']}: {facts['written']} records in {facts['seconds']:.1f} s "
                  f"({rate:.2f} records/s), {facts['resumed']} resumed, {facts['skipped']} bad", file=sys.stderr)
        if Path(args.out).is_file():
            print(f"photon infer: {args.out}: {kept_summary(Path(args.out))}", file=sys.stderr)
        note = random_weights_note(opened.loaded)
        if note:
            print(note, file=sys.stderr)
    return 1 if outcome.skipped else 0


def join_launcher(args) -> Shard:
    """Under torchrun or the deepspeed launcher (WORLD_SIZE > 1): join the process group (NCCL on
    GPUs, gloo on CPUs), take this rank's GPU, and return this rank's share of the records."""
    import os

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return Shard(0, 1)
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size(), barrier=dist.barrier)


@hookimpl
def register_commands(register):
    register("infer", Command("Answer every record of a JSONL file with a wrapped model (batched, resumable) for `photon eval`.",
                              configure, run))
