"""Constraint folding: many inequality constraints ``v_i <= 0`` become one, ``F(max(v, 0)) <= 0``.

A folding function ``F`` maps the vector of positive parts to one non-negative number and is 0
exactly when every entry is 0 (paper Eq. 10-11). Folding a group of constraints that share a
meaning (the n hinges of an l-infinity ball, the 2n hinges of the [0, 1] box) keeps the BFGS-SQP
subproblems tiny: the steering and stationarity QPs grow with the number of constraints.

Kinds (``v`` of shape ``(B, k)``, ``v+ = max(v, 0)``):

========  =========================================  ==============================================
kind      value                                      notes
========  =========================================  ==============================================
``l2``    ``||v+||_2``                               the paper's and the authors' default
``l1``    ``sum(v+)``
``max``   ``max(v+)``  (alias ``linf``)              sparse subgradient (one active entry)
``sumsq`` ``sum(v+**2)``                             smooth; the authors' ``SumSquare`` option
========  =========================================  ==============================================

Exactness: the folded value is 0 **exactly** when every ``v_i <= 0`` (NaN entries give NaN). The
``l2`` fold is computed with scaling (``m * ||v+/m||`` with ``m = max(v+)``), so tiny positive
entries do not underflow to 0 and huge ones overflow only to ``inf``; for ``sumsq`` a positive part
whose square underflows is reported as the smallest positive normal number of the dtype, so a
violated constraint never folds to exactly 0. Gradients are those of the plain formulas (the
scaling is exact for the 1-homogeneous ``l2`` norm).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["fold", "fold_value_grad", "FOLDINGS", "fold_normaliser", "get_folding"]


def _pos(v: Tensor) -> Tensor:
    return v.clamp(min=0)


def _fold_l2(v: Tensor) -> Tensor:
    return _fold_l2_parts(v)[0]


def _fold_l2_parts(v: Tensor) -> tuple[Tensor, Tensor]:
    """The l2 fold of ``v`` and the positive part ``v+`` it was computed from."""
    p = _pos(v)
    m = p.amax(dim=1)
    finite = torch.isfinite(m)
    safe = torch.where((m > 0) & finite, m, torch.ones_like(m)).detach()
    val = safe * torch.linalg.vector_norm(p / safe.unsqueeze(1), ord=2, dim=1)
    val = torch.where(m > 0, val, torch.zeros_like(val))
    # an infinite entry gives inf (m * ||p/m|| would be inf/inf = NaN); NaN stays NaN (the
    # comparison m > 0 is False for NaN, which would otherwise fold it to 0)
    return torch.where(torch.isinf(m) | torch.isnan(m), m, val), p


def _fold_l1(v: Tensor) -> Tensor:
    return _pos(v).sum(dim=1)


def _fold_max(v: Tensor) -> Tensor:
    return _pos(v).amax(dim=1)


def _fold_sumsq(v: Tensor) -> Tensor:
    p = _pos(v)
    s = (p * p).sum(dim=1)
    tiny = torch.finfo(s.dtype).tiny if s.is_floating_point() else 0
    underflow = (s == 0) & (p.amax(dim=1) > 0)
    return torch.where(underflow, torch.full_like(s, tiny), s)


FOLDINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "l2": _fold_l2,
    "l1": _fold_l1,
    "max": _fold_max,
    "linf": _fold_max,
    "sumsq": _fold_sumsq,
}


def get_folding(kind: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The folding function for ``kind`` (a name of :data:`FOLDINGS` or a callable ``(B, k) -> (B,)``)."""
    if callable(kind):
        return kind
    if not isinstance(kind, str):
        raise TypeError(f"folding kind must be a string or a callable, got {type(kind).__name__}")
    key = kind.lower()
    if key not in FOLDINGS:
        close = difflib.get_close_matches(key, list(FOLDINGS), n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown folding kind {kind!r}{hint} (valid: {', '.join(FOLDINGS)})")
    return FOLDINGS[key]


def _check_rows(name: str, v: Tensor) -> None:
    """``v`` must be a tensor of shape ``(B, k)`` (the argument of :func:`fold` and
    :func:`fold_value_grad`)."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} expects a tensor of shape (B, k), got {type(v).__name__}")
    if v.dim() != 2:
        raise ValueError(f"{name} expects a tensor of shape (B, k), got {tuple(v.shape)} "
                         "(flatten the constraint group first: v.flatten(1))")


def fold(v: Tensor, kind: str | Callable[[Tensor], Tensor] = "l2") -> Tensor:
    """Fold the positive parts of ``v (B, k)`` into one value per row, ``(B,)``.

    Returns 0 for a row exactly when all its entries are ``<= 0``, a positive value otherwise.
    ``kind`` is ``"l2"`` (default), ``"l1"``, ``"max"`` (``"linf"``), ``"sumsq"`` or a callable.
    """
    _check_rows("fold", v)
    fn = get_folding(kind)
    if v.shape[1] == 0:
        return v.new_zeros(v.shape[0])
    return fn(v)


def fold_value_grad(v: Tensor, kind: str | Callable[[Tensor], Tensor] = "l2") -> tuple[Tensor, Tensor] | None:
    """``fold(v, kind)`` and its gradient ``dF/dv (B, k)`` for a built-in kind, computed without
    autograd (None for a callable kind).

    The value is :func:`fold`'s, to the bit. The gradient is the one autograd takes through the
    formulas above: the positive part passes the gradient where ``v >= 0``; ``l2``:
    ``v+ / ||v+||`` (0 on a row that folds to 0, NaN at the infinite entries of a row that folds to
    inf); ``l1``: 1; ``max``: split evenly over the entries equal to ``max(v+)``; ``sumsq``:
    ``2 v+`` (0 on a row whose sum underflowed). Every row depends on its own entries only.
    """
    if callable(kind) and not isinstance(kind, str):
        return None
    _check_rows("fold_value_grad", v)
    get_folding(kind)  # validates the name
    key = str(kind).lower()
    if v.shape[1] == 0:
        return v.new_zeros(v.shape[0]), v.new_zeros(v.shape)
    if key == "l2":
        val, p = _fold_l2_parts(v)
        col = val.unsqueeze(1)
        return val, p / torch.where(col > 0, col, torch.ones_like(col))
    pass_ = (v >= 0).to(v.dtype)
    if key == "l1":
        return _fold_l1(v), pass_
    if key in ("max", "linf"):
        p = _pos(v)
        m = p.amax(dim=1, keepdim=True)
        top = (p == m).to(v.dtype)
        return m.squeeze(1), top / top.sum(dim=1, keepdim=True).clamp_min(1) * pass_
    p = _pos(v)
    val = _fold_sumsq(v)
    underflow = ((p * p).sum(dim=1, keepdim=True) == 0) & (p.amax(dim=1, keepdim=True) > 0)
    return val, torch.where(underflow, torch.zeros_like(p), 2 * p)


def fold_normaliser(kind: str | Callable[[Tensor], Tensor], k: int) -> float:
    """Divisor that makes ``k`` equal violations ``a`` fold to ``a`` (``a**2`` for ``sumsq``).

    ``l2``: ``sqrt(k)`` (the authors' box-constraint scaling), ``l1`` and ``sumsq``: ``k``,
    ``max``: 1. A custom callable gets 1.
    """
    if callable(kind) and not isinstance(kind, str):
        return 1.0
    key = str(kind).lower()
    get_folding(key)
    if key == "l2":
        return float(k) ** 0.5
    if key in ("l1", "sumsq"):
        return float(k)
    return 1.0
