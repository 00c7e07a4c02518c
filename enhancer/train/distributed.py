"""Distributed data parallel plumbing: process-group setup from torchrun or SLURM, collectives, clean shutdown.

Usage::

    torchrun --nproc-per-node 2 -m enhancer.cli train --data /data/chest_xray --out runs/r1     # one box
    srun --ntasks-per-node 4 enhancer train --job jobs/train.toml  # SLURM: MASTER_ADDR/MASTER_PORT exported

    from enhancer.train.distributed import init_distributed, shutdown
    ctx = init_distributed("auto")     # DistContext(rank, world_size, local_rank, device); no group when alone
    ...
    shutdown(ctx)                       # barrier + destroy_process_group (after dropping the DDP model)

This is an edge module: it alone reads the launcher's environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from
torchrun, else ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID`` inside an ``srun`` step). Backend: NCCL
on CUDA, gloo on CPU. Only rank 0 writes files; the others compute and take part in the collectives.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """The launcher's environment is incomplete; the message says what to set."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launcher_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables, else from an ``srun`` step's, else (0, 1, 0).

    A SLURM batch script itself (no ``srun``) is one process even when the job has several tasks: only a step
    started by ``srun`` sets ``SLURM_STEP_NUM_TASKS``."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def local_cuda_index(local_rank: int, device_count: int) -> int:
    """The CUDA device of the process with ``local_rank`` on its node, among ``device_count`` visible devices.

    ``cuda:LOCAL_RANK`` when every process of the node sees all its GPUs (torchrun, ``srun --gres=gpu:N``); device 0
    when the cluster binds one GPU per task (``--gpus-per-task=1``: ``CUDA_VISIBLE_DEVICES`` holds one id, so the
    local rank is not a valid ordinal there)."""
    if device_count < 1:
        raise DistributedError("no CUDA device is visible to this process; check CUDA_VISIBLE_DEVICES or use cpu")
    return local_rank if 0 <= local_rank < device_count else 0


def rank_cuda_device(environ: Mapping[str, str] | None = None, device_count: int | None = None) -> str:
    """``cuda:N`` for this process from the launcher's local rank (``local_cuda_index``); ``device_count``: the
    visible CUDA devices (default: ``torch.cuda.device_count()``)."""
    _, _, local = launcher_ranks(environ)
    count = torch.cuda.device_count() if device_count is None else device_count
    return f"cuda:{local_cuda_index(local, count)}"


def init_distributed(device: str = "auto", *, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group the launcher describes (nothing to do for a single process); pick this rank's
    device (``local_cuda_index``: ``cuda:LOCAL_RANK``, or ``cuda:0`` with one visible GPU per task)."""
    rank, world, local = launcher_ranks()
    kind = device.split(":")[0]
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise DistributedError(f"device {device!r} asked for but CUDA is not available; use --device cpu or auto")
    if world == 1:
        return DistContext(device=(device if ":" in device else "cuda") if use_cuda else "cpu")
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedError(
                f"rank {rank} of {world}: {' and '.join(missing)} not set. torchrun sets them; under srun export "
                "MASTER_ADDR (the first node's address, e.g. from `scontrol show node <name>` NodeAddr) and "
                "MASTER_PORT (a free port, e.g. 29500) in the batch script"
            )
        backend = "nccl" if use_cuda else "gloo"
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        if use_cuda:
            torch.cuda.set_device(torch.device(rank_cuda_device()))
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("rank %d of %d (local %d) joined the %s process group", rank, world, local, backend)
    return DistContext(rank, world, local, rank_cuda_device() if use_cuda else "cpu", backend)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64 on the rank's device)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly. Callers drop their DDP-wrapped model first: torch's gloo backend can
    abort at interpreter exit ("terminate called without an active exception") when a DDP model and the group
    are torn down in the wrong order; model deleted, a final barrier, then destroy_process_group avoids it."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
