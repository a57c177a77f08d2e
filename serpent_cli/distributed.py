"""Process groups for torchrun: the same command runs alone or as one of N ranks.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here degrades to a
single process, so callers never branch on how they were started.  torch is imported only when a
process group is involved: a lone process plans and reports without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
TIMEOUT_ENV = "SERPENT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the ranks of one job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def context_from_env() -> DistContext:
    """The rank layout torchrun gave this process (a lone process is rank 0 of 1)."""
    return DistContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed(device_type: str = "cpu") -> DistContext:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA); idempotent."""
    ctx = context_from_env()
    if not ctx.is_distributed:
        return ctx
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend, timeout=collective_timeout())
    return ctx


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective for the others (``SERPENT_DIST_TIMEOUT`` s, default 30 min).

    Why: a rank that dies without a word (killed, crashed) must not hold the others forever; the wait
    stays long enough for rank 0 to validate or checkpoint while the others wait at a barrier.
    """
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
    return timedelta(seconds=seconds if seconds > 0 else DEFAULT_TIMEOUT_S)


def agree_on_problem(problem: str | None, ctx: DistContext, device: torch.device | None = None) -> str | None:
    """Every rank learns whether any rank has a problem this step, and rank 0 learns what it is.

    Why: a rank that stops alone leaves the others waiting in their next collective.  All ranks call
    this at the same point of every step; one all-reduce of a flag is cheap, and the text is
    gathered only when something went wrong.  Returns the first problem (``"rank R: ..."``) or None.
    """
    if not ctx.is_distributed:
        return problem
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return problem
    flag = torch.tensor([0.0 if problem is None else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0.0:
        return None
    texts = gather_objects(problem, ctx)
    return next(f"rank {rank}: {text}" for rank, text in enumerate(texts) if text is not None)


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of ``items`` (round-robin, so sizes differ by at most one)."""
    return list(items[ctx.rank :: ctx.world_size])


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.is_distributed:
        return [obj]
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op alone)."""
    if not ctx.is_distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if this process joined one (none can exist before torch.distributed loads)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
