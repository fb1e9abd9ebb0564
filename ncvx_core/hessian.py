"""Inverse-Hessian approximations (spec section 4): full-memory BFGS and limited-memory BFGS.

Both follow the :class:`HessianApprox` protocol: pure functions over a NamedTuple state whose
tensor fields all carry the batch dimension first, so the solver can gather and scatter the state
of a subset of problems without knowing its fields.

Update codes returned per problem (:class:`UpdateInfo`): ``0`` updated, ``1`` updated without the
initial scaling (non-finite gamma), ``2`` skipped because s'y <= 0, ``3`` skipped because the update
was not finite, ``-1`` not requested (masked out).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .utils import bmm, tree_put, tree_rows

__all__ = [
    "HessianApprox",
    "UpdateInfo",
    "BFGS",
    "BFGSState",
    "LBFGS",
    "LBFGSState",
    "damp",
    "state_rows",
    "state_put",
]


class UpdateInfo(NamedTuple):
    """Outcome of one batched update request: ``code (k,)`` int8 and ``damped (k,)`` bool."""

    code: Tensor
    damped: Tensor


@runtime_checkable
class HessianApprox(Protocol):
    """A batched inverse-Hessian approximation H (never the Hessian itself).

    ``init`` builds the state of B problems; ``matmul(state, V)`` returns ``H @ V`` for
    ``V`` of shape ``(k, n, c)`` (possibly a strided view, e.g. a transpose; the result may be a
    view too); ``update(state, s, y, mask)`` performs one (damped) update for the
    problems where ``mask`` is true and leaves the others bit-identical. All tensors of a state
    have the batch dimension first.
    """

    name: str

    def init(self, B: int, n: int, dtype: torch.dtype, device: torch.device, *, H0: Any = None,
             warm_start: Any = None, scaleH0: bool = True) -> Any: ...

    def matmul(self, state: Any, V: Tensor) -> Tensor: ...

    def update(self, state: Any, s: Tensor, y: Tensor, mask: Tensor) -> tuple[Any, UpdateInfo]: ...


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def damp(s: Tensor, y: Tensor, h: Tensor, delta: float) -> tuple[Tensor, Tensor, Tensor]:
    """GRANSO's damping with the inverse approximation (spec 4.1).

    Args:
        s, y, h: ``(k, n)`` step, gradient difference and ``H s``.
        delta: damping parameter in [0, 1]; 0 disables damping.

    Returns:
        ``(y_damped, sty, damped)``: the (possibly) damped y, its inner product with s, and the
        ``(k,)`` bool mask of damped problems.
    """
    sty = _bdot(s, y)
    sth = _bdot(s, h)
    if delta <= 0:
        return y, sty, torch.zeros_like(sty, dtype=torch.bool)
    damped = sty < delta * sth
    den = sth - sty
    theta = torch.where(damped & (den != 0), (1 - delta) * sth / torch.where(den != 0, den, 1.0), 1.0)
    y_new = torch.where(damped.unsqueeze(1), theta.unsqueeze(1) * y + (1 - theta).unsqueeze(1) * h, y)
    sty_new = torch.where(damped, delta * sth, sty)
    return y_new, sty_new, damped


# ----------------------------------------------------------------------------------------------
class BFGSState(NamedTuple):
    """Full-memory state: ``H (B, n, n)`` and ``scale_pending (B,)`` (initial scaling not done).

    ``h0_identity`` says that the initial H was the identity. A problem whose scaling is still
    pending has never been updated, so its H is then exactly I and the scaling only shifts the
    diagonal (no pass over the n x n matrix).

    ``inplace``: updates write into ``H`` instead of returning a new tensor, and the state of a
    subset of problems is a view (``rows``: the positions in ``H`` of this state's problems, in
    order, ``None`` = all of ``H``), so the solver never copies n x n blocks when it works on the
    problems still running (see :func:`state_rows`). Chosen by :meth:`BFGS.init` for large n on
    the CPU, where those copies cost more than the products themselves.
    """

    H: Tensor
    scale_pending: Tensor
    h0_identity: bool = False
    inplace: bool = False
    rows: tuple[int, ...] | None = None


# full-memory states of at least this dimension on the CPU are updated in place (BFGSState.inplace)
INPLACE_MIN_N = 256


def _check_idx(idx: Any) -> None:
    if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx must be a 1-D int64 (or int32) tensor of problem positions, got "
                         f"{tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__}"
                         + (f" {idx.dtype}" if isinstance(idx, Tensor) else ""))


def _blocks(state: BFGSState) -> Any:
    """Positions in ``state.H`` of the state's problems, in order."""
    return state.rows if state.rows is not None else range(state.H.shape[0])


