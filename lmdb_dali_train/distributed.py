"""Process placement: global rank (for data shards), local rank (for the device), world size.

Sources, in order: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), SLURM's inside an ``srun``
step (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID: a batch script's own SLURM_NTASKS describes the
allocation, not processes that exist), and the arguments of a ``--multiprocessing-distributed`` spawn.
Shards always follow the global rank: the local rank only picks the GPU, so two nodes never read the
same shard.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

T = TypeVar("T")


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
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return Placement(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Placement(0, 1, 0)


def slurm_tasks_without_step(env: Mapping[str, str] | None = None) -> int | None:
    """SLURM_NTASKS when this process runs in a multi-task allocation but outside an ``srun`` step (a bare
    ``python train.py`` in an ``sbatch -n 8`` script): it is one process, not rank 0 of that many."""
    env = os.environ if env is None else env
    tasks = int(env.get("SLURM_NTASKS", "1"))
    return tasks if tasks > 1 and "SLURM_STEP_NUM_TASKS" not in env and "RANK" not in env else None


def spans_nodes(env: Mapping[str, str] | None = None) -> bool:
    """Whether the launcher's world covers more than this node (torchrun's or SLURM's variables)."""
    env = os.environ if env is None else env
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"]) > int(env["LOCAL_WORLD_SIZE"])
    return int(env.get("SLURM_STEP_NUM_NODES", "1")) > 1


def pick_device(cuda: bool, local_rank: int) -> torch.device:
    """The CPU, or this local rank's own GPU: two ranks never share one. ``cuda``: ``RunConfig.cuda``."""
    if not cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"local rank {local_rank} but only {count} GPUs are visible on this node: ranks would share a GPU; "
            f"start at most {count} processes per node (or make more GPUs visible)"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def default_rendezvous(multi_node: bool) -> None:
    """``env://`` without torchrun: this machine, port 29500, unless MASTER_ADDR/MASTER_PORT are set. A
    world spanning nodes must be told where rank 0 is: guessing 127.0.0.1 would wait for peers forever."""
    if multi_node and "MASTER_ADDR" not in os.environ:
        raise ConfigError(
            "the processes span several nodes: set MASTER_ADDR (and MASTER_PORT) to the address of the rank-0 "
            "node, or pass --dist-url tcp://HOST:PORT"
        )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


def init_process_group(
    place: Placement, device: torch.device, backend: str | None, url: str, timeout_s: float = 600.0
) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU); a single process joins none. ``timeout_s``
    bounds every collective, the start-up rendezvous included. Under torchrun's agent store, the group
    meets in a namespace of its own round (``round_store``)."""
    if not place.distributed:
        return
    if url == "env://":
        default_rendezvous(multi_node=spans_nodes())
    device_arg: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}  # CUDA only: binds NCCL to it
    timeout = timedelta(seconds=timeout_s)
    where: dict[str, Any] = {"init_method": url}
    if url == "env://" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
        where = {"store": round_store(place, timeout_s)}
    dist.init_process_group(
        backend or ("nccl" if device.type == "cuda" else "gloo"),
        rank=place.rank,
        world_size=place.world_size,
        timeout=timeout,
        **where,
        **device_arg,
    )


ROUND_KEY = "lmdb-dali-train/round"  # in torchrun's store: rank 0's beacon port and this round's namespace
PROBE_TIMEOUT_S = 2.0  # how long a rank tries a beacon before it takes the round key for a stale one
_beacon: dist.TCPStore | None = None  # rank 0's, kept for the life of the process


def round_store(place: Placement, timeout_s: float) -> dist.Store:
    """torchrun's store (``MASTER_ADDR:MASTER_PORT``), under a namespace only this round's ranks share.

    torchrun's agent keeps one store for all the rounds of an elastic run (``--max-restarts``), and the
    process group's keys (each rank's gloo or NCCL address) from a round whose rank died stay in it: a
    restarted rank reads the dead rank's address and fails to connect (``Gloo connectFullMesh failed ...
    Connection refused``), and ``TORCHELASTIC_RESTART_COUNT`` cannot tell the rounds apart (each agent
    counts its own restarts). So rank 0 draws a fresh namespace, serves it from a small store of its own
    (the beacon, on a free port of its own node, which need not be the node of torchrun's store), and
    publishes the beacon's address and the namespace under one key of torchrun's store; the other ranks take
    the key only once the beacon it names answers with that namespace. A key left by an earlier round
    names a beacon that is gone (or that answers with another namespace), so it is never taken for this
    round's."""
    global _beacon
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    timeout = timedelta(seconds=timeout_s)
    agent = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    if place.is_main:
        namespace = uuid.uuid4().hex
        _beacon = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timeout)
        _beacon.set("namespace", namespace)
        agent.set(ROUND_KEY, f"{_own_address(host, port)} {_beacon.port} {namespace}")
    else:
        namespace = _this_rounds_namespace(agent, timeout_s)
    return dist.PrefixStore(f"lmdb-dali-train/{namespace}/", agent)


def _own_address(host: str, port: int) -> str:
    """This node's address as seen on the way to ``host:port`` (torchrun's store): where the other nodes
    reach rank 0's beacon (127.0.0.1 when the store is on this machine's loopback)."""
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as probe:
        return str(probe.getsockname()[0])


def _this_rounds_namespace(agent: dist.Store, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        agent.wait([ROUND_KEY])  # the first round: until rank 0 publishes
        host, beacon_port, namespace = agent.get(ROUND_KEY).decode().split()
        if _listening(host, int(beacon_port)):  # an earlier round's beacon is gone: refused at once, quietly
            try:
                beacon = dist.TCPStore(
                    host, int(beacon_port), is_master=False, timeout=timedelta(seconds=PROBE_TIMEOUT_S)
                )
                if beacon.get("namespace").decode() == namespace:
                    return namespace
            except RuntimeError:  # not a store, or one without the namespace: its port was taken since
                pass
        if time.monotonic() > deadline:
            raise ConfigError(
                f"rank 0 did not publish this round's rendezvous within --dist-timeout {timeout_s:g} s "
                f"(the key {ROUND_KEY} in torchrun's store names a beacon that does not answer)"
            )
        time.sleep(0.2)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def on_main(is_main: bool, device: torch.device, write: Callable[[], T], what: str) -> T | None:
    """Rank 0 runs ``write`` (its result returned there, None elsewhere); every rank learns whether it
    failed with a ``ConfigError`` (disk full, permissions) and raises one, so no rank is left waiting in a
    later collective. ``what``: what rank 0 writes, for the other ranks' error."""
    failure: ConfigError | None = None
    result = None
    if is_main:
        try:
            result = write()
        except ConfigError as exc:
            failure = exc
    failed = all_reduce_max(torch.tensor([1.0 if failure else 0.0], device=device)).item() > 0
    if failure is not None:
        raise failure
    if failed:
        raise ConfigError(f"rank 0 could not write {what} (its error is in rank 0's output)")
    return result


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op without a process group); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def from_main(obj: Any, group: dist.ProcessGroup | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object; ``group``: a gloo group for host objects)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0, group=group)
    return holder[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
