"""Backend registry: ``"auto"``, ``"enum"``, ``"ipm"``, ``"qpth"``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import Tensor

from .base import BoxQP, QPResult, QPSolver, active_mask, validate_qp
from .enum import EnumQPSolver
from .ipm import IPMQPSolver
from .qpth_backend import QpthQPSolver

__all__ = ["AutoQPSolver", "QP_SOLVERS", "get_qp_solver"]


class AutoQPSolver:
    """Default backend (name ``"auto"``): ``enum`` for box-only problems with ``m <= 3``,
    ``ipm`` otherwise.

    The choice is made per problem (problems of a small batch that carry an equality go to the
    IPM, the others to enumeration), so a problem's result does not depend on its batch.
    """

    name = "auto"

    def __init__(self, enum: EnumQPSolver | None = None, ipm: IPMQPSolver | None = None) -> None:
        self.enum = enum if enum is not None else EnumQPSolver()
        self.ipm = ipm if ipm is not None else IPMQPSolver()

    def supports(self, qp: BoxQP) -> bool:
        return True

    def solve(self, qp: BoxQP, *, tol: float = 1e-12, active: Tensor | None = None) -> QPResult:
        validate_qp(qp)
        if qp.m > self.enum.max_m:
            return self.ipm.solve(qp, tol=tol, active=active)
        if qp.eq_mask is None:
            return self.enum.solve(qp, tol=tol, active=active)
        if self.ipm.fixed_iters is not None:  # no host read: the IPM solves box-only problems too
            return self.ipm.solve(qp, tol=tol, active=active)
        act = active_mask(qp, active)
        has_eq = qp.eq_mask.any(-1)
        n_eq = int(has_eq.sum())
        if n_eq == 0:
            box = BoxQP(qp.Q, qp.q, qp.lo, qp.hi)
            return self.enum.solve(box, tol=tol, active=act)
        if n_eq == qp.B:
            return self.ipm.solve(qp, tol=tol, active=act)
        # split: box-only problems -> enum, the others -> ipm
        box = BoxQP(qp.Q, qp.q, qp.lo, qp.hi)
        r_enum = self.enum.solve(box, tol=tol, active=act & ~has_eq)
        r_ipm = self.ipm.solve(qp, tol=tol, active=act & has_eq)
        sel = has_eq
        return QPResult(
            w=torch.where(sel.unsqueeze(-1), r_ipm.w, r_enum.w),
            status=torch.where(sel, r_ipm.status, r_enum.status),
            iters=torch.where(sel, r_ipm.iters, r_enum.iters),
        )


QP_SOLVERS: dict[str, Callable[[], QPSolver]] = {
    "auto": AutoQPSolver,
    "enum": EnumQPSolver,
    "ipm": IPMQPSolver,
    "qpth": QpthQPSolver,
}


def get_qp_solver(spec: str | QPSolver) -> QPSolver:
    """Return a solver instance for a registered name, or ``spec`` itself if it is a solver.

    Raises:
        ValueError: unknown name (the message lists the valid names and the closest match).
        TypeError: ``spec`` is neither a string nor an object satisfying :class:`QPSolver`.
        ImportError: the backend's optional dependency is missing (``"qpth"``).
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        factory = QP_SOLVERS.get(key)
        if factory is None:
            valid = sorted(QP_SOLVERS)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown QP solver {spec!r}; valid names: {', '.join(valid)}{hint}")
        return factory()
    if isinstance(spec, QPSolver) and not isinstance(spec, type):
        return spec
    raise TypeError(
        f"expected a QP solver name or an object implementing QPSolver "
        f"(name, supports, solve), received {type(spec).__name__}"
    )
