"""Optional backend wrapping ``qpth.qp.QPFunction`` (comparison / benchmarking only).

qpth solves ``min 0.5 z^T Q z + p^T z  s.t. G z <= h, A z = b`` with a batched primal-dual IPM
that eliminates through ``Q^{-1}``; it needs a nonsingular ``Q``, raises for the whole batch on a
singular factorization and stops on a batch-global criterion (so, unlike ``enum`` and ``ipm``,
its results are *not* batch invariant).  This wrapper

* solves the :func:`~ncvx_core.qp.base.canonicalize` form (scaled, fixed variables decoupled,
  redundant upper bounds dropped) in float64;
* adds the ridge ``ridge_rel * mean(diag P) + ridge_abs`` (defaults 1e-6 and 1e-10) and passes
  ``check_Q_spd=False, verbose=-1``;
* encodes bounds as ``G = [-I; I]`` rows, absent bounds as inactive finite ones,
  so every problem has the same shape; problems with and without the equality are solved as two
  separate groups;
* catches any exception of a group and marks its problems FAILED;
* verifies every answer with the scaled :func:`~ncvx_core.qp.base.kkt_residual`: SOLVED only
  when it is ``<= 1e-9``, INACCURATE when ``<= 1e-6``, FAILED otherwise (the ridge biases the
  answer, so INACCURATE is common).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from .base import BoxQP, QPResult, active_mask, canonicalize, finalize, trivial_result, validate_qp

__all__ = ["QpthQPSolver"]

logger = logging.getLogger("ncvx_core.qp")

_SOLVED_KKT = 1e-9


class QpthQPSolver:
    """qpth's batched PDIPM behind the :class:`~ncvx_core.qp.base.QPSolver` protocol
    (name ``"qpth"``).  Constructing it raises ``ImportError`` when qpth is not installed."""

    name = "qpth"

    def __init__(
        self,
        *,
        ridge_rel: float = 1e-6,
        ridge_abs: float = 1e-10,
        max_iter: int = 20,
        eps: float = 1e-12,
    ) -> None:
        try:
            from qpth.qp import QPFunction
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the 'qpth' QP backend needs the optional package qpth: pip install qpth"
            ) from exc
        self._QPFunction: Any = QPFunction
        self.ridge_rel = float(ridge_rel)
        self.ridge_abs = float(ridge_abs)
        self.max_iter = int(max_iter)
        self.eps = float(eps)

    def supports(self, qp: BoxQP) -> bool:
        """qpth accepts every problem of the type (it may fail on some, reported per problem)."""
        return True

    def solve(self, qp: BoxQP, *, tol: float = 1e-12, active: Tensor | None = None) -> QPResult:
        """Solve with qpth; ``tol`` is passed as qpth's ``eps``."""
        validate_qp(qp)
        act = active_mask(qp, active)
        if qp.m == 0:
            return trivial_result(qp)
        with torch.no_grad():
            can = canonicalize(qp)
            B, m = can.c.shape
            dt, dev = can.c.dtype, can.c.device
            run = act & ~can.bad
            u = torch.zeros(B, m, dtype=dt, device=dev)
            ok_all = torch.zeros(B, dtype=torch.bool, device=dev)
            lb = ~can.fixed
            ubm = torch.isfinite(can.ub) & lb
            eye = torch.eye(m, dtype=dt, device=dev)
            for with_eq in (False, True):
                grp = run & (can.has_eq if with_eq else ~can.has_eq)
                idx = grp.nonzero().squeeze(-1)
                n = int(idx.numel())
                if n == 0:
                    continue
                P = can.P[idx]
                ridge = self.ridge_rel * P.diagonal(dim1=-2, dim2=-1).mean(-1) + self.ridge_abs
                Qr = P + ridge.view(n, 1, 1) * eye
                p = can.c[idx]
                lbi, ubi = lb[idx], ubm[idx]
                # every variable gets both rows (an all-zero row makes qpth's KKT system degenerate):
                # absent bounds become inactive ones (fixed variables, pinned at 0 by the ridge, get
                # [-1, 1]; variables of the sum = 1 equality get the redundant w <= 2; others 1e6)
                G = torch.cat([-eye, eye], dim=0).expand(n, 2 * m, m)  # (n, 2m, m)
                in_eq = can.eq[idx] if with_eq else torch.zeros_like(lbi)
                far = torch.where(in_eq, torch.full_like(p, 2.0), torch.full_like(p, 1e6))
                h = torch.cat(
                    [
                        torch.where(lbi, torch.zeros_like(p), torch.ones_like(p)),
                        torch.where(ubi, can.ub[idx], torch.where(lbi, far, torch.ones_like(p))),
                    ],
                    dim=1,
                )
                if with_eq:
                    A = can.eq[idx].to(dt).unsqueeze(1)
                    b = can.rho[idx].unsqueeze(1)
                else:
                    A = torch.empty(0, dtype=dt, device=dev)
                    b = torch.empty(0, dtype=dt, device=dev)
                try:
                    fn = self._QPFunction(
                        eps=self.eps if tol is None else float(tol),
                        verbose=-1,
                        maxIter=self.max_iter,
                        check_Q_spd=False,
                    )
                    sol = fn(Qr, p, G, h, A, b)
                    sol = sol.reshape(n, m).to(dt)
                except Exception as exc:  # qpth raises for the whole group
                    logger.warning("qpth raised for a group of %d problems: %s", n, exc)
                    continue
                good = torch.isfinite(sol).all(-1)
                u[idx] = torch.where(good.unsqueeze(-1), sol, torch.zeros_like(sol))
                ok_all[idx] = good
            w = can.to_w(u)
            w = torch.where(ok_all.unsqueeze(-1), w, torch.zeros_like(w))
            iters = torch.where(
                run,
                torch.full((B,), self.max_iter, dtype=torch.int32, device=dev),
                torch.zeros(B, dtype=torch.int32, device=dev),
            )
            return finalize(qp, w, ok_all, iters, can.bad, act, solved_kkt=_SOLVED_KKT, can=can)
