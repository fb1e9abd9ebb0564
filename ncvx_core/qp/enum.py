"""Exact face enumeration for small box-constrained QPs (m <= 3, no equality).

For each of the ``3^m`` faces of the box (every variable at its lower bound, at its upper bound
or free) the free block of the stationarity condition is solved by the adjugate formula; faces
whose free block is numerically singular (the Hessian may be singular, even zero) are skipped.
Every candidate that is feasible (up to round-off, then clipped) is a feasible point, so the
smallest objective over the candidates is at least the optimum; and some optimum lies on a face
whose free block is nonsingular (moving along a null direction keeps the objective constant
until a bound is hit; the face with every variable at a bound has an empty free block), so the
smallest candidate objective *is* the optimum.  Candidates whose bound multipliers have the right signs
("consistent" faces) are preferred among near-ties.

Pure batched tensor ops, no data-dependent Python control flow and no host sync in the solve
itself (the CUDA-graph friendly path); only ``supports`` inspects the data.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import Tensor

from ..utils import bmv, compute_mode, device_constant
from .base import (
    INACCURATE_KKT,
    BoxQP,
    Canonical,
    QPResult,
    active_mask,
    canonicalize,
    finalize,
    for_caller,
    trivial_result,
    validate_qp,
)

__all__ = ["EnumQPSolver"]

logger = logging.getLogger("ncvx_core.qp")

_FEAS_TOL = 1e-9  # scaled units (variables in [0, 1], objective O(1))
_SIGN_TOL = 1e-8
_TIE_TOL = 1e-12
_DET_TOL = 1e-13  # relative (to Hadamard's bound) determinant below which a face block is singular

def _faces(m: int, device: torch.device) -> Tensor:
    """(3^m, m) int8 face codes: 0 = at lower bound, 1 = at upper bound, 2 = free."""
    rows = lambda dev: torch.tensor(list(itertools.product((0, 1, 2), repeat=m)),  # noqa: E731
                                    dtype=torch.int8, device=dev).reshape(3**m, m)
    return device_constant(("enum_faces", m), device, rows)


class EnumQPSolver:
    """Exact batched face enumeration for box-only QPs with ``m <= 3`` (name ``"enum"``)."""

    name = "enum"
    max_m = 3

    def supports(self, qp: BoxQP) -> bool:
        """True iff ``m <= 3`` and no problem has an equality (inspects ``eq_mask``: host sync)."""
        if qp.m > self.max_m:
            return False
        if qp.eq_mask is not None and bool(qp.eq_mask.any()):
            return False
        return True

    def solve(self, qp: BoxQP, *, tol: float = 1e-12, active: Tensor | None = None) -> QPResult:
        """Solve all problems of ``qp`` exactly (up to round-off).  ``tol`` is unused.

        Raises ``ValueError`` if the batch is not supported (``m > 3`` or an equality).
        """
        validate_qp(qp)
        if not self.supports(qp):
            raise ValueError(
                f"EnumQPSolver supports box-only problems with m <= {self.max_m}; "
                f"received m={qp.m}, equality={'yes' if qp.eq_mask is not None else 'no'}"
            )
        act = active_mask(qp, active)
        if qp.m == 0:
            return trivial_result(qp)
        with compute_mode():
            can = canonicalize(qp)
            try:
                u, consistent = _enum_solve(can)
            except RuntimeError as exc:  # eigh failure on pathological data
                logger.warning("enum: linear algebra failed (%s); falling back to the IPM", exc)
                u = None
            if u is not None:
                w = can.to_w(u)
                iters = torch.ones(qp.B, dtype=torch.int32, device=qp.device)
                res = finalize(qp, w, consistent, iters, can.bad, act, solved_kkt=INACCURATE_KKT, can=can)
        if u is None:
            from .ipm import IPMQPSolver

            return IPMQPSolver().solve(qp, tol=tol, active=active)
        return for_caller(res)


def _small_solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``A x = b`` for many tiny systems by the adjugate formula (``m <= 3``, elementwise
    tensor ops: no LAPACK call, whose per-matrix cost dominates at these sizes).

    ``A``: (..., m, m); ``b``: (..., m). Returns ``x`` (..., m) and ``regular`` (...) bool: the
    determinant is above ``_DET_TOL`` relative to the product of the row norms (Hadamard's bound),
    i.e. the system is numerically nonsingular; ``x`` is meaningless where it is not.
    """
    m = A.shape[-1]
    rows = A.norm(dim=-1).prod(-1)
    if m == 1:
        det = A[..., 0, 0]
        adj = torch.ones_like(A)
    elif m == 2:
        a, b_, c, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 0], A[..., 1, 1]
        det = a * d - b_ * c
        adj = torch.stack([torch.stack([d, -b_], -1), torch.stack([-c, a], -1)], -2)
    elif m == 3:
        # cofactor C_ij = (-1)^(i+j) M_ij; adj = C^T
        def cof(i: int, j: int) -> Tensor:
            r = [k for k in range(3) if k != i]
            c_ = [k for k in range(3) if k != j]
            mnr = A[..., r[0], c_[0]] * A[..., r[1], c_[1]] - A[..., r[0], c_[1]] * A[..., r[1], c_[0]]
            return mnr if (i + j) % 2 == 0 else -mnr

        C = [[cof(i, j) for j in range(3)] for i in range(3)]
        det = A[..., 0, 0] * C[0][0] + A[..., 0, 1] * C[0][1] + A[..., 0, 2] * C[0][2]
        adj = torch.stack([torch.stack([C[j][i] for j in range(3)], -1) for i in range(3)], -2)
    else:  # pragma: no cover - callers guarantee m <= 3
        raise ValueError(f"_small_solve: expected m <= 3, received m={m}")
    regular = torch.isfinite(det) & (det.abs() > _DET_TOL * rows)
    x = bmv(adj, b) / torch.where(regular, det, torch.ones_like(det)).unsqueeze(-1)
    return x, regular


