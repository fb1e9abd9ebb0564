"""Exact l1 penalty phi(x; mu) = mu f(x) + v1(x) and the violation measures (spec section 1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .problem import Evaluation
from .utils import bmm

__all__ = ["Violation", "violation", "penalty_value", "penalty_grad"]


class Violation(NamedTuple):
    """Violation measures of k points.

    Shapes (k,) for the scalars, (k, n) for ``gv1`` (None for value-only evaluations):
    ``v1`` l1 total violation (enters the penalty), ``gv1`` its (sub)gradient, ``tvi``/``tve``
    l-infinity inequality/equality violations, ``tv = max(tvi, tve)``, ``feasible`` the
    feasible-to-tolerance flag (bool).
    """

    v1: Tensor
    gv1: Tensor | None
    tvi: Tensor
    tve: Tensor
    tv: Tensor
    feasible: Tensor


def violation(ev: Evaluation, viol_ineq_tol: float, viol_eq_tol: float) -> Violation:
    """Violation measures of an evaluation.

    The subgradient counts an inequality that is exactly 0 as active and gives an equality that is
    exactly 0 the sign +1 (the GRANSO tie rule). NaN constraint values give NaN measures and an
    infeasible flag.
    """
    ci, ce = ev.ci, ev.ce
    k = ci.shape[0]
    zero = torch.zeros(k, dtype=ci.dtype, device=ci.device)
    vi = ci.clamp(min=0)
    ve = ce.abs()
    # torch.clamp keeps NaN, so NaN constraint values propagate into every measure.
    tvi = vi.amax(dim=1) if ci.shape[1] else zero
    tve = ve.amax(dim=1) if ce.shape[1] else zero
    # amax ignores nothing: any NaN in the row gives NaN; keep it explicit for the sums too.
    tv = torch.maximum(tvi, tve)
    v1 = vi.sum(dim=1) + ve.sum(dim=1)
    gv1 = None
    if ev.g is not None:
        gv1 = torch.zeros_like(ev.g)
        if ci.shape[1]:
            gv1 = gv1 + bmm((ci >= 0).to(ci.dtype).unsqueeze(1), ev.Ji).squeeze(1)
        if ce.shape[1]:
            sgn = torch.where(ce >= 0, 1.0, -1.0).to(ce.dtype)
            gv1 = gv1 + bmm(sgn.unsqueeze(1), ev.Je).squeeze(1)
    feasible = (tvi <= viol_ineq_tol) & (tve <= viol_eq_tol)
    return Violation(v1, gv1, tvi, tve, tv, feasible)


def penalty_value(f: Tensor, viol: Violation, mu: Tensor) -> Tensor:
    """phi = mu f + v1, shape (k,)."""
    return mu * f + viol.v1


def penalty_grad(g: Tensor, viol: Violation, mu: Tensor) -> Tensor:
    """grad phi = mu grad f + grad v1, shape (k, n)."""
    return mu.unsqueeze(1) * g + viol.gv1
