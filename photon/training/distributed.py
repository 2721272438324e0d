"""Process-group set-up that works alone on a CPU and unchanged under `deepspeed` or `torchrun`."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What init_distributed may write into os.environ when no launcher did.
_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> World:
    """Join (or, alone, create) the process group DeepSpeed will use.

    A launcher (deepspeed, torchrun) sets RANK/WORLD_SIZE/MASTER_*; a plain `photon train`
    gets a one-process group on a free port. CPU runs use gloo and DeepSpeed's CPU accelerator.
    """
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return World(dist.get_rank(), local_rank, dist.get_world_size(), device)


@contextlib.contextmanager
def environment_kept():
    """Inside, init_distributed may set RANK, MASTER_PORT ... for a launcher-less run; on the way out
    they are as they were, so a later run in the same process (a notebook) or a subprocess it starts
    does not inherit this run's rank and port. The process group itself stays: a later run joins it."""
    before = {key: os.environ.get(key) for key in _ENV_KEYS}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
