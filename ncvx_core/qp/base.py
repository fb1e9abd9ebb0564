"""Problem type, result type, solver protocol and solver-independent helpers of the QP layer.

Every QP that BFGS-SQP solves (the steering dual and the termination / stationarity QP) is an
instance of one batched problem type::

    min_w  0.5 w^T Q w + q^T w
    s.t.   lo <= w <= hi                       (elementwise; hi may be +inf, lo == hi fixes w_i)
           sum(w[eq_mask]) == r                (optional, at most one equality per problem,
                                                on a per-problem subset of the variables)

with ``Q`` symmetric positive semidefinite and possibly singular (Gram matrices).

Besides the types this module holds the pieces every backend shares:

* :func:`validate_qp` - structural checks (shapes, dtypes, devices) that raise ``ValueError``;
* :func:`canonicalize` - per-problem canonical, scaled form used by all backends (fixed variables
  eliminated, degenerate equalities resolved, redundant upper bounds on the equality block
  dropped, variables scaled to ``[0, 1]`` and the objective to O(1));
* :func:`project_feasible`, :func:`kkt_residual`, :func:`qp_objective` - solver-independent
  checks.

Everything runs in float64 and without autograd.  No function here raises because one problem
of a batch is numerically bad (NaN / Inf data, an infeasible set): such problems are flagged in
:class:`Canonical` and the solvers report them as ``FAILED``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..utils import bmv

__all__ = [
    "QPStatus",
    "BoxQP",
    "QPResult",
    "QPSolver",
    "Canonical",
    "canonicalize",
    "qp_objective",
    "project_feasible",
    "kkt_residual",
    "validate_qp",
    "INACCURATE_KKT",
    "SOLVED_KKT",
]

logger = logging.getLogger("ncvx_core.qp")

#: A problem whose scaled KKT residual (see :func:`kkt_residual`) is at most this is reported
#: ``INACCURATE`` rather than ``FAILED`` when the solver did not converge.
INACCURATE_KKT = 1e-6
#: A problem whose scaled KKT residual is at most this is reported ``SOLVED`` whatever the solver
#: says about its own convergence.
SOLVED_KKT = 1e-9

_PROJ_REFINE_STEPS = 2


class QPStatus(IntEnum):
    """Per-problem outcome of a solve."""

    SOLVED = 0
    INACCURATE = 1
    FAILED = 2


@dataclass(frozen=True)
class BoxQP:
    """``min_w 0.5 w^T Q w + q^T w  s.t. lo <= w <= hi`` and, if ``eq_mask`` is not None,
    ``sum(w[eq_mask]) == r``.  One batch of ``B`` problems with ``m`` variables each.

    Attributes:
        Q: ``(B, m, m)`` float64, symmetric PSD, may be singular (even all zero).
        q: ``(B, m)`` float64.
        lo: ``(B, m)`` float64, finite.
        hi: ``(B, m)`` float64, ``+inf`` allowed; ``lo == hi`` fixes a variable.
        eq_mask: ``(B, m)`` bool or None; a row may be all False (no equality for that problem).
        r: ``(B,)`` float64 or None (required iff ``eq_mask`` is given).
    """

    Q: Tensor
    q: Tensor
    lo: Tensor
    hi: Tensor
    eq_mask: Tensor | None = None
    r: Tensor | None = None

    @property
    def B(self) -> int:
        """Batch size."""
        return int(self.q.shape[0])

    @property
    def m(self) -> int:
        """Number of variables per problem."""
        return int(self.q.shape[-1])

    @property
    def device(self) -> torch.device:
        """Device of the problem data."""
        return self.q.device


@dataclass
class QPResult:
    """Batched solve result.

    Attributes:
        w: ``(B, m)`` float64; always finite and feasible (projected onto the feasible set when
            the solver failed).
        status: ``(B,)`` int8 with :class:`QPStatus` values.
        iters: ``(B,)`` int32 iteration counts (0 for skipped problems).
    """

    w: Tensor
    status: Tensor
    iters: Tensor


@runtime_checkable
class QPSolver(Protocol):
    """Protocol every QP backend satisfies.

    ``solve`` never raises because one problem is numerically bad: such a problem gets
    ``FAILED`` and a finite feasible ``w`` while the others are unaffected.  It runs without
    autograd, returns results on the input device, and a problem's result does not depend on
    the other problems of the batch.  ``active`` (``(B,)`` bool) lets callers skip problems:
    skipped problems get ``w = project_feasible(qp, 0)``, status ``SOLVED`` and 0 iterations.
    """

    name: str

    def supports(self, qp: BoxQP) -> bool: ...

    def solve(
        self, qp: BoxQP, *, tol: float = 1e-12, active: Tensor | None = None
    ) -> QPResult: ...


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return f"{type(x).__name__}"


def _check_tensor(
    name: str,
    x: object,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | None,
) -> None:
    expected = f"Tensor(shape={shape}, dtype={dtype}" + (
        f", device={device})" if device is not None else ")"
    )
    if not isinstance(x, Tensor):
        raise ValueError(f"BoxQP.{name}: expected {expected}, received {_describe(x)}")
    if tuple(x.shape) != shape or x.dtype != dtype or (device is not None and x.device != device):
        raise ValueError(f"BoxQP.{name}: expected {expected}, received {_describe(x)}")


def validate_qp(qp: BoxQP) -> None:
    """Raise ``ValueError`` naming the offending field for caller mistakes.

    Checks types, shapes, dtypes (float64, bool mask) and that all tensors live on one device.
    Values are *not* checked (that would need a host sync, and numerically bad problems are
    reported per problem by the solvers instead).
    """
    if not isinstance(qp, BoxQP):
        raise ValueError(f"expected a BoxQP, received {type(qp).__name__}")
    Q = qp.Q
    if not isinstance(Q, Tensor) or Q.dim() != 3 or Q.shape[-1] != Q.shape[-2]:
        raise ValueError(
            f"BoxQP.Q: expected Tensor(shape=(B, m, m), dtype=torch.float64), received {_describe(Q)}"
        )
    B, m = int(Q.shape[0]), int(Q.shape[1])
    dev = Q.device
    f64 = torch.float64
    _check_tensor("Q", Q, (B, m, m), f64, dev)
    _check_tensor("q", qp.q, (B, m), f64, dev)
    _check_tensor("lo", qp.lo, (B, m), f64, dev)
    _check_tensor("hi", qp.hi, (B, m), f64, dev)
    if (qp.eq_mask is None) != (qp.r is None):
        missing = "r" if qp.r is None else "eq_mask"
        raise ValueError(
            f"BoxQP.{missing}: eq_mask and r must be given together, received "
            f"eq_mask={_describe(qp.eq_mask) if qp.eq_mask is not None else None}, "
            f"r={_describe(qp.r) if qp.r is not None else None}"
        )
    if qp.eq_mask is not None:
        _check_tensor("eq_mask", qp.eq_mask, (B, m), torch.bool, dev)
        _check_tensor("r", qp.r, (B,), f64, dev)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def qp_objective(qp: BoxQP, w: Tensor) -> Tensor:
    """Objective ``0.5 w^T Q w + q^T w`` per problem.  ``w``: ``(B, m)`` -> ``(B,)``."""
    Qw = bmv(qp.Q, w)
    return 0.5 * (w * Qw).sum(-1) + (qp.q * w).sum(-1)


def _sanitized_bounds(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Finite ``lo``, ``hi >= lo`` (``+inf`` kept) so that projections stay finite even for
    invalid problems (those are reported FAILED elsewhere)."""
    lo_s = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi_s = torch.where(torch.isnan(hi) | (hi < lo_s), lo_s, hi)
    return lo_s, hi_s


