"""Run a batched ncvx_core problem through PyGRANSO, one problem per call (optional reference).

PyGRANSO (AGPL-3.0, ``pip install pygranso``; it needs ``numpy<2``, ``scipy`` and ``osqp``) is used
as a black box for cross-checks and benchmarks only. ``available()`` says whether it can be
imported here.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "ReferenceResult", "solve_reference"]


def _import() -> Any:
    # PyGRANSO imports gurobipy unconditionally although it only uses it when asked to; an empty
    # stand-in module lets it load without the commercial solver installed.
    sys.modules.setdefault("gurobipy", types.ModuleType("gurobipy"))
    sys.modules["gurobipy"].GRB = None  # type: ignore[attr-defined]
    from pygranso.pygranso import pygranso
    from pygranso.pygransoStruct import pygransoStruct

    return pygranso, pygransoStruct


def available() -> bool:
    """True when PyGRANSO can be imported."""
    try:
        _import()
    except Exception:  # any import problem means "not available" (missing package, numpy 2, ...)
        return False
    return True


@dataclass
class ReferenceResult:
    """Per-problem results of the reference, stacked: ``status, iters, fn_evals (B,)`` long;
    ``final_f, best_f, best_violation (B,)`` float64; ``best_x (B, *shape)``; ``seconds (B,)``."""

    status: Tensor
    iters: Tensor
    fn_evals: Tensor
    final_f: Tensor
    best_f: Tensor
    best_violation: Tensor
    best_x: Tensor
    seconds: Tensor


def solve_reference(fn: Callable[..., Any], x0: Tensor, options: dict[str, Any] | None = None) -> ReferenceResult:
    """Solve each row of a batched problem separately with PyGRANSO.

    ``fn`` is a batched ncvx_core problem function (it may take ``idx=``); row b is solved by
    calling it on a batch of one with ``idx = [b]``. ``options`` uses the GRANSO names.
    """
    import inspect

    pygranso, Struct = _import()
    takes_idx = "idx" in inspect.signature(fn).parameters
    B, shape = x0.shape[0], tuple(x0.shape[1:])
    n = int(torch.Size(shape).numel())
    out: dict[str, list[Any]] = {k: [] for k in ("status", "iters", "fn_evals", "final_f", "best_f",
                                                 "best_violation", "best_x", "seconds")}
    for b in range(B):
        idx = torch.tensor([b])

        def comb(X: Any, idx: Tensor = idx) -> list[Any]:
            x = X.x.reshape(1, *shape)
            f, ci, ce = fn(x, idx=idx) if takes_idx else fn(x)
            ci_s = ce_s = None
            if ci is not None and ci.shape[1]:
                ci_s = Struct()
                ci_s.c = ci[0]
            if ce is not None and ce.shape[1]:
                ce_s = Struct()
                ce_s.c = ce[0]
            return [f[0], ci_s, ce_s]

        opts = Struct()
        opts.torch_device = torch.device("cpu")
        opts.x0 = x0[b].detach().reshape(n, 1).double().clone()
        opts.print_level = 0
        for k, v in (options or {}).items():
            setattr(opts, k, v)
        t0 = time.perf_counter()
        soln = pygranso(var_spec={"x": [n, 1]}, combined_fn=comb, user_opts=opts)
        out["seconds"].append(time.perf_counter() - t0)
        out["status"].append(int(soln.termination_code))
        out["iters"].append(int(soln.iters))
        out["fn_evals"].append(int(soln.fn_evals))
        out["final_f"].append(float(soln.final.f))
        best = soln.best if hasattr(soln, "best") else soln.most_feasible
        out["best_f"].append(float(best.f))
        out["best_violation"].append(max(float(getattr(best, "tvi", 0.0) or 0.0), float(getattr(best, "tve", 0.0) or 0.0)))
        out["best_x"].append(torch.as_tensor(best.x).reshape(shape).double())
    return ReferenceResult(
        status=torch.tensor(out["status"]), iters=torch.tensor(out["iters"]), fn_evals=torch.tensor(out["fn_evals"]),
        final_f=torch.tensor(out["final_f"], dtype=torch.float64), best_f=torch.tensor(out["best_f"], dtype=torch.float64),
        best_violation=torch.tensor(out["best_violation"], dtype=torch.float64), best_x=torch.stack(out["best_x"]),
        seconds=torch.tensor(out["seconds"], dtype=torch.float64),
    )
