"""Memory estimates and the automatic choice of inverse-Hessian storage and cache size.

Before a run the solver estimates the bytes of its largest buffers per problem:

* inverse Hessian: ``n^2`` (full BFGS updated in place: n >= 256 on the CPU), ``2 n^2`` (full BFGS
  whose update writes a new matrix) or ``2 m n`` (L-BFGS, m pairs);
* gradient cache: ``L n (2 + p + q)`` (points, objective gradients, constraint Jacobians);
* stationarity-QP workspace: about ``4 L (1 + p + q) n`` (the sample matrix, H times it, gathers)
  plus ``3 (L (1 + p + q))^2`` float64 entries for the QP itself.

With ``auto_memory`` on (the default) and the estimate above the budget, it switches full BFGS to
limited memory, shrinks the cache (when ``ngrad`` was not set) and processes the stationarity QP
in chunks of problems, logging why. ``memory_limit`` (bytes) overrides the detected budget.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .hessian import INPLACE_MIN_N

__all__ = ["MemoryPlan", "available_memory", "plan_memory"]

logger = logging.getLogger("ncvx_core")


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable, else total RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


@dataclass
class MemoryPlan:
    """What the solver will allocate: ``limited_mem_size`` (0 = full BFGS), ``ngrad`` (cache
    capacity L), ``chunk`` (problems per stationarity-QP chunk), ``estimate`` (bytes) and
    ``budget`` (bytes), ``reasons`` (what was changed and why)."""

    limited_mem_size: int
    ngrad: int
    chunk: int
    estimate: int
    budget: int
    reasons: list[str]


def _bytes(B: int, n: int, p: int, q: int, m: int, L: int, chunk: int, elt: int, full_copies: int = 1) -> int:
    w = 1 + p + q
    hess = B * (full_copies * n * n if m == 0 else 2 * m * n) * elt
    cache = B * L * n * (2 + p + q) * elt
    work = chunk * (4 * L * w * n * elt + 3 * (L * w) ** 2 * 8)
    return hess + cache + work


def plan_memory(B: int, n: int, p: int, q: int, dtype: torch.dtype, device: torch.device, *,
                limited_mem_size: int, ngrad: int | None, auto: bool = True,
                memory_limit: float | None = None, fixed_hessian: bool = False) -> MemoryPlan:
    """Choose storage so that the solver's main buffers fit ``budget`` (60 % of free memory)."""
    elt = torch.finfo(dtype).bits // 8
    budget = int(memory_limit) if memory_limit is not None else int(0.6 * available_memory(device))
    m = limited_mem_size
    L = ngrad if ngrad is not None else min(100, 2 * n, n + 10)
    chunk = B
    reasons: list[str] = []
    # the full-memory update writes a second (B, n, n) matrix unless it runs in place
    copies = 1 if torch.device(device).type == "cpu" and n >= INPLACE_MIN_N else 2
    est = _bytes(B, n, p, q, m, L, chunk, elt, copies)
    if not auto or est <= budget:
        return MemoryPlan(m, L, chunk, est, budget, reasons)
    gib = 2.0**30
    if m == 0 and not fixed_hessian and copies * B * n * n * elt > 0.25 * budget:
        m = 100
        while m > 5 and B * 2 * m * n * elt > 0.25 * budget:
            m //= 2
        reasons.append(f"full BFGS needs {copies * B * n * n * elt / gib:.2f} GiB (B={B}, n={n}); using limited memory "
                       f"with m={m} ({B * 2 * m * n * elt / gib:.2f} GiB)")
    if ngrad is None:
        L0 = L
        while L > 2 and B * L * n * (2 + p + q) * elt > 0.3 * budget:
            L = max(2, L // 2)
        if L != L0:
            reasons.append(f"gradient cache of {L0} samples needs {B * L0 * n * (2 + p + q) * elt / gib:.2f} GiB; "
                           f"using ngrad={L}")
    per = 4 * L * (1 + p + q) * n * elt + 3 * (L * (1 + p + q)) ** 2 * 8
    chunk = max(1, min(B, int(0.3 * budget // max(per, 1))))
    if chunk < B:
        reasons.append(f"stationarity QP in chunks of {chunk} problems ({per * chunk / gib:.2f} GiB each)")
    est = _bytes(B, n, p, q, m, L, chunk, elt, copies)
    if est > budget:
        reasons.append(f"estimated {est / gib:.2f} GiB still exceeds the budget of {budget / gib:.2f} GiB")
    for r in reasons:
        logger.warning("memory: %s", r)
    return MemoryPlan(m, L, chunk, est, budget, reasons)