def _enum_solve(can: Canonical) -> tuple[Tensor, Tensor]:
    """Enumerate the faces of the canonical (scaled, box-only) problem.

    Returns the scaled solution ``u`` (B, m) and whether a consistent face was chosen (B,).
    """
    P, c, ub = can.P, can.c, can.ub
    B, m = c.shape
    if m == 0:
        return c.clone(), torch.ones(B, dtype=torch.bool, device=c.device)
    codes = _faces(m, c.device)  # (F, m) with F = 3^m
    at_hi = codes == 1
    free = codes == 2  # (F, m)
    ub_inf = ~torch.isfinite(ub)  # (B, m)
    ub_fin = torch.where(ub_inf, torch.zeros_like(ub), ub)
    # a face with a variable "at hi" where hi = +inf is invalid
    face_ok = ~(at_hi.unsqueeze(0) & ub_inf.unsqueeze(1)).any(-1)  # (B, F)
    uA = torch.where(at_hi.unsqueeze(0), ub_fin.unsqueeze(1), torch.zeros_like(ub_fin).unsqueeze(1))
    uA = torch.where(free.unsqueeze(0), torch.zeros_like(uA), uA)  # (B, F, m)
    Pb = P.unsqueeze(1)  # (B, 1, m, m)
    outer = free.unsqueeze(-1) & free.unsqueeze(-2)  # (F, m, m)
    Pf = torch.where(outer.unsqueeze(0), Pb, torch.zeros_like(Pb))  # (B, F, m, m)
    rhs = -(c.unsqueeze(1) + bmv(Pb, uA))  # (B, F, m)
    rhs = torch.where(free.unsqueeze(0), rhs, torch.zeros_like(rhs))
    # the free block with the identity on the bound variables: block diagonal, so its inverse
    # solves the free block and leaves the bound variables (rhs 0) at 0
    Pf = Pf + torch.diag_embed((~free).to(P.dtype)).unsqueeze(0)
    uF, regular = _small_solve(Pf, rhs)
    u = torch.where(free.unsqueeze(0), uF, uA)  # (B, F, m)
    ubb = ub.unsqueeze(1)
    feas = ((u >= -_FEAS_TOL) & (u <= ubb + _FEAS_TOL)).all(-1) & face_ok & regular
    feas &= torch.isfinite(u).all(-1)
    u = torch.minimum(torch.maximum(u, torch.zeros_like(u)), ubb)
    u = torch.where(torch.isfinite(u), u, torch.zeros_like(u))
    g = bmv(Pb, u) + c.unsqueeze(1)  # (B, F, m)
    fixed = can.fixed.unsqueeze(1)
    lo_ok = (codes == 0).unsqueeze(0) & (g >= -_SIGN_TOL)
    hi_ok = at_hi.unsqueeze(0) & (g <= _SIGN_TOL)
    fr_ok = free.unsqueeze(0) & (g.abs() <= _SIGN_TOL)
    consistent = feas & (lo_ok | hi_ok | fr_ok | fixed).all(-1)
    f = 0.5 * (u * (g + c.unsqueeze(1))).sum(-1)  # 0.5 u'Pu + c'u = 0.5 u'(g + c)
    inf = torch.full_like(f, float("inf"))
    f_feas = torch.where(feas, f, inf)
    f_cons = torch.where(consistent, f, inf)
    best_feas, i_feas = f_feas.min(-1)
    best_cons, i_cons = f_cons.min(-1)
    use_cons = best_cons <= best_feas + _TIE_TOL * torch.clamp(best_feas.abs(), min=1.0)
    idx = torch.where(use_cons, i_cons, i_feas)  # (B,)
    u_best = torch.gather(u, 1, idx.view(B, 1, 1).expand(B, 1, m)).squeeze(1)
    return u_best, use_cons