def state_rows(state: Any, idx: Tensor) -> Any:
    """The state of problems ``idx`` (k,) of ``state``: a view for an in-place
    :class:`BFGSState`, a copy of every leaf's rows otherwise."""
    _check_idx(idx)
    if isinstance(state, BFGSState) and state.inplace:
        base = _blocks(state)
        return state._replace(scale_pending=state.scale_pending[idx], rows=tuple(base[i] for i in idx.tolist()))
    return tree_rows(state, idx)


def state_put(full: Any, idx: Tensor, sub: Any) -> Any:
    """``full`` with the problems ``idx`` replaced by ``sub`` (their state from
    :func:`state_rows`, possibly updated since). In place for tensor leaves; an in-place
    :class:`BFGSState` already holds the new H, so only its flags are copied."""
    _check_idx(idx)
    if isinstance(full, BFGSState) and full.inplace:
        return full._replace(scale_pending=full.scale_pending.index_copy(0, idx, sub.scale_pending))
    return tree_put(full, idx, sub)


class BFGS:
    """Full-memory inverse BFGS with damping, initial scaling and the skip rules (spec 4.2).

    Memory is B·n² entries; use :class:`LBFGS` for large n.
    """

    name = "bfgs"

    def __init__(self, damping: float = 1e-4, *, inplace_min_n: int | None = INPLACE_MIN_N) -> None:
        """``inplace_min_n``: states of at least this dimension on the CPU are updated in place
        (see :class:`BFGSState`); None: never."""
        if inplace_min_n is not None and (isinstance(inplace_min_n, bool) or not isinstance(inplace_min_n, int)
                                          or inplace_min_n < 1):
            raise ValueError(f"inplace_min_n must be None or an int >= 1, got {inplace_min_n!r}")
        self.damping = float(damping)
        self.inplace_min_n = inplace_min_n

    def init(self, B: int, n: int, dtype: torch.dtype, device: torch.device, *, H0: Any = None,
             warm_start: Any = None, scaleH0: bool = True) -> BFGSState:
        if warm_start is not None:
            raise ValueError("limited_mem_warm_start needs limited_mem_size > 0; for full memory pass H0")
        if H0 is None:
            H = torch.eye(n, dtype=dtype, device=device).expand(B, n, n).clone()
        else:
            H = H0.to(dtype=dtype, device=device).expand(B, n, n).clone()
        inplace = self.inplace_min_n is not None and n >= self.inplace_min_n and torch.device(device).type == "cpu"
        return BFGSState(H, torch.full((B,), bool(scaleH0), device=device), H0 is None, inplace)

    def matmul(self, state: BFGSState, V: Tensor) -> Tensor:
        if not state.inplace:
            return bmm(state.H, V)
        # one product per problem on its own block of H: no copy of H for a subset, and the same
        # kernel whatever the batch (a batched product may round differently from a single one).
        # Formed as (V^T H^T)^T: rows of length n against H read along its rows, several times
        # faster on a CPU than H @ V with a few columns (benchmarks/results/products_cpu.md)
        rows = _blocks(state)
        c = V.shape[-1]
        Vt = V.transpose(1, 2)
        if c == 1:  # two rows, as utils.bmm pads a column: a vector kernel rounds differently
            Vt = torch.cat([Vt, torch.zeros_like(Vt)], dim=1)
        Vt = Vt.contiguous()
        return torch.stack([Vt[j] @ state.H[r].T for j, r in enumerate(rows)])[:, :c].transpose(1, 2)

    def update(self, state: BFGSState, s: Tensor, y: Tensor, mask: Tensor) -> tuple[BFGSState, UpdateInfo]:
        """One inverse BFGS update per problem where ``mask`` (see :meth:`update_apply`)."""
        new, info, _ = self.update_apply(state, s, y, mask, None)
        return new, info

    def update_apply(self, state: BFGSState, s: Tensor, y: Tensor, mask: Tensor,
                     X: Tensor | None) -> tuple[BFGSState, UpdateInfo, Tensor | None]:
        """:meth:`update`, and ``H+ X`` for ``X (k, n, c)`` (None: none) at little extra cost:
        ``H X`` rides along with the products of the update (same pass over H) and
        ``H+ X = f H X + U (V^T X)``. Problems not updated get ``H X``, their H being unchanged.

        Written as ``H+ = f H + U V^T`` with the (k, n, 2) factors ``U = [Hy, s]`` and
        ``V = [-rho s, coef s - rho Hy]`` (f the initial scaling, 1 after it), so the n x n work is
        two matrix-vector products (``H s`` for the damping, then ``H y``; one two-column pass for
        an in-place state, ``H y`` redone where damping changed y) and one fused rank-2 update: a
        few traversals of H instead of one per elementwise operation. A problem that is not
        updated gets zero factors and ``f = 1`` and keeps its H bit for bit, without a branch or a
        host read (an in-place state, which lives on the CPU, skips its block instead). Rejected
        as non-finite (code 3): a non-finite s, y, ``H y`` or coefficient, or an update whose
        entries could overflow (bound from the diagonal of the positive definite H and the
        factors' magnitudes).
        """
        H = state.H
        if X is not None and (not isinstance(X, Tensor) or X.dim() != 3 or X.shape[:2] != s.shape
                              or X.dtype != s.dtype or X.device != s.device):
            raise ValueError(f"X must be a {s.dtype} tensor of shape ({s.shape[0]}, {s.shape[1]}, c) on {s.device}, "
                             f"got {tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}"
                             + (f" {X.dtype} on {X.device}" if isinstance(X, Tensor) else ""))
        HX = None
        if state.inplace:  # H s, H y (and H X) in one pass over each block; H y again only where damped
            cols = [s.unsqueeze(2), y.unsqueeze(2)] + ([X] if X is not None else [])
            HSY = self.matmul(state, torch.cat(cols, dim=2))
            h, Hy0 = HSY[..., 0], HSY[..., 1]
            HX = HSY[..., 2:] if X is not None else None
            y, sty, damped = damp(s, y, h, self.damping)
            Hy0 = self._redo_damped(state, y, Hy0, damped & mask)
        else:
            if X is None:
                h = self.matmul(state, s.unsqueeze(2)).squeeze(2)
            else:
                HSX = self.matmul(state, torch.cat([s.unsqueeze(2), X], dim=2))
                h, HX = HSX[..., 0], HSX[..., 1:]
            y, sty, damped = damp(s, y, h, self.damping)
            Hy0 = self.matmul(state, y.unsqueeze(2)).squeeze(2)
        sty_ok = sty > 0  # NaN compares False: skipped
        # initial scaling at the first request passing the curvature test
        yty = _bdot(y, y)
        gamma = sty / yty
        do_scale = state.scale_pending & sty_ok & mask
        gamma_ok = torch.isfinite(gamma)
        factor = torch.where(do_scale & gamma_ok, gamma, torch.ones_like(gamma))
        rho = torch.where(sty_ok, 1.0 / torch.where(sty_ok, sty, 1.0), 0.0)
        Hy = factor.unsqueeze(1) * Hy0
        yHy = _bdot(y, Hy)
        coef = (rho * rho * yHy + rho).clamp(min=0)
        U = torch.stack([Hy, s], dim=2)  # (k, n, 2)
        V = torch.stack([-rho.unsqueeze(1) * s, coef.unsqueeze(1) * s - rho.unsqueeze(1) * Hy], dim=2)
        finite = (torch.isfinite(U).flatten(1).all(dim=1) & torch.isfinite(V).flatten(1).all(dim=1)
                  & torch.isfinite(y).all(dim=1) & torch.isfinite(factor))
        # |H+_ij| <= f max_i H_ii + 2 max|U| max|V| (|H_ij| <= max diag for positive definite H)
        big = torch.finfo(H.dtype).max / 8
        dmax = torch.diagonal(H, dim1=1, dim2=2).abs().amax(dim=1)[list(_blocks(state))]
        bound = factor.abs() * dmax + 2 * U.abs().flatten(1).amax(dim=1) * V.abs().flatten(1).amax(dim=1)
        finite = finite & (bound < big)
        ok = mask & sty_ok & finite
        f = torch.where(ok, factor, 1.0)
        U = torch.where(ok.view(-1, 1, 1), U, 0.0)
        V = torch.where(ok.view(-1, 1, 1), V, 0.0)
        if state.inplace:
            Hn = self._update_inplace(state, f, U, V, ok)
        elif state.h0_identity:  # f != 1 only where H is still I: f I = I + (f - 1) I
            Hn = torch.baddbmm(H, U, V.transpose(1, 2))
            Hn.diagonal(dim1=1, dim2=2).add_((f - 1).unsqueeze(1))
        else:
            Hn = torch.baddbmm(H * f.view(-1, 1, 1), U, V.transpose(1, 2))
        code = torch.full_like(mask, -1, dtype=torch.int8)
        code = code.masked_fill(mask & ~sty_ok, 2)
        code = code.masked_fill(mask & ~finite, 3)
        code = torch.where(ok, (do_scale & ~gamma_ok).to(torch.int8), code)
        pending = state.scale_pending & ~ok
        if HX is not None:
            HX = f.view(-1, 1, 1) * HX + bmm(U, bmm(V.transpose(1, 2), X))
        return state._replace(H=Hn, scale_pending=pending), UpdateInfo(code, damped & mask), HX

    def _redo_damped(self, state: BFGSState, y: Tensor, Hy: Tensor, damped: Tensor) -> Tensor:
        """``Hy`` with the rows of damped problems recomputed for their damped ``y``."""
        redo = damped.nonzero().squeeze(1)  # host read: in-place states live on the CPU
        if redo.numel() == 0:
            return Hy
        Hy = Hy.clone()
        Hy[redo] = self.matmul(state_rows(state, redo), y[redo].unsqueeze(2)).squeeze(2)
        return Hy

    @staticmethod
    def _update_inplace(state: BFGSState, f: Tensor, U: Tensor, V: Tensor, ok: Tensor) -> Tensor:
        """``H <- f H + U V^T`` written into the blocks of ``state.H`` of the problems where ``ok``
        (the factors are zero and ``f = 1`` elsewhere), one problem at a time (see :meth:`matmul`)."""
        H = state.H
        Vt = V.transpose(1, 2)
        rows = _blocks(state)
        scaled, upd = torch.stack([f != 1, ok]).tolist()  # host read: this mode runs on the CPU only
        for j, r in enumerate(rows):
            if not upd[j]:
                continue
            Hr = H[r]
            if scaled[j] and not state.h0_identity:
                Hr.mul_(f[j])
            Hr.addmm_(U[j], Vt[j])
            if scaled[j] and state.h0_identity:
                Hr.diagonal().add_(f[j] - 1)
        return H

    @staticmethod
    def dense(state: BFGSState) -> Tensor:
        """The ``(k, n, n)`` matrices of the state's problems (a copy for a view)."""
        return state.H if state.rows is None else state.H[list(state.rows)]


