"""Training on several processes with PyTorch's own engine (``torch.distributed`` + DistributedDataParallel).

Nothing here changes a single-process run. Under ``torchrun --nproc_per_node=N`` (or ``srun`` + torchrun on a
cluster) the CLI calls :func:`init_from_env` once; from then on every training loop (denoising engine, UDL/JUDL,
Siamese) finds the process group through :func:`context` and

* wraps its network in :class:`~torch.nn.parallel.DistributedDataParallel` (:func:`wrap`; NCCL on GPUs, one
  GPU per process chosen by ``LOCAL_RANK``; gloo on CPUs), so gradients are averaged over the processes and
  every process holds the same weights after every step;
* draws its own training samples on each process (:func:`rank_seed` — the distributed sampler of a loop that
  samples random patches or pairs rather than iterating a fixed dataset);
* stops on the same step on every process (:func:`agree` — a wall-clock budget could otherwise end one
  process a step before another and leave the others waiting forever);
* reports the loss averaged over the processes (:func:`mean`), so the history, and therefore the saved model
  file, is identical on every process; only rank 0 shows progress and writes files (the CLI's job).

Batch runs over many files use :func:`shard` to give each process its own files instead; those jobs train
independently (``collective=False``) and never wait on each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes, its local rank (GPU index on its node),
    and whether training loops should synchronise (``collective``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    collective: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when training loops must synchronise with the other processes."""
        return self.collective and self.world_size > 1


_independent = False


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str | torch.device = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); a no-op outside torchrun. The backend is NCCL when the job runs on CUDA, gloo otherwise."""
    if not launched_by_torchrun():
        return context()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda") or str(device).startswith("cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined the process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return context()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def context() -> DistContext:
    """This process's :class:`DistContext` (rank 0 of 1 outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), collective=not _independent)


class independent:
    """Context manager: training loops inside it do not synchronise with other processes (batch runs where
    each process works on its own files)."""

    def __enter__(self):
        global _independent
        self._previous = _independent
        _independent = True
        return self

    def __exit__(self, *exc):
        global _independent
        _independent = self._previous
        return False


def training_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a synchronised run."""
    if ctx.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``module`` in DistributedDataParallel for a synchronised run (its weights are broadcast from rank 0
    first), else ``module`` itself."""
    if not ctx.active:
        return module
    device = next(module.parameters()).device
    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def rank_seed(seed: int, ctx: DistContext) -> int:
    """The seed of this process's sample stream: ``seed`` on rank 0 (so a 1-process run is unchanged), a
    different stream on every other rank."""
    return int(seed) + 1_000_003 * ctx.rank if ctx.active else int(seed)


def _device_for(ctx: DistContext) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(stop: bool, ctx: DistContext) -> bool:
    """True on every process as soon as one process says ``stop``."""
    if not ctx.active:
        return bool(stop)
    flag = torch.tensor([1.0 if stop else 0.0], device=_device_for(ctx))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def maximum(value: float, ctx: DistContext) -> float:
    """The largest over the processes of a number: what every process should act on when the number is a
    per-process measurement (a wall-clock elapsed time) that steers the training (its learning rate)."""
    if not ctx.active:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device_for(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def mean(values: Sequence[float] | float, ctx: DistContext):
    """The mean over the processes of a number (or of each number of a sequence)."""
    if not ctx.active:
        return values
    scalar = not isinstance(values, Sequence)
    t = torch.tensor([values] if scalar else list(values), dtype=torch.float64, device=_device_for(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= ctx.world_size
    out = t.cpu().tolist()
    return out[0] if scalar else out


def barrier(ctx: DistContext | None = None) -> None:
    ctx = ctx or context()
    if ctx.world_size > 1:
        dist.barrier()


def shard(items: Sequence, ctx: DistContext | None = None) -> list:
    """This process's share of ``items`` (round robin: rank r takes items r, r + N, ...)."""
    ctx = ctx or context()
    return list(items)[ctx.rank::ctx.world_size]
