"""`photon launch`: torchrun for Photon's commands, exiting as the workers did.

    photon launch --nproc-per-node 8 infer --backbone photon-s2 --data test.jsonl --out preds.jsonl

torchrun turns any worker's failure into its own exit 1 and a ChildFailedError report, so a script
cannot tell bad input (every rank exits 2) or an interrupt (130) from a crash. `photon launch` runs
the same elastic launcher (torch.distributed.run) on `python -m photon COMMAND ...` and exits 2 when
the failed workers stopped on bad input, 130 when interrupted, 1 for anything else, with one line
saying which ranks failed how. The workers' own messages (one line each) are theirs.
"""

from __future__ import annotations

import argparse
import sys

from photon.cli import Command
from photon.core.errors import PhotonError
from photon.core.hookspecs import hookimpl

BAD_INPUT, INTERRUPTED = 2, 130


def configure(parser):
    parser.add_argument("--nproc-per-node", type=int, default=1, help="worker processes on this node (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes taking part (default 1)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank among --nnodes (default 0)")
    parser.add_argument("--master-addr", default="127.0.0.1", help="rank 0's node address (default 127.0.0.1)")
    parser.add_argument("--master-port", type=int, help="rank 0's port (default: a free one when alone, 29500 with --nnodes > 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                        help="the photon command and its arguments, e.g. infer --backbone B --data D --out P")


def exit_code(codes: list[int]) -> int:
    """One code for the failed workers' exit codes: 130 if any was interrupted, 2 if all stopped on
    bad input, else 1. A worker killed by SIGINT reports -2; one the launcher terminated, -15."""
    if any(code in (INTERRUPTED, -2) for code in codes):
        return INTERRUPTED
    own = [code for code in codes if code != -15]  # SIGTERM: a worker the launcher stopped after another failed
    if own and all(code == BAD_INPUT for code in own):
        return BAD_INPUT
    return 1


def run(args):
    if not args.command or args.command[0].startswith("-"):
        raise PhotonError("give the photon command to run on every worker, e.g. `photon launch --nproc-per-node 2 infer ...`")
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise PhotonError(f"--nproc-per-node and --nnodes must be at least 1, got {args.nproc_per_node} and {args.nnodes}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    from photon.training.distributed import free_port

    port = args.master_port or (free_port() if args.nnodes == 1 else 29500)
    launcher = get_args_parser().parse_args([
        f"--nproc-per-node={args.nproc_per_node}", f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}",
        f"--master-addr={args.master_addr}", f"--master-port={port}", "--module", "photon", *args.command,
    ])
    try:
        torchrun(launcher)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        code = exit_code([failure.exitcode for _, failure in failures])
        ranks = ", ".join(f"{rank} (exit {failure.exitcode})" for rank, failure in failures)
        why = {BAD_INPUT: "bad input", INTERRUPTED: "interrupted"}.get(code, "failed")
        print(f"photon launch: {args.command[0]}: {why}: {len(failures)} of {args.nproc_per_node * args.nnodes} "
              f"workers stopped, ranks {ranks}", file=sys.stderr)
        return code
    except (KeyboardInterrupt, SignalException):
        print(f"photon launch: {args.command[0]}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return 0


@hookimpl
def register_commands(register):
    register("launch", Command("Run a photon command on several worker processes (torchrun's launcher) and exit as "
                               "they did: 2 for bad input, 130 when interrupted.", configure, run))