def regularize(H: Tensor, threshold: float, max_eigenvalues: bool = False) -> tuple[Tensor, Tensor]:
    """Eigenvalue regularisation of dense inverse Hessians for the QPs (spec 4.3).

    Returns ``(H_reg, changed)`` with ``changed (k,)`` marking the problems whose condition number
    exceeded ``threshold``. Default: raise eigenvalues below ``lambda_max / threshold``; with
    ``max_eigenvalues``: lower eigenvalues above ``threshold * min|lambda|`` (raising instead where
    some eigenvalue is 0).
    """
    sym = 0.5 * (H + H.transpose(1, 2))
    finite = torch.isfinite(sym).flatten(1).all(dim=1)
    safe = torch.where(finite.view(-1, 1, 1), sym, torch.eye(H.shape[1], dtype=H.dtype, device=H.device))
    lam, V = torch.linalg.eigh(safe)
    lmax = lam.abs().amax(dim=1)
    lmin = lam.abs().amin(dim=1)
    cond = lmax / lmin
    changed = finite & (cond > threshold)
    if max_eigenvalues:
        cap = (threshold * lmin).unsqueeze(1)
        lam_max_mode = torch.minimum(lam, cap)
        lam_raise = torch.maximum(lam, (lmax / threshold).unsqueeze(1))
        lam_new = torch.where((lmin > 0).unsqueeze(1), lam_max_mode, lam_raise)
    else:
        lam_new = torch.maximum(lam, (lmax / threshold).unsqueeze(1))
    Hr = V @ torch.diag_embed(lam_new) @ V.transpose(1, 2)
    return torch.where(changed.view(-1, 1, 1), Hr, H), changed


