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
) -> SteeringResult:
    """One steering step for k constrained problems.

    The dual of the penalty-SQP subproblem, ``min_y 0.5 y'Qy + (mu r - c)'y`` over the box
    (equality multipliers in [-1, 1], inequality multipliers in [0, 1]) with ``Q = A'HA`` and
    ``r = A'H g``, is solved for every candidate penalty ``mu, 0, c_mu mu, ..., c_mu^maxit mu`` in
    one batched call; the first acceptable candidate in GRANSO's order is taken, which is the same
    decision as GRANSO's sequential loop.

    Args:
        apply_H: ``V (k, n, c) -> H V``.
        g: ``(k, n)`` objective gradients; ``ci (k, p)``, ``Ji (k, p, n)``, ``ce (k, q)``,
            ``Je (k, q, n)`` constraint values and gradients; ``mu (k,)``.
        HV: ``H [g, Je^T, Ji^T]`` ``(k, n, 1 + q + p)`` when the caller already has it (then
            ``apply_H`` is not called).
    """
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
    lin = cands.unsqueeze(2) * r.unsqueeze(1) - c.unsqueeze(1)  # (k, J, mc)
    lo = torch.cat([-torch.ones(q, dtype=torch.float64, device=g.device),
                    torch.zeros(p, dtype=torch.float64, device=g.device)])
    lo = lo.expand(k * J, mc)
    hi = torch.ones_like(lo)
    bad = ~(torch.isfinite(Q).flatten(1).all(1) & torch.isfinite(r).all(1) & torch.isfinite(c).all(1))  # (k,)
    Qs = torch.where(bad.view(-1, 1, 1), 0.0, Q)
    lins = torch.where(bad.view(-1, 1, 1), 0.0, lin)
    sol = qp.solve(
        BoxQP(Q=Qs.unsqueeze(1).expand(k, J, mc, mc).reshape(k * J, mc, mc), q=lins.reshape(k * J, mc),
              lo=lo.contiguous(), hi=hi.contiguous()),
        tol=qp_tol,
    )
    y = sol.w.view(k, J, mc)
    failed = (sol.status.view(k, J) == QPStatus.FAILED) | bad.unsqueeze(1)
    Ad = -(cands.unsqueeze(2) * r.unsqueeze(1) + bmm(y, Q.transpose(1, 2)))  # (k, J, mc)
    lin_c = c.unsqueeze(1) + Ad
    cE, cI = lin_c[:, :, :q], lin_c[:, :, q:]
    ci64, ce64 = ci.double(), ce.double()
    if l1_model:
        v = ci64.clamp(min=0).sum(1) + ce64.abs().sum(1)
        pred = v.unsqueeze(1) - cI.clamp(min=0).sum(2) - cE.abs().sum(2)
    else:
        zero = torch.zeros(k, dtype=torch.float64, device=g.device)
        tvi = ci64.clamp(min=0).amax(1) if p else zero
        tve = ce64.abs().amax(1) if q else zero
        v = torch.maximum(tvi, tve)
        mi = cI.amax(2).clamp(min=0) if p else torch.zeros(k, J, dtype=torch.float64, device=g.device)
        me = cE.abs().amax(2) if q else torch.zeros(k, J, dtype=torch.float64, device=g.device)
        pred = v.unsqueeze(1) - mi - me
    tol = _SQRT_EPS * v.clamp(min=1)
    accept0 = pred[:, 0] >= c_viol * v - tol
    if q == 0 and ineq_margin < math.inf:
        accept0 = accept0 | (ci64 < -ineq_margin).all(dim=1)
    accept_direct = accept0.clone()  # decided without the mu = 0 reference QP
    rho_ref = pred[:, 1]
    target = c_viol * rho_ref - tol
    accept0 = accept0 | (pred[:, 0] >= target) | bad
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
