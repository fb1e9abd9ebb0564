"""Sharding a command-line evaluation across torchrun processes (torch.distributed).

The unit of work is the **batch**: batch ``b`` holds the samples ``[b * batch_size, (b + 1) *
batch_size)`` of the selected data, and its random seed is derived from ``--seed`` and its first
index only (:func:`batch_seed`). So a batch computes the same records whichever process runs it,
and a sharded run produces exactly the records of a single-process run (given the same number of
torch threads per process: CPU kernels may round differently with a different thread count).

Under torchrun (``WORLD_SIZE > 1`` in the environment) :func:`init` starts the process group
(gloo on the CPU, nccl on CUDA) and each process takes every ``world``-th batch of those still to
do (:func:`my_batches`). Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Dist", "init", "barrier", "finish", "my_batches", "batch_seed"]

logger = logging.getLogger("adv")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run.

    Attributes:
        rank, world: process rank and count (0 and 1 without torchrun).
        local_rank: rank on this machine (selects the CUDA device under torchrun).
        backend: ``"gloo"``, ``"nccl"`` or ``""`` (not distributed).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 if unset or not a positive integer)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init(device_type: str, timeout_hours: float = 12.0) -> Dist:
    """Start the process group if this process runs under torchrun with ``WORLD_SIZE > 1``.

    Args:
        device_type: ``"cpu"`` (gloo) or ``"cuda"`` (nccl).
        timeout_hours: how long a process waits for the others at a barrier (the fastest process
            waits for the slowest one at the end of the run).
    """
    world = env_world_size()
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=timeout_hours))
    logger.info("torch.distributed: rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)


def barrier(d: Dist) -> None:
    """Wait for every process (no-op without torchrun)."""
    if not d.active:
        return
    import torch.distributed as dist

    if d.backend == "nccl":
        dist.barrier(device_ids=[d.local_rank])
    else:
        dist.barrier()


def all_ok(d: Dist, ok: bool) -> bool:
    """True if ``ok`` holds on every process (a collective; no-op without torchrun)."""
    if not d.active:
        return ok
    import torch.distributed as dist

    dev = torch.device("cuda", d.local_rank) if d.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([0 if ok else 1], dtype=torch.int64, device=dev)
    dist.all_reduce(t)
    return int(t.item()) == 0


def finish(d: Dist) -> None:
    """Tear the process group down (no-op without torchrun)."""
    if not d.active:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def my_batches(todo: list[int], d: Dist) -> list[int]:
    """This process's share of the batches still to do: every ``world``-th one, from ``rank``."""
    return list(todo[d.rank::d.world])


def batch_seed(seed: int, first_index: int) -> int:
    """The seed of the batch starting at sample ``first_index``: the first 63 bits of
    ``numpy.random.SeedSequence([seed, first_index])`` (independent streams per batch, the same
    in every process and on every resume)."""
    state = np.random.SeedSequence([int(seed), int(first_index)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)