# ----------------------------------------------------------------------------------------------
class LBFGSState(NamedTuple):
    """Limited-memory state, oldest pair first, unfilled slots first and zero.

    Shapes: ``S, Y (B, m, n)``, ``rho (B, m)`` (0 in unfilled slots), ``gamma (B,)``,
    ``count (B,)`` long (filled slots), ``scale_pending (B,)`` bool (fixed scaling not yet set);
    ``SY, YY (B, m, m)`` the inner products ``s_i . y_j`` and ``y_i . y_j``, kept with the memory
    so that a product with H reads S and Y twice rather than four times (``None`` in a state
    built by hand: they are then computed on use).
    """

    S: Tensor
    Y: Tensor
    rho: Tensor
    gamma: Tensor
    count: Tensor
    scale_pending: Tensor
    SY: Tensor | None = None
    YY: Tensor | None = None


def _inner(S: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """``(S Y^T, Y Y^T)``, (k, m, m) each."""
    return torch.bmm(S, Y.transpose(1, 2)), torch.bmm(Y, Y.transpose(1, 2))


def _push_inner(SY: Tensor, YY: Tensor, S: Tensor, Y: Tensor, s: Tensor, y: Tensor,
                ok: Tensor) -> tuple[Tensor, Tensor]:
    """``(S Y^T, Y Y^T)`` of the memories ``S, Y (k, m, n)`` after :func:`_push` appended
    ``s, y (k, n)`` where ``ok``, from the previous products ``SY, YY (k, m, m)``: the old entries
    shift up and left by one slot and only the new last row and column are computed, O(m n)
    instead of O(m^2 n) per problem. Rows where ``ok`` is False keep ``SY, YY``."""
    # row blocks against the memory (see LBFGS.matmul); bmm pads the single row
    ys = bmm(torch.stack([s, y], dim=1).to(Y.dtype), Y.transpose(1, 2)).transpose(1, 2)  # (k, m, 2): y_j . s, y_j . y
    sy = bmm(y.unsqueeze(1).to(S.dtype), S.transpose(1, 2)).squeeze(1)  # (k, m): s_i . y
    SYn = torch.empty_like(SY)
    YYn = torch.empty_like(YY)
    SYn[:, :-1, :-1] = SY[:, 1:, 1:]  # empty when m = 1
    YYn[:, :-1, :-1] = YY[:, 1:, 1:]
    SYn[:, -1, :] = ys[:, :, 0]  # s . y_j (the last entry is s . y)
    SYn[:, :-1, -1] = sy[:, :-1]  # s_i . y
    YYn[:, -1, :] = ys[:, :, 1]
    YYn[:, :-1, -1] = ys[:, :-1, 1]
    okm = ok.view(-1, 1, 1)
    return torch.where(okm, SYn, SY), torch.where(okm, YYn, YY)


def _push(M: Tensor, v: Tensor, ok: Tensor) -> Tensor:
    """FIFO memory ``M (k, m, n)`` with ``v (k, n)`` appended (oldest dropped) where ``ok``;
    one copy of the memory."""
    okv = ok.view(-1, 1, 1)
    out = torch.empty_like(M)
    torch.where(okv, M[:, 1:], M[:, :-1], out=out[:, :-1])
    torch.where(okv, v.unsqueeze(1).to(M.dtype), M[:, -1:], out=out[:, -1:])
    return out


class LBFGS:
    """Limited-memory inverse BFGS (spec 4.4) applied through the compact representation.

    ``H V = gamma V + [S, gamma Y] N [S, gamma Y]^T V`` (Byrd, Nocedal and Schnabel 1994) with the
    2m x 2m middle matrix N applied through triangular solves: a handful of batched matrix
    products, O(n m c) for c columns.

    Args:
        m: memory size.
        damping: damping parameter delta of spec 4.1.
        scaleH0: enable the scaling gamma = s'y / y'y.
        fixed_scaling: compute gamma at the first update only (``limited_mem_fixed_scaling``).
    """

    name = "lbfgs"

    def __init__(self, m: int, damping: float = 1e-4, scaleH0: bool = True, fixed_scaling: bool = True) -> None:
        if m < 1:
            raise ValueError(f"LBFGS memory size m must be >= 1, got {m}")
        self.m = int(m)
        self.damping = float(damping)
        self.scaleH0 = scaleH0
        self.fixed_scaling = fixed_scaling

    def init(self, B: int, n: int, dtype: torch.dtype, device: torch.device, *, H0: Any = None,
             warm_start: Any = None, scaleH0: bool = True) -> LBFGSState:
        if H0 is not None:
            raise ValueError("H0 is only used with full memory (limited_mem_size = 0); "
                             "pass limited_mem_warm_start for limited memory")
        m = self.m
        S = torch.zeros(B, m, n, dtype=dtype, device=device)
        Y = torch.zeros_like(S)
        rho = torch.zeros(B, m, dtype=dtype, device=device)
        gamma = torch.ones(B, dtype=dtype, device=device)
        count = torch.zeros(B, dtype=torch.long, device=device)
        pending = torch.full((B,), bool(scaleH0 and self.scaleH0), device=device)
        if warm_start is not None:
            S, Y, rho, gamma, count, pending = self._warm(warm_start, B, n, dtype, device, S, Y, rho, gamma, count)
            pending = (pending | (not self.fixed_scaling)) & bool(scaleH0 and self.scaleH0)
        return LBFGSState(S, Y, rho, gamma, count, pending, *_inner(S, Y))

    def _warm(self, ws: Any, B: int, n: int, dtype: torch.dtype, device: torch.device,
              S: Tensor, Y: Tensor, rho: Tensor, gamma: Tensor, count: Tensor) -> tuple[Tensor, ...]:
        if isinstance(ws, LBFGSState):
            wS, wY, wg, wc = ws.S, ws.Y, ws.gamma, ws.count
        elif isinstance(ws, dict) and {"S", "Y"} <= set(ws):
            wS, wY = ws["S"], ws["Y"]
            if wS.dim() == 2:  # (n, k) columns, a single problem in the reference's layout
                wS, wY = wS.T.unsqueeze(0), wY.T.unsqueeze(0)
            k = wS.shape[1]
            wg = torch.as_tensor(ws.get("gamma", 1.0), dtype=dtype, device=device)
            wc = torch.full((wS.shape[0],), k, dtype=torch.long, device=device)
        else:
            raise TypeError("limited_mem_warm_start must be a previous result's H_final "
                            "(LBFGSState) or a dict with 'S' and 'Y'")
        wS = wS.to(dtype=dtype, device=device)
        wY = wY.to(dtype=dtype, device=device)
        if wS.shape[-1] != n or wS.shape != wY.shape or wS.shape[0] not in (1, B):
            raise ValueError(f"limited_mem_warm_start S/Y must have shape (B, k, {n}), got "
                             f"{tuple(wS.shape)} and {tuple(wY.shape)}")
        k = wS.shape[1]
        wS, wY = wS.expand(B, k, n), wY.expand(B, k, n)
        wc = wc.to(device).expand(B).clamp(max=k)
        wg = wg.to(dtype=dtype, device=device).expand(B)
        # right-align the filled pairs (oldest first); keep the *first* m filled pairs if more
        take = wc.clamp(max=self.m)
        m = self.m
        # positions of the filled pairs in the source: last wc slots; we keep the first `take`
        src_start = k - wc  # (B,)
        j = torch.arange(m, device=device)
        dst_valid = j.unsqueeze(0) >= (m - take).unsqueeze(1)  # (B, m)
        src_idx = (src_start.unsqueeze(1) + j.unsqueeze(0) - (m - take).unsqueeze(1)).clamp(0, max(k - 1, 0))
        if k == 0:
            return S, Y, rho, wg.clone(), count, torch.zeros(B, dtype=torch.bool, device=device)
        gi = src_idx.unsqueeze(2).expand(B, m, n)
        S = torch.where(dst_valid.unsqueeze(2), torch.gather(wS, 1, gi), 0.0)
        Y = torch.where(dst_valid.unsqueeze(2), torch.gather(wY, 1, gi), 0.0)
        sty = _bdot(S, Y)
        good = dst_valid & (sty > 0)  # a pair without positive curvature is dropped
        S = torch.where(good.unsqueeze(2), S, 0.0)
        Y = torch.where(good.unsqueeze(2), Y, 0.0)
        rho = torch.where(good, 1.0 / torch.where(sty > 0, sty, 1.0), 0.0)
        pending = take == 0
        return S, Y, rho, wg.clone(), take, pending

    # -- product ---------------------------------------------------------------------------------
    def matmul(self, state: LBFGSState, V: Tensor) -> Tensor:
        """``H @ V`` for ``V (k, n, c)`` through the compact representation."""
        S, Y, gamma = state.S, state.Y, state.gamma
        m, c = S.shape[1], V.shape[2]
        filled = state.rho != 0  # (k, m)
        # the products with S and Y run on row blocks V^T (k, c, n): both operands keep n as their
        # contiguous dimension, which BLAS multiplies several times faster than S V with a few
        # columns (benchmarks/results/products_cpu.md). One column is padded to two rows, so that
        # every product below (V^T S^T, and the accumulation of (HV)^T) keeps a problem's
        # rounding independent of its batch, as utils.bmm does
        Vt = V.transpose(1, 2)
        if c == 1:
            Vt = torch.cat([Vt, torch.zeros_like(Vt)], dim=1)
        Vt = Vt.contiguous()
        a = bmm(Vt, S.transpose(1, 2)).transpose(1, 2)  # (k, m, c')
        b = bmm(Vt, Y.transpose(1, 2)).transpose(1, 2)
        SY, YY = (state.SY, state.YY) if state.SY is not None and state.YY is not None else _inner(S, Y)
        R = torch.triu(SY)
        eye = torch.eye(m, dtype=V.dtype, device=V.device).unsqueeze(0)
        R = torch.where(filled.unsqueeze(2) & filled.unsqueeze(1), R, 0.0) + eye * (~filled).unsqueeze(1).to(V.dtype)
        D = torch.diagonal(SY, dim1=1, dim2=2) * filled
        w = torch.linalg.solve_triangular(R, a, upper=True)  # R^{-1} a
        g = gamma.view(-1, 1, 1)
        inner = D.unsqueeze(2) * w + g * bmm(YY, w) - g * b
        top = torch.linalg.solve_triangular(R.transpose(1, 2), inner, upper=False)  # R^{-T}(...)
        # (gamma V + S^T top - gamma Y^T w)^T, accumulated in the row layout
        out = torch.baddbmm(g * Vt, top.transpose(1, 2).contiguous(), S)
        out = torch.baddbmm(out, (-g * w).transpose(1, 2).contiguous(), Y)
        return out[:, :c].transpose(1, 2)

    def update(self, state: LBFGSState, s: Tensor, y: Tensor, mask: Tensor) -> tuple[LBFGSState, UpdateInfo]:
        h = self.matmul(state, s.unsqueeze(2)).squeeze(2)
        y, sty, damped = damp(s, y, h, self.damping)
        finite = torch.isfinite(s).all(dim=1) & torch.isfinite(y).all(dim=1)
        sty_ok = sty > 0
        ok = mask & finite & sty_ok
        yty = _bdot(y, y)
        gamma_new = sty / yty
        gamma_ok = torch.isfinite(gamma_new) & (gamma_new > 0)
        # scale_pending: scaling enabled and not frozen yet (fixed scaling freezes it after the
        # first finite gamma; adaptive scaling recomputes it at every stored pair)
        want = state.scale_pending & ok
        gamma = torch.where(want & gamma_ok, gamma_new, state.gamma)
        pending = state.scale_pending & ~(want & gamma_ok) if self.fixed_scaling else state.scale_pending
        rho_new = 1.0 / torch.where(sty_ok, sty, 1.0)
        S = _push(state.S, s, ok)
        Y = _push(state.Y, y, ok)
        rho = torch.where(ok.unsqueeze(1), torch.cat([state.rho[:, 1:], rho_new.unsqueeze(1)], dim=1), state.rho)
        count = torch.where(ok, (state.count + 1).clamp(max=self.m), state.count)
        code = torch.full_like(mask, -1, dtype=torch.int8)
        code = code.masked_fill(mask & ~finite, 3)
        code = code.masked_fill(mask & finite & ~sty_ok, 2)
        code = torch.where(ok, (want & ~gamma_ok).to(torch.int8), code)
        if state.SY is not None and state.YY is not None:
            SY, YY = _push_inner(state.SY, state.YY, S, Y, s, y, ok)
        else:
            SY, YY = _inner(S, Y)
        return LBFGSState(S, Y, rho, gamma, count, pending, SY, YY), UpdateInfo(code, damped & mask)

    def dense(self, state: LBFGSState) -> Tensor:
        n = state.S.shape[2]
        eye = torch.eye(n, dtype=state.S.dtype, device=state.S.device).expand(state.S.shape[0], n, n)
        return self.matmul(state, eye.contiguous())
