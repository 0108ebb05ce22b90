"""Process placement: global rank (for data shards), local rank (for the device), world size.

Sources, in order: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), SLURM's (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID) when a job step runs one task per process, and the arguments of a
``--multiprocessing-distributed`` spawn. Shards always follow the global rank: the local rank only
picks the GPU, so two nodes never read the same shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def placement_from_env(env: Mapping[str, str] | None = None) -> Placement:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return Placement(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Placement(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Placement(0, 1, 0)


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    torch.cuda.set_device(device)
    return device


def default_rendezvous() -> None:
    """``env://`` without torchrun: this machine, port 29500, unless MASTER_ADDR/MASTER_PORT are set."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


def init_process_group(place: Placement, device: torch.device, backend: str | None, url: str) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU); a single process joins none."""
    if not place.distributed:
        return
    if url == "env://":
        default_rendezvous()
    device_arg: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}  # CUDA only: binds NCCL to it
    dist.init_process_group(
        backend or ("nccl" if device.type == "cuda" else "gloo"),
        init_method=url,
        rank=place.rank,
        world_size=place.world_size,
        timeout=timedelta(minutes=30),
        **device_arg,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op without a process group); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
