"""Penalty-parameter steering (spec 2.1-2.2) with all candidate penalties in one batched QP call."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .qp import BoxQP, QPSolver, QPStatus
from .utils import bmm, device_constant

__all__ = ["SteeringResult", "steer"]

_SQRT_EPS = math.sqrt(torch.finfo(torch.float64).eps)


class SteeringResult(NamedTuple):
    """``d (k, n)`` direction, ``mu (k,)`` (possibly lowered) penalty parameter, ``qp_failed (k,)``
    bool: a QP that the decision relied on was not solved."""

    d: Tensor
    mu: Tensor
    qp_failed: Tensor


def steer(
    apply_H: Callable[[Tensor], Tensor],
    g: Tensor,
    ci: Tensor,
    Ji: Tensor,
    ce: Tensor,
    Je: Tensor,
    mu: Tensor,
    *,
    qp: QPSolver,
    c_viol: float = 0.1,
    c_mu: float = 0.9,
    maxit: int = 10,
    ineq_margin: float = 1e-6,
    l1_model: bool = True,
    qp_tol: float = 1e-12,
    HV: Tensor | None = None,
    sync_free: bool = True,
) -> SteeringResult:
    """One steering step for k constrained problems.

    The dual of the penalty-SQP subproblem, ``min_y 0.5 y'Qy + (mu r - c)'y`` over the box
    (equality multipliers in [-1, 1], inequality multipliers in [0, 1]) with ``Q = A'HA`` and
    ``r = A'H g``, is solved for the candidate penalties ``mu, 0, c_mu mu, ..., c_mu^maxit mu`` in
    batched calls; the first acceptable candidate in GRANSO's order is taken, which is the same
    decision as GRANSO's sequential loop.

    Args:
        apply_H: ``V (k, n, c) -> H V``.
        g: ``(k, n)`` objective gradients; ``ci (k, p)``, ``Ji (k, p, n)``, ``ce (k, q)``,
            ``Je (k, q, n)`` constraint values and gradients; ``mu (k,)``.
        HV: ``H [g, Je^T, Ji^T]`` ``(k, n, 1 + q + p)`` when the caller already has it (then
            ``apply_H`` is not called).
        sync_free: True: every candidate in one QP call (no host read). False: the candidates
            ``mu`` and 0 first, then the lowered penalties for the problems that do not accept
            ``mu`` only (one host read sizes that call; on the digits l-infinity attack of ``adv``,
            300 images, mu was accepted in 92 % of the problem-steps, and the first call is
            ``(maxit + 2) / 2`` times smaller than the single one). Same decisions and directions
            either way: a problem's QP answer does not depend on the other problems of its call.
    """
    if not isinstance(sync_free, bool):
        raise TypeError(f"sync_free must be a bool, got {type(sync_free).__name__}")
    k, n = g.shape
    p, q = ci.shape[1], ce.shape[1]
    mc = p + q
    dt = g.dtype
    A = torch.cat([Je, Ji], dim=1)  # (k, mc, n) rows = constraint gradients
    c = torch.cat([ce, ci], dim=1).double()  # (k, mc)
    if HV is None:
        HV = apply_H(torch.cat([g.unsqueeze(2), A.transpose(1, 2)], dim=2))  # (k, n, 1 + mc)
    elif HV.shape != (k, n, 1 + mc):
        raise ValueError(f"HV must have shape ({k}, {n}, {1 + mc}) (H times [g, Je^T, Ji^T]), got {tuple(HV.shape)}")
    u, W = HV[:, :, 0], HV[:, :, 1:]
    Q = bmm(A.double(), W.double())
    Q = 0.5 * (Q + Q.transpose(1, 2))
    r = bmm(A.double(), u.double().unsqueeze(2)).squeeze(2)  # (k, mc)

    K = maxit
    mu64 = mu.double()
    powers = device_constant(("steering_powers", float(c_mu), K), g.device,  # (c_mu, ..., c_mu^K)
                             lambda dev: torch.tensor([c_mu**j for j in range(1, K + 1)], dtype=torch.float64,
                                                      device=dev))
    cands = torch.cat([mu64.unsqueeze(1), torch.zeros_like(mu64).unsqueeze(1), mu64.unsqueeze(1) * powers], dim=1)
    J = cands.shape[1]  # K + 2
    bad = ~(torch.isfinite(Q).flatten(1).all(1) & torch.isfinite(r).all(1) & torch.isfinite(c).all(1))  # (k,)
    Qs = torch.where(bad.view(-1, 1, 1), 0.0, Q)
    ci64, ce64 = ci.double(), ce.double()
    if l1_model:
        v = ci64.clamp(min=0).sum(1) + ce64.abs().sum(1)
    else:
        zero = torch.zeros(k, dtype=torch.float64, device=g.device)
        v = torch.maximum(ci64.clamp(min=0).amax(1) if p else zero, ce64.abs().amax(1) if q else zero)

    def solve(sel: Tensor | None, cj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The candidate QPs ``cj (k', J')`` of problems ``sel`` (None: all): their multipliers
        ``(k', J', mc)``, failures ``(k', J')`` and predicted violation reductions ``(k', J')``."""
        Qk, Qsk, rk, ck, badk, vk = ((Q, Qs, r, c, bad, v) if sel is None
                                     else (Q[sel], Qs[sel], r[sel], c[sel], bad[sel], v[sel]))
        kk, Jk = cj.shape
        lin = cj.unsqueeze(2) * rk.unsqueeze(1) - ck.unsqueeze(1)  # (k', J', mc)
        lins = torch.where(badk.view(-1, 1, 1), 0.0, lin)
        lo = torch.cat([-torch.ones(q, dtype=torch.float64, device=g.device),
                        torch.zeros(p, dtype=torch.float64, device=g.device)]).expand(kk * Jk, mc)
        sol = qp.solve(
            BoxQP(Q=Qsk.unsqueeze(1).expand(kk, Jk, mc, mc).reshape(kk * Jk, mc, mc), q=lins.reshape(kk * Jk, mc),
                  lo=lo.contiguous(), hi=torch.ones_like(lo)),
            tol=qp_tol,
        )
        y = sol.w.view(kk, Jk, mc)
        failed = (sol.status.view(kk, Jk) == QPStatus.FAILED) | badk.unsqueeze(1)
        Ad = -(cj.unsqueeze(2) * rk.unsqueeze(1) + bmm(y, Qk.transpose(1, 2)))  # (k', J', mc)
        lin_c = ck.unsqueeze(1) + Ad
        cE, cI = lin_c[:, :, :q], lin_c[:, :, q:]
        if l1_model:
            pred = vk.unsqueeze(1) - cI.clamp(min=0).sum(2) - cE.abs().sum(2)
        else:
            zj = torch.zeros(kk, Jk, dtype=torch.float64, device=g.device)
            mi = cI.amax(2).clamp(min=0) if p else zj
            me = cE.abs().amax(2) if q else zj
            pred = vk.unsqueeze(1) - mi - me
        return y, failed, pred

    # the penalties mu and 0 first; the lowered ones only where mu is not accepted, which is rare
    # (one host read sizes that second call). With sync_free every candidate is solved in one call.
    # A problem's QPs do not depend on the other problems of a call, so both give the same answers.
    first_only = not sync_free and K > 0
    y, failed, pred = solve(None, cands[:, :2] if first_only else cands)
    tol = _SQRT_EPS * v.clamp(min=1)
    accept0 = pred[:, 0] >= c_viol * v - tol
    if q == 0 and ineq_margin < math.inf:
        accept0 = accept0 | (ci64 < -ineq_margin).all(dim=1)
    accept_direct = accept0.clone()  # decided without the mu = 0 reference QP
    rho_ref = pred[:, 1]
    target = c_viol * rho_ref - tol
    accept0 = accept0 | (pred[:, 0] >= target) | bad
    if first_only:
        rest = torch.nonzero(~accept0).flatten()
        y = torch.cat([y, y.new_zeros(k, K, mc)], dim=1)
        failed = torch.cat([failed, failed.new_zeros(k, K)], dim=1)
        pred = torch.cat([pred, pred.new_full((k, K), -math.inf)], dim=1)
        if rest.numel():
            y_r, failed_r, pred_r = solve(rest, cands[rest, 2:])
            y[rest, 2:], failed[rest, 2:], pred[rest, 2:] = y_r, failed_r, pred_r
    if K > 0:
        ok = pred[:, 2:] >= target.unsqueeze(1)  # (k, K)
        first = torch.where(ok.any(1), ok.long().argmax(1), K - 1) + 2
    else:
        first = torch.zeros(k, dtype=torch.long, device=g.device)
    choice = torch.where(accept0, 0, first)
    y_c = y.gather(1, choice.view(k, 1, 1).expand(k, 1, mc)).squeeze(1).to(dt)
    mu_c = cands.gather(1, choice.view(k, 1)).squeeze(1).to(dt)
    d = -(mu_c.unsqueeze(1) * u + bmm(W, y_c.unsqueeze(2)).squeeze(2))
    used = torch.arange(J, device=g.device).unsqueeze(0) <= choice.clamp(min=1).unsqueeze(1)
    used[:, 1] = used[:, 1] & ~accept_direct
    qp_failed = (failed & used).any(dim=1)
    mu_new = torch.where(accept0, mu, mu_c)
    return SteeringResult(d, mu_new, qp_failed)