def _project(
    w: Tensor, lo: Tensor, hi: Tensor, mask: Tensor | None, r: Tensor | None
) -> Tensor:
    """Euclidean projection of ``w`` (B, m) onto ``{lo <= x <= hi, sum(x[mask]) = r}``.

    Bounds must be sanitized (finite lo, hi >= lo).  On the masked block the projection is
    ``x = clip(w - tau, lo, hi)`` where the multiplier ``tau`` solves ``g(tau) = r`` for the
    piecewise-linear, nonincreasing ``g(tau) = sum clip(w - tau, lo, hi)``.  The root is
    bracketed exactly by evaluating ``g`` at all breakpoints at once (one sort, cumulative sums:
    a vectorized bisection over the sorted breakpoints), then solved on the identified linear
    piece and refined with the identified active sets.  Fixed number of tensor ops, no host
    sync, O(m log m) per problem.
    """
    w = torch.where(torch.isfinite(w), w, 0.0)
    x = torch.minimum(torch.maximum(w, lo), hi)
    if mask is None or r is None or w.shape[-1] == 0:
        return x
    B, m = w.shape
    has_eq = mask.any(-1)
    r_s = torch.where(torch.isfinite(r), r, 0.0)
    lo_m = torch.where(mask, lo, 0.0)
    slack = (r_s - lo_m.sum(-1)).clamp_min(0.0)  # (B,)
    inf = float("inf")
    cap = torch.minimum(hi - lo, slack.unsqueeze(-1))
    # every root is >= t0 (there each masked term is >= lo + cap); cap +inf upper bounds there
    t0 = torch.where(mask, w - lo - cap, inf).amin(-1)
    t0 = torch.where(has_eq, t0, 0.0)
    hi_e = torch.minimum(hi, w - t0.unsqueeze(-1) + 1.0)  # finite, equal to hi where it matters
    e1 = torch.where(mask, w - hi_e, inf)  # var enters the free set (leaves hi)
    e2 = torch.where(mask, w - lo, inf)  # var leaves the free set (reaches lo)
    tot_hi = torch.where(mask, hi_e, 0.0).sum(-1)
    E = torch.cat([e1, e2], -1)  # (B, 2m)
    a_ev = torch.cat([torch.where(mask, w - hi_e, 0.0), torch.where(mask, lo - w, 0.0)], -1)
    c_ev = torch.cat([mask.to(w.dtype), -mask.to(w.dtype)], -1)
    Es, order = torch.sort(E, dim=-1)
    A = torch.gather(a_ev, -1, order).cumsum(-1)
    C = torch.gather(c_ev, -1, order).cumsum(-1)
    fin = torch.isfinite(Es)
    Ef = torch.where(fin, Es, 0.0)
    g = tot_hi.unsqueeze(-1) + A - Ef * C  # g at each breakpoint (after its own event)
    le = (g <= r_s.unsqueeze(-1)) & fin
    n_ev = fin.sum(-1)
    j = torch.where(le.any(-1), le.to(torch.int8).argmax(-1), (n_ev - 1).clamp_min(0))
    jp = (j - 1).clamp_min(0)
    take = lambda t, k: torch.gather(t, -1, k.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    Ej, Ep = take(Ef, j), take(Ef, jp)
    Ap, Cp = take(A, jp), take(C, jp)
    first = j == 0
    Ap = torch.where(first, 0.0, Ap)
    Cp = torch.where(first, 0.0, Cp)
    Ep = torch.where(first, -inf, Ep)
    tau = torch.where(Cp > 0.5, (tot_hi + Ap - r_s) / Cp.clamp_min(1.0), Ej)
    tau = torch.minimum(torch.maximum(tau, Ep), Ej)
    for _ in range(_PROJ_REFINE_STEPS):
        v = w - tau.unsqueeze(-1)
        at_lo = mask & (v <= lo)
        at_hi = mask & (v >= hi) & ~at_lo
        free = mask & ~at_lo & ~at_hi
        nfree = free.sum(-1)
        fixed_sum = torch.where(at_lo, lo, 0.0).sum(-1) + torch.where(at_hi, hi, 0.0).sum(-1)
        free_w = torch.where(free, w, 0.0).sum(-1)
        tau_new = (free_w - (r_s - fixed_sum)) / nfree.clamp_min(1).to(w.dtype)
        ok = (nfree > 0) & torch.isfinite(tau_new)
        tau_new = torch.minimum(torch.maximum(tau_new, Ep), Ej)
        tau = torch.where(ok, tau_new, tau)
    y = torch.minimum(torch.maximum(w - tau.unsqueeze(-1), lo), hi)
    x_eq = torch.where(mask, y, x)
    return torch.where(has_eq.unsqueeze(-1), x_eq, x)


def project_feasible(qp: BoxQP, w: Tensor) -> Tensor:
    """Euclidean projection of ``w`` (B, m) onto ``box ∩ {sum(w[eq_mask]) = r}``.

    Solver independent: clip for the box; for the equality, the multiplier is bracketed between
    consecutive breakpoints by evaluating the piecewise-linear constraint function at all of
    them (a vectorized bisection over the sorted breakpoints), then solved exactly on that
    piece.  Non-finite entries of ``w`` are replaced by 0 first,
    so the result is always finite.  For infeasible problems (e.g. ``r`` larger than the sum of
    the masked upper bounds) the result is the closest point found, which violates the equality.
    """
    if qp.m == 0:
        return w.clone()
    lo, hi = _sanitized_bounds(qp.lo, qp.hi)
    return _project(w, lo, hi, qp.eq_mask, qp.r)


# --------------------------------------------------------------------------------------------
# canonical form
# --------------------------------------------------------------------------------------------


@dataclass
class Canonical:
    """Per-problem canonical, scaled form of a :class:`BoxQP` (all solvers work on this).

    Scaled variables ``u`` relate to the original ones by ``w = lo + scale * u`` for free
    variables and ``w = fixval`` for fixed ones (``fixed`` True, ``u == 0``).  The scaled problem
    is::

        min_u 0.5 u^T P u + c^T u   s.t. 0 <= u <= ub (for ~fixed),  sum(u[eq]) == rho (has_eq)

    with the objective divided by ``gamma`` (so that max |P|, |c| <= 1).  Fixed variables have
    ``P_ii = 1`` and zero off-diagonal entries and ``c_i = 0``, so they decouple with ``u_i = 0``.

    Fields (B problems, m variables):
        P: (B, m, m); c: (B, m); ub: (B, m) (0 for fixed, +inf when there is no upper bound);
        eq: (B, m) bool (canonical equality block, only free variables); has_eq: (B,) bool;
        rho: (B,) (1 where has_eq, else 0); scale: (B, m) > 0; fixed: (B, m) bool;
        fixval: (B, m) value of fixed variables; gamma: (B,) > 0 objective scale;
        bad: (B,) bool, problems with non-finite data or an infeasible set (reported FAILED).
    """

    P: Tensor
    c: Tensor
    ub: Tensor
    eq: Tensor
    has_eq: Tensor
    rho: Tensor
    scale: Tensor
    fixed: Tensor
    fixval: Tensor
    gamma: Tensor
    bad: Tensor
    lo: Tensor

    def to_w(self, u: Tensor) -> Tensor:
        """Scaled ``u`` (B, m) -> original ``w`` (B, m)."""
        return torch.where(self.fixed, self.fixval, self.lo + self.scale * u)

    def to_u(self, w: Tensor) -> Tensor:
        """Original ``w`` (B, m) -> scaled ``u`` (B, m) (0 on fixed variables)."""
        return torch.where(self.fixed, torch.zeros_like(w), (w - self.lo) / self.scale)

    def objective(self, u: Tensor) -> Tensor:
        """Scaled objective ``0.5 u^T P u + c^T u`` (B,)."""
        Pu = bmv(self.P, u)
        return 0.5 * (u * Pu).sum(-1) + (self.c * u).sum(-1)


def _bad_data(qp: BoxQP) -> Tensor:
    """(B,) bool: non-finite Q/q/lo/r, NaN or -inf in hi, lo > hi."""
    bad = ~torch.isfinite(qp.Q).flatten(1).all(-1)
    bad |= ~torch.isfinite(qp.q).all(-1)
    bad |= ~torch.isfinite(qp.lo).all(-1)
    bad |= torch.isnan(qp.hi).any(-1)
    bad |= (qp.hi < qp.lo).any(-1)
    if qp.eq_mask is not None and qp.r is not None:
        bad |= ~torch.isfinite(qp.r) & qp.eq_mask.any(-1)
    return bad


def canonicalize(qp: BoxQP) -> Canonical:
    """Build the :class:`Canonical` form of ``qp`` (vectorized, no host sync).

    Steps, per problem:
      * ``Q`` is symmetrized;
      * variables with ``lo == hi`` are fixed;
      * the equality ``sum(w[eq_mask]) = r`` is written as ``sum(u[eq]) = 1`` over the free
        masked variables, all scaled by the common slack ``r - sum(lo[eq_mask])``; upper bounds
        of masked variables that the equality already implies (``hi - lo >= slack``) are
        dropped (keeping them removes the strictly interior points when only one sample exists);
      * degenerate equalities are resolved: zero slack fixes the block at ``lo``, a single free
        masked variable is fixed at ``lo + slack``, a slack equal to the sum of the masked
        ranges fixes the block at ``hi``;
      * other variables with finite bounds are scaled to ``[0, 1]``; those with ``hi = +inf``
        keep scale 1;
      * the objective is divided by ``gamma = max(max|P|, max|c|)`` (1 if that is 0).
    Problems with non-finite data or an infeasible set are flagged ``bad`` and replaced by a
    trivial problem (P = I, c = 0, box [0, 1]) so that solvers can run on them harmlessly.
    """
    Q = 0.5 * (qp.Q + qp.Q.transpose(-1, -2))
    q = qp.q
    B, m = q.shape
    dt = q.dtype
    bad = _bad_data(qp)
    lo, hi = _sanitized_bounds(qp.lo, qp.hi)
    zero = torch.zeros_like(q)
    one = torch.ones_like(q)
    fixed = lo == hi
    fixval = lo.clone()
    width = hi - lo  # >= 0, may be inf
    finite_hi = torch.isfinite(hi)

    if qp.eq_mask is not None and qp.r is not None:
        raw = qp.eq_mask
        r = torch.where(torch.isfinite(qp.r), qp.r, torch.zeros_like(qp.r))
        has_raw = raw.any(-1)
        lo_sum = torch.where(raw, lo, zero).sum(-1)
        slack = r - lo_sum  # (B,)
        tol = 1e-14 * (r.abs() + torch.where(raw, lo.abs(), zero).sum(-1))
        mfree = raw & ~fixed
        k = mfree.sum(-1)
        cap_sum = torch.where(mfree, width, zero).sum(-1)  # may be inf
        infeasible = has_raw & (
            (slack < -tol) | ((k == 0) & (slack.abs() > tol)) | (cap_sum < slack - tol)
        )
        bad = bad | infeasible
        zero_slack = has_raw & (slack <= tol)
        full = has_raw & ~zero_slack & (cap_sum <= slack + tol)
        single = has_raw & ~zero_slack & ~full & (k == 1)
        has_eq = has_raw & ~zero_slack & ~full & ~single & ~bad
        zs = (mfree & zero_slack.unsqueeze(-1))
        fu = (mfree & full.unsqueeze(-1))
        si = (mfree & single.unsqueeze(-1))
        fixval = torch.where(fu, hi, fixval)
        fixval = torch.where(si, torch.minimum(lo + slack.clamp_min(0).unsqueeze(-1), hi), fixval)
        fixed = fixed | zs | fu | si
        eq = mfree & has_eq.unsqueeze(-1)
        s_eq = torch.where(has_eq, slack, torch.ones_like(slack)).unsqueeze(-1)
        scale = torch.where(eq, s_eq.expand(B, m), torch.where(finite_hi & ~fixed, width, one))
        ub_eq = torch.where(width < s_eq, width / s_eq, torch.full_like(width, float("inf")))
        ub = torch.where(eq, ub_eq, torch.where(finite_hi, one, torch.full_like(q, float("inf"))))
        rho = has_eq.to(dt)
    else:
        eq = torch.zeros_like(q, dtype=torch.bool)
        has_eq = torch.zeros(B, dtype=torch.bool, device=q.device)
        scale = torch.where(finite_hi & ~fixed, width, one)
        ub = torch.where(finite_hi, one, torch.full_like(q, float("inf")))
        rho = torch.zeros(B, dtype=dt, device=q.device)
    scale = torch.where(scale > 0, scale, one)
    ub = torch.where(fixed, zero, ub)

    free = ~fixed
    shift = torch.where(fixed, fixval, lo)
    outer = (free.unsqueeze(-1) & free.unsqueeze(-2))
    P = scale.unsqueeze(-1) * Q * scale.unsqueeze(-2)
    P = torch.where(outer, P, torch.zeros_like(P))
    c = scale * (bmv(Q, shift) + q)
    c = torch.where(free, c, zero)
    gamma = torch.maximum(P.abs().flatten(1).amax(-1), c.abs().amax(-1))
    gamma = torch.where(torch.isfinite(gamma) & (gamma > 0), gamma, torch.ones_like(gamma))
    P = P / gamma.view(B, 1, 1)
    c = c / gamma.unsqueeze(-1)
    # fixed variables decouple with P_ii = 1, c_i = 0
    P = P + torch.diag_embed(fixed.to(dt))

    # replace bad problems (including overflow while scaling) by a harmless trivial one;
    # done with masked selects, no host sync
    bad = bad | ~torch.isfinite(P).flatten(1).all(-1) | ~torch.isfinite(c).all(-1)
    badm = bad.view(B, 1, 1)
    eye = torch.eye(m, dtype=dt, device=q.device).expand(B, m, m)
    P = torch.where(badm, eye, P)
    c = torch.where(bad.unsqueeze(-1), zero, c)
    ub = torch.where(bad.unsqueeze(-1), one, ub)
    eq = eq & ~bad.unsqueeze(-1)
    has_eq = has_eq & ~bad
    rho = torch.where(bad, torch.zeros_like(rho), rho)
    fixed = fixed & ~bad.unsqueeze(-1)
    gamma = torch.where(bad, torch.ones_like(gamma), gamma)
    return Canonical(
        P=P, c=c, ub=ub, eq=eq, has_eq=has_eq, rho=rho, scale=scale, fixed=fixed,
        fixval=fixval, gamma=gamma, bad=bad, lo=lo,
    )


# --------------------------------------------------------------------------------------------
# KKT residual
# --------------------------------------------------------------------------------------------


def _pg_residual(
    Q: Tensor, q: Tensor, lo: Tensor, hi: Tensor, mask: Tensor | None, r: Tensor | None,
    w: Tensor,
) -> Tensor:
    g = bmv(Q, w) + q
    p = _project(w - g, lo, hi, mask, r)
    res = (w - p).abs().amax(-1) if w.shape[-1] > 0 else torch.zeros_like(w[..., 0])
    ok = torch.isfinite(g).all(-1) & torch.isfinite(w).all(-1)
    return torch.where(ok, res, torch.full_like(res, float("inf")))


def kkt_residual(qp: BoxQP, w: Tensor, *, scaled: bool = False, can: Canonical | None = None) -> Tensor:
    """Projected-gradient KKT residual ``||w - P_C(w - (Q w + q))||_inf`` per problem, (B,).

    It is zero exactly at the solutions; it also measures infeasibility of ``w``.  Non-finite
    data or ``w`` give ``+inf``.

    ``scaled=True`` evaluates the same formula on the affinely equivalent problem in which the
    variables are ``u = (w - lo) / s`` and the objective is divided by ``gamma`` (the scaling of
    :func:`canonicalize`): ``s_i = hi_i - lo_i`` for variables with two finite distinct bounds
    outside the equality block, ``s_i = r - sum(lo[eq_mask])`` (the equality slack, common to the
    block) for masked variables, 1 otherwise.  This makes the residual comparable across problems
    of very different size (e.g. ``r = 1e-6``) and is the measure used for the solvers' status
    (``<= 1e-6``: at least INACCURATE).  ``can``: the :func:`canonicalize` form of ``qp`` when
    the caller already has it (only its ``gamma`` and ``bad`` are used).
    """
    if qp.m == 0:
        return torch.zeros(qp.B, dtype=qp.q.dtype, device=qp.device)
    lo, hi = _sanitized_bounds(qp.lo, qp.hi)
    bad = _bad_data(qp)
    if not scaled:
        res = _pg_residual(qp.Q, qp.q, lo, hi, qp.eq_mask, qp.r, w)
        return torch.where(bad, torch.full_like(res, float("inf")), res)
    if can is None:
        can = canonicalize(qp)
    B, m = qp.q.shape
    one = torch.ones_like(lo)
    finite_hi = torch.isfinite(hi)
    s = torch.where(finite_hi & (hi > lo), hi - lo, one)
    mask = qp.eq_mask
    r_u = None
    if mask is not None and qp.r is not None:
        r = torch.where(torch.isfinite(qp.r), qp.r, torch.zeros_like(qp.r))
        slack = r - torch.where(mask, lo, torch.zeros_like(lo)).sum(-1)
        s_eq = torch.where(slack > 0, slack, torch.ones_like(slack))
        s = torch.where(mask, s_eq.unsqueeze(-1).expand(B, m), s)
        r_u = slack / s_eq
    Q = 0.5 * (qp.Q + qp.Q.transpose(-1, -2))
    g = can.gamma.view(B, 1, 1)
    Qu = s.unsqueeze(-1) * Q * s.unsqueeze(-2) / g
    qu = s * (bmv(Q, lo) + qp.q) / can.gamma.unsqueeze(-1)
    hi_u = (hi - lo) / s
    u = (w - lo) / s
    res = _pg_residual(Qu, qu, torch.zeros_like(lo), hi_u, mask, r_u, u)
    return torch.where(bad | can.bad, torch.full_like(res, float("inf")), res)


# --------------------------------------------------------------------------------------------
# shared helpers for the solvers
# --------------------------------------------------------------------------------------------


def active_mask(qp: BoxQP, active: Tensor | None) -> Tensor:
    """(B,) bool of problems to solve; validates ``active``."""
    B = qp.B
    if active is None:
        return torch.ones(B, dtype=torch.bool, device=qp.device)
    if not isinstance(active, Tensor) or tuple(active.shape) != (B,) or active.dtype != torch.bool:
        raise ValueError(
            f"active: expected Tensor(shape=({B},), dtype=torch.bool), received {_describe(active)}"
        )
    return active.to(qp.device)


def trivial_result(qp: BoxQP) -> QPResult:
    """Result for a batch with ``m == 0`` (nothing to solve)."""
    B, dev = qp.B, qp.device
    return QPResult(
        w=qp.q.clone(),
        status=torch.full((B,), int(QPStatus.SOLVED), dtype=torch.int8, device=dev),
        iters=torch.zeros(B, dtype=torch.int32, device=dev),
    )


def for_caller(res: QPResult) -> QPResult:
    """``res`` as the caller may use it: the native solvers compute in inference mode (no autograd
    bookkeeping on their operations), so outside inference mode the result is copied into normal
    tensors (which the caller may write to); inside it (the BFGS-SQP solver) it is returned as is."""
    if torch.is_inference_mode_enabled():
        return res
    return QPResult(*(t.clone() if t.is_inference() else t for t in (res.w, res.status, res.iters)))


def finalize(
    qp: BoxQP,
    w: Tensor,
    converged: Tensor,
    iters: Tensor,
    bad: Tensor,
    active: Tensor,
    solved_kkt: float = INACCURATE_KKT,
    can: Canonical | None = None,
) -> QPResult:
    """Project ``w`` onto the feasible set and assign honest statuses.

    Args:
        w: (B, m) candidate solution (may be non-finite for failed problems).
        converged: (B,) bool, the solver's own convergence flag.
        iters: (B,) iteration counts.
        bad: (B,) bool, problems known to be invalid (FAILED).
        active: (B,) bool; inactive problems get ``w = P_C(0)``, SOLVED, 0 iterations.
        solved_kkt: a converged problem is SOLVED only when its scaled KKT residual is at most
            this.
        can: the :func:`canonicalize` form of ``qp``, if the solver has it (saves rebuilding it).

    Status (``kkt`` = scaled :func:`kkt_residual` of the projected ``w``): SOLVED if
    ``converged and kkt <= solved_kkt`` or ``kkt <= SOLVED_KKT`` (1e-9); else INACCURATE if
    ``kkt <= INACCURATE_KKT`` (1e-6); else FAILED.  Bad problems are FAILED.
    """
    finite = torch.isfinite(w).all(-1, keepdim=True)
    w = torch.where(finite, w, torch.zeros_like(w))
    w0 = torch.zeros_like(w)
    w = torch.where(active.unsqueeze(-1) & ~bad.unsqueeze(-1), w, w0)
    w = project_feasible(qp, w)
    kkt = kkt_residual(qp, w, scaled=True, can=can)
    solved = finite.squeeze(-1) & ((converged & (kkt <= solved_kkt)) | (kkt <= SOLVED_KKT))
    inacc = ~solved & (kkt <= INACCURATE_KKT)
    status = torch.full_like(iters, int(QPStatus.FAILED), dtype=torch.int8)
    status = torch.where(inacc, torch.full_like(status, int(QPStatus.INACCURATE)), status)
    status = torch.where(solved, torch.full_like(status, int(QPStatus.SOLVED)), status)
    status = torch.where(bad, torch.full_like(status, int(QPStatus.FAILED)), status)
    status = torch.where(active, status, torch.full_like(status, int(QPStatus.SOLVED)))
    iters = torch.where(active, iters, torch.zeros_like(iters)).to(torch.int32)
    return QPResult(w=w, status=status, iters=iters)
