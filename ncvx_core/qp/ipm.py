"""Batched Mehrotra predictor-corrector interior-point method for "box + one masked equality" QPs.

Works on the :class:`~ncvx_core.qp.base.Canonical` form (variables scaled to ``[0, ub]`` with
``ub`` = 1 or +inf, or the simplex-like equality block ``sum(u[eq]) = 1``, objective O(1),
fixed variables decoupled).  Per problem and iteration, with slacks ``u`` (lower bounds) and
``s = ub - u`` (finite upper bounds) and duals ``z``, ``y``::

    r_d = P u + c - z + y - a nu,     r_p = a^T u - rho,     mu = mean(z u, y s)
    (P + D) du - a dnu = rhs,  a^T du = -r_p,   D = z / u + y / s  (diagonal, > 0)

so ``K = P + D`` is positive definite even for singular ``P``.  One batched Cholesky
(``torch.linalg.cholesky_ex``, never raising) per iteration; the equality is eliminated by a
Schur complement on ``K^{-1} a``.  A problem whose factorization fails skips the iteration and
retries with a larger diagonal shift.

Mehrotra's predictor-corrector with one common step (fraction ``eta`` of the step to the
boundary), backtracked over a fixed set of fractions so that every complementarity product stays
above ``gamma_n`` times their mean (a wide-neighbourhood safeguard: plain Mehrotra steps were
seen to fall into two-cycles on degenerate, badly scaled problems).

Convergence is tested per problem (``|r_d| <= tol * (1 + data scale)``, ``|r_p| <= tol (1+rho)``
and every complementarity product ``<= tol``, all in scaled units); that test is the only host
sync per iteration.  Converged problems are frozen, and the working set is compacted (gathered)
once at most half of it is still running.  After the loop a primal active-set polish (reduced
KKT solves on the identified face, ratio test, a few rounds; see :meth:`IPMQPSolver._polish`)
is kept where it is feasible and not worse.  The result is projected onto the feasible set and
its status set from the solver-independent scaled KKT residual (see
:func:`~ncvx_core.qp.base.finalize`).

A problem's iterates depend only on its own data (no batch-global quantities), so results are
batch invariant up to the floating-point behaviour of the batched kernels (bit-identical on CPU
in the tests; on an H200 GPU differences up to ~1e-9 in ``w`` were measured on degenerate
problems with non-unique solutions, with identical objectives).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..utils import bmv, compute_mode, device_constant
from .base import (
    BoxQP,
    Canonical,
    QPResult,
    _project,
    active_mask,
    canonicalize,
    finalize,
    for_caller,
    trivial_result,
    validate_qp,
)

__all__ = ["IPMQPSolver"]

# step fractions tried by the wide-neighbourhood backtracking (IPMQPSolver._neighborhood)
_FRACTIONS = (1.0, 0.8, 0.6, 0.4, 0.25, 0.1)

logger = logging.getLogger("ncvx_core.qp")


def _bmv(A: Tensor, x: Tensor) -> Tensor:
    """Batched matrix-vector product: (b, m, m) x (b, m) -> (b, m)."""
    return bmv(A, x)


def _chol_solve_cols(L: Tensor, b: Tensor) -> Tensor:
    """Solve ``L L^T x = b`` for (b, m, k) right-hand-side columns given the lower Cholesky factor
    (b, m, m); two batched triangular solves (faster than ``cholesky_solve`` on CPU)."""
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)


def _chol_solve(L: Tensor, b: Tensor) -> Tensor:
    """:func:`_chol_solve_cols` for (b, m) right-hand sides."""
    return _chol_solve_cols(L, b.unsqueeze(-1)).squeeze(-1)


@dataclass
class _Work:
    """Per-problem working data of the IPM; rows = problems of the current working set (b).

    ``idx`` (b,) global problem indices; ``P`` (b, m, m); ``c, a`` (b, m); ``rho`` (b,);
    ``lb, ubm`` (b, m) bound masks; ``mask`` (b, 2m) = ``[lb, ubm]``; ``ubv`` (b, m) finite
    upper bounds (0 where there is none); ``ncomp`` (b,) number of bounds; ``dfloor`` (b,)
    ``1 + max|c|`` (the constant part of the dual residual scale); ``ptol`` (b,) primal
    tolerance; iterate ``u, z, y`` (b, m), ``nu`` (b,); ``iters`` (b,); ``conv`` (b,); ``extra``
    (b,) diagonal shift.

    Invariant: ``z == 0`` where there is no lower bound (fixed variables) and ``y == 0`` where
    there is no upper bound, so the complementarity products and the barrier diagonal need no
    masking.
    """

    idx: Tensor
    P: Tensor
    c: Tensor
    a: Tensor
    rho: Tensor
    lb: Tensor
    ubm: Tensor
    mask: Tensor
    ubv: Tensor
    ncomp: Tensor
    dfloor: Tensor
    ptol: Tensor
    u: Tensor
    z: Tensor
    y: Tensor
    nu: Tensor
    iters: Tensor
    conv: Tensor
    extra: Tensor

    def gather(self, keep: Tensor) -> _Work:
        return _Work(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


def _work(can: Canonical, tol: float, u: Tensor, z: Tensor, y: Tensor, nu: Tensor, iters: Tensor,
          conv: Tensor) -> _Work:
    """The iteration state of every problem of ``can`` from the given starting values."""
    B = can.c.shape[0]
    dt, dev = can.c.dtype, can.c.device
    lb_all = ~can.fixed
    ubm_all = torch.isfinite(can.ub) & lb_all
    return _Work(
        idx=torch.arange(B, device=dev), P=can.P, c=can.c, a=can.eq.to(dt), rho=can.rho,
        lb=lb_all, ubm=ubm_all, mask=torch.cat([lb_all, ubm_all], -1),
        ubv=torch.where(ubm_all, can.ub, 0.0),
        ncomp=(lb_all.sum(-1) + ubm_all.sum(-1)).clamp_min(1).to(dt),
        dfloor=1.0 + can.c.abs().amax(-1), ptol=tol * (1.0 + can.rho),
        u=u, z=z, y=y, nu=nu, iters=iters, conv=conv, extra=torch.zeros(B, dtype=dt, device=dev),
    )


class IPMQPSolver:
    """Batched Mehrotra predictor-corrector IPM (name ``"ipm"``); supports every :class:`BoxQP`.

    Args:
        max_iter: iteration limit per problem.
        polish: run the final active-set polish.
        compaction: gather the still-running problems once fewer than half remain.
        eta: fraction of the step to the boundary.
        shift: static diagonal regularization of ``K`` in scaled units.
        check_every: read the number of running problems on the host (the loop's exit and the
            compaction test) every ``check_every`` iterations; in between, converged problems stay
            frozen under the device-side mask, so the results do not depend on it. The solver sets
            2 for the interior-point solvers it creates itself when ``sync_free`` is on.
        fixed_iters: None (default), or run exactly this many iterations (at most ``max_iter``)
            with no host read at all: no exit test, no compaction, no polish; converged problems
            stay frozen under the mask, and a problem not converged by then is reported by its
            KKT residual (INACCURATE or FAILED); the polish runs under masks, for
            ``fixed_polish_rounds`` rounds when that is set (else ``polish_rounds``). Each call
            folds the most iterations any converged problem needed, the number that did not
            converge and the most polish rounds in which a problem was still improving into
            ``usage`` (a device tensor, see :meth:`take_usage`), from which a caller sizes the
            next calls. The solver sets both for the interior-point solvers it creates itself
            under ``strict_sync``.
    """

    name = "ipm"

    def __init__(
        self,
        max_iter: int = 100,
        *,
        polish: bool = True,
        compaction: bool = True,
        eta: float = 0.995,
        shift: float = 1e-12,
        polish_reg: float = 1e-10,
        polish_steps: int = 4,
        polish_rounds: int = 4,
        gamma_n: float = 1e-3,
        check_every: int = 1,
        fixed_iters: int | None = None,
    ) -> None:
        self.max_iter = int(max_iter)
        self.polish = bool(polish)
        self.compaction = bool(compaction)
        self.eta = float(eta)
        self.shift = float(shift)
        self.polish_reg = float(polish_reg)
        self.polish_steps = int(polish_steps)
        self.polish_rounds = int(polish_rounds)
        self.gamma_n = float(gamma_n)
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        self.check_every = check_every
        if fixed_iters is not None and (isinstance(fixed_iters, bool) or not isinstance(fixed_iters, int)
                                        or fixed_iters < 1):
            raise ValueError(f"fixed_iters must be None or an int >= 1, got {fixed_iters!r}")
        self.fixed_iters = fixed_iters
        self.fixed_polish_rounds: int | None = None
        # (3,) long on the device: [most iterations, not converged, most polish rounds used]
        self.usage: Tensor | None = None

    def take_usage(self) -> Tensor | None:
        """The ``(3,)`` long usage tensor folded since the last call (None if no fixed-iteration
        solve ran), and reset it: ``[most iterations a converged problem needed, problems that
        did not converge, most polish rounds that began with a problem still improving]``.
        Reading it on the host is the caller's (one) synchronisation."""
        u, self.usage = self.usage, None
        return u

    def supports(self, qp: BoxQP) -> bool:
        """The IPM handles every problem of the type."""
        return True

    def solve(self, qp: BoxQP, *, tol: float = 1e-12, active: Tensor | None = None) -> QPResult:
        """Solve the batch.  ``tol`` is the convergence tolerance in scaled units."""
        validate_qp(qp)
        act = active_mask(qp, active)
        if qp.m == 0:
            return trivial_result(qp)
        with compute_mode():
            can = canonicalize(qp)
            run0 = act & ~can.bad
            if self.fixed_iters is not None:
                u, z, y, nu, conv, iters = self._iterate_fixed(can, run0, float(tol), self.fixed_iters)
            else:
                u, z, y, nu, conv, iters = self._iterate(can, run0, float(tol))
            if self.polish:
                u = self._polish(can, u, z, y, nu, masked=self.fixed_iters is not None)
            w = can.to_w(u)
            res = finalize(qp, w, conv, iters, can.bad, act, can=can)
        return for_caller(res)

    # ------------------------------------------------------------------------------------
    def _start(self, can: Canonical) -> tuple[Tensor, Tensor, Tensor]:
        """Interior starting point (u, z, y), (B, m) each."""
        ub, fixed, eq = can.ub, can.fixed, can.eq
        one = torch.ones_like(ub)
        k = eq.sum(-1, keepdim=True).clamp_min(1).to(ub.dtype)
        fin = torch.isfinite(ub)
        u = torch.where(fin, 0.5 * ub, one)
        u = torch.where(eq, torch.minimum(1.0 / k, torch.where(fin, 0.5 * ub, one)), u)
        u = torch.where(fixed, 0.0, u)
        z = torch.where(fixed, 0.0, one)
        y = torch.where(fin & ~fixed, one, 0.0)
        return u, z, y

    def _iterate(
        self, can: Canonical, run0: Tensor, tol: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        B, m = can.c.shape
        dev, dt = can.c.device, can.c.dtype
        U, Z, Y = self._start(can)
        NU = torch.zeros(B, dtype=dt, device=dev)
        ITERS = torch.zeros(B, dtype=torch.int32, device=dev)
        CONV = torch.zeros(B, dtype=torch.bool, device=dev)
        idx = run0.nonzero().squeeze(-1)
        if idx.numel() == 0:
            return U, Z, Y, NU, CONV, ITERS
        W = _work(can, tol, U, Z, Y, NU, ITERS, CONV).gather(idx)
        any_eq = bool(can.has_eq[idx].any())

        def write_back(w: _Work) -> None:
            U[w.idx] = w.u
            Z[w.idx] = w.z
            Y[w.idx] = w.y
            NU[w.idx] = w.nu
            ITERS[w.idx] = w.iters
            CONV[w.idx] = w.conv

        frac = device_constant(("ipm_fractions", dt), dev,
                               lambda d: torch.tensor(_FRACTIONS, dtype=dt, device=d))
        step_no = 0
        while True:
            conv, running, rd, rp, comp, mu, s = self._residuals(W, tol, None)
            W.conv = W.conv | conv
            if step_no % self.check_every == 0:
                n_run = int(running.sum())  # the one host sync per (checked) iteration
                if n_run == 0:
                    break
                b = running.shape[0]
                if self.compaction and n_run <= b // 2:
                    write_back(W)
                    keep = running.nonzero().squeeze(-1)
                    W = W.gather(keep)
                    step_no = 0
                    continue  # recompute residuals on the compacted set (cheap, keeps code simple)
            step_no += 1
            self._step(W, running, rd, rp, comp, mu, s, any_eq, frac)

        write_back(W)
        if logger.isEnabledFor(logging.DEBUG):
            nfail = int((run0 & ~CONV).sum())
            logger.debug("ipm: %d of %d problems did not converge", nfail, int(run0.sum()))
        return U, Z, Y, NU, CONV, ITERS

    def _iterate_fixed(
        self, can: Canonical, run0: Tensor, tol: float, n_iter: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``n_iter`` iterations over every problem of the batch under the running mask, with no
        host read (see ``fixed_iters``); same steps as :meth:`_iterate` for each problem."""
        B, m = can.c.shape
        dev, dt = can.c.device, can.c.dtype
        U, Z, Y = self._start(can)
        W = _work(can, tol, U, Z, Y, torch.zeros(B, dtype=dt, device=dev),
                  torch.zeros(B, dtype=torch.int32, device=dev), torch.zeros(B, dtype=torch.bool, device=dev))
        frac = device_constant(("ipm_fractions", dt), dev,
                               lambda d: torch.tensor(_FRACTIONS, dtype=dt, device=d))
        limit = min(int(n_iter), self.max_iter)
        for it in range(limit + 1):  # the last pass only tests convergence
            conv, running, rd, rp, comp, mu, s = self._residuals(W, tol, run0)
            W.conv = W.conv | (conv & run0)
            if it == limit:
                break
            # the equality's terms vanish where a problem has none (a = 0, rho = 0)
            self._step(W, running, rd, rp, comp, mu, s, True, frac)
        used = torch.where(W.conv, W.iters, 0).amax().long()
        failed = (run0 & ~W.conv).sum()
        self._fold(torch.stack([used, failed, torch.zeros_like(used)]))
        return W.u, W.z, W.y, W.nu, W.conv, W.iters

    def _fold(self, stat: Tensor) -> None:
        """Fold a call's ``[iterations, not converged, polish rounds]`` into :attr:`usage`."""
        u = self.usage
        self.usage = stat if u is None else torch.stack([torch.maximum(u[0], stat[0]), u[1] + stat[1],
                                                         torch.maximum(u[2], stat[2])])

    def _residuals(self, W: _Work, tol: float, run0: Tensor | None) -> tuple[Tensor, ...]:
        """Convergence test and residuals of the iterates of ``W``: ``(conv, running, rd, rp,
        comp, mu, s)``; ``running``: not converged, under ``max_iter`` and in ``run0`` (None:
        every problem of ``W``)."""
        u, z, y, nu = W.u, W.z, W.y, W.nu
        s = torch.where(W.ubm, W.ubv - u, 1.0)
        Pu = _bmv(W.P, u)
        rd = Pu + W.c - z + y - W.a * nu.unsqueeze(-1)
        rp = (W.a * u).sum(-1) - W.rho
        comp = torch.cat([z * u, y * s], -1)  # (b, 2m); 0 where the bound is absent
        mu = comp.sum(-1) / W.ncomp
        # z, y >= 0, so their largest entry is their largest magnitude
        dscale = torch.maximum(torch.cat([Pu.abs(), z, y], -1).amax(-1) + 1.0, W.dfloor)
        dscale = torch.maximum(dscale, 1.0 + nu.abs())
        conv = (rd.abs().amax(-1) <= tol * dscale) & (rp.abs() <= W.ptol) & (comp.amax(-1) <= tol)
        running = ~(W.conv | conv) & (W.iters < self.max_iter)
        if run0 is not None:
            running = running & run0
        return conv, running, rd, rp, comp, mu, s

    # ------------------------------------------------------------------------------------
    def _step(
        self, W: _Work, running: Tensor, rd: Tensor, rp: Tensor, comp: Tensor, mu: Tensor,
        s: Tensor, any_eq: bool, frac: Tensor,
    ) -> None:
        """One Mehrotra predictor-corrector step for the running problems of ``W`` (in place).

        ``rd``/``rp``: dual/primal residuals (b, m)/(b,); ``comp``: complementarity products
        ``[z u, y s]`` (b, 2m), 0 where the bound is absent; ``s``: upper slacks (1 where
        absent).

        The bound pairs are handled as one block of 2m pairs ``(X1, X2)`` = ``([u, s], [z, y])``
        with ``X1 X2 = comp``: for a right-hand side ``R`` (b, 2m) of the linearized
        complementarity, ``dX2 = (R - X2 dX1) / X1`` with ``dX1 = [du, -du]`` (0 on absent upper
        bounds).
        """
        P, a, ubm = W.P, W.a, W.ubm
        u, z, y, nu = W.u, W.z, W.y, W.nu
        m = u.shape[-1]
        uu = torch.where(W.lb, u, 1.0)
        X1 = torch.cat([uu, s], -1)
        X2 = torch.cat([z, y], -1)
        # ---- Newton system: K = P + diag(z/u + y/s) (+ shifts); one Cholesky
        D = z / uu + y / s
        K = P.clone()
        K.diagonal(dim1=-2, dim2=-1).add_(D + (self.shift + W.extra).unsqueeze(-1))
        L, info = torch.linalg.cholesky_ex(K)
        ok = info == 0

        def rhs_of(R: Tensor) -> Tensor:
            return R[:, :m] / uu - R[:, m:] / s - rd

        R_a = -comp
        if any_eq:
            # K^{-1} a and the predictor's K^{-1} rhs in one pair of triangular solves
            sol = _chol_solve_cols(L, torch.stack([a, rhs_of(R_a)], -1))
            Ka, v_a = sol[..., 0], sol[..., 1]
            aKa = (a * Ka).sum(-1)
            aKa_safe = torch.where(aKa > 0, aKa, 1.0)  # 0 only without an equality (a = 0)
        else:
            Ka = aKa_safe = None
            v_a = _chol_solve(L, rhs_of(R_a))

        def direction(R: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            """(dX (b, 4m) = [du, ds, dz, dy], dnu (b,)) from K^{-1} rhs ``v``."""
            if Ka is not None and aKa_safe is not None:
                dnu = (-rp - (a * v).sum(-1)) / aKa_safe  # 0 without an equality (a = 0, rp = 0)
                du = v + dnu.unsqueeze(-1) * Ka
            else:
                dnu = torch.zeros_like(rp)
                du = v
            dX1 = torch.cat([du, torch.where(ubm, -du, 0.0)], -1)
            dX2 = (R - X2 * dX1) / X1
            return torch.cat([dX1, dX2], -1), dnu

        X = torch.cat([X1, X2], -1)

        def step_len(dX: Tensor) -> Tensor:
            """Largest step in [0, inf] keeping every bound pair nonnegative, (b,)."""
            neg = dX < 0
            return torch.where(neg, -X / torch.where(neg, dX, -1.0), float("inf")).amin(-1)

        # predictor
        dX_a, _ = direction(R_a, v_a)
        al_a = step_len(dX_a).clamp(max=1.0)
        Xa = X + al_a.unsqueeze(-1) * dX_a
        mu_a = (Xa[:, : 2 * m] * Xa[:, 2 * m :]).sum(-1) / W.ncomp
        sig = torch.where(mu > 0, (mu_a / torch.where(mu > 0, mu, 1.0)) ** 3, 0.0).clamp(0.0, 1.0)
        # corrector (Mehrotra): R = sigma mu - X1 X2 - dX1_a dX2_a on the present bounds
        R = torch.where(W.mask, (sig * mu).unsqueeze(-1) - comp - dX_a[:, : 2 * m] * dX_a[:, 2 * m :], 0.0)
        dX, dnu = direction(R, _chol_solve(L, rhs_of(R)))
        al = (self.eta * step_len(dX)).clamp(max=1.0)
        al = torch.where(torch.isfinite(al), al, 1.0)
        al = self._neighborhood(al, X, dX, W.mask, W.ncomp, frac)
        # one reduction: NaN/inf anywhere in the direction makes the sum non-finite
        good = ok & torch.isfinite(dX.sum(-1) + dnu)
        upd = running & good
        alc = torch.where(upd, al, 0.0)
        stepX = torch.where(upd.unsqueeze(-1), alc.unsqueeze(-1) * dX, 0.0)
        W.u = u + stepX[:, :m]
        W.z = (z + stepX[:, 2 * m : 3 * m]).clamp_min(0.0)
        W.y = (y + stepX[:, 3 * m :]).clamp_min(0.0)
        W.nu = nu + torch.where(upd, alc * dnu, 0.0)
        fail = running & ~good
        W.extra = torch.where(fail, torch.clamp(W.extra * 100.0, min=1e-10), W.extra)
        W.iters = W.iters + running.to(W.iters.dtype)

    # ------------------------------------------------------------------------------------
    def _neighborhood(
        self, al: Tensor, X: Tensor, dX: Tensor, mask: Tensor, ncomp: Tensor, frac: Tensor,
    ) -> Tensor:
        """Backtrack the step (b,) over a fixed set of fractions so that every complementarity
        product stays above ``gamma_n`` times their new mean (wide neighborhood of the central
        path).  This prevents the two-cycles plain Mehrotra steps can fall into on degenerate
        problems.  Fixed number of candidates, no host sync.  ``X``/``dX``: the bound pairs and
        their direction (b, 4m) as in :meth:`_step`; ``mask`` (b, 2m) the present bounds."""
        h = X.shape[-1] // 2
        A = (al.unsqueeze(-1) * frac).unsqueeze(-1)  # (b, k, 1)
        Xn = X.unsqueeze(1) + A * dX.unsqueeze(1)  # (b, k, 4m)
        prod = Xn[..., :h] * Xn[..., h:]  # (b, k, 2m); 0 on absent bounds
        mun = prod.sum(-1) / ncomp.unsqueeze(-1)
        minp = torch.where(mask.unsqueeze(1), prod, float("inf")).amin(-1)
        okk = minp >= self.gamma_n * mun  # (b, k); no bounds at all -> inf >= 0 -> True
        okk[:, -1] = True
        first = okk.to(torch.int8).argmax(-1)  # first acceptable fraction
        return al * frac[first]

    # ------------------------------------------------------------------------------------
    def _polish(self, can: Canonical, u: Tensor, z: Tensor, y: Tensor, nu: Tensor, masked: bool = False) -> Tensor:
        """Active-set polish of the IPM result, in scaled units; (B, m) -> (B, m).

        A few rounds of a primal active-set method started at the (projected) IPM point with the
        active set the IPM identifies (``z > u`` at the lower bound, ``y > ub - u`` at the upper
        bound).  Each round solves the reduced KKT system of the current face (free block plus
        the equality; see :meth:`_reduced_solve`) and moves from the current feasible point
        towards its solution as far as the box allows (ratio test).  A blocking variable becomes
        active; when the face solution is reached, bounds whose multiplier has the wrong sign are
        freed.  Moving towards the face minimizer never increases the convex objective; a
        candidate is nevertheless kept only if it is feasible and not worse than the current one.
        Problems stop once they reach an exact KKT point.  Later rounds only work on the problems
        still improving (gathered; with ``masked``, every round works on every problem and the
        ones that stopped are left as they are under a mask: no host read).
        """
        c, ub, fixed = can.c, can.ub, can.fixed
        B, m = c.shape
        mask = can.eq if masked or bool(can.has_eq.any()) else None
        rho = can.rho if mask is not None else None
        lo0 = torch.zeros_like(u)
        best = _project(u, lo0, ub, mask, rho)
        f_best = can.objective(best)
        lb = ~fixed
        ubm = torch.isfinite(ub) & lb
        at_lo = lb & (z > u)
        at_hi = ubm & (y > torch.where(ubm, ub - u, 1.0)) & ~at_lo
        x_cur = best.clone()
        lam = -nu
        idx = torch.arange(B, device=u.device)
        live = torch.ones(B, dtype=torch.bool, device=u.device)  # masked: the problems still improving
        ftol, tol_sign, tol_stat = 1e-9, 1e-10, 1e-9
        inf = float("inf")
        rounds = self.polish_rounds if not masked or self.fixed_polish_rounds is None else self.fixed_polish_rounds
        used = torch.zeros((), dtype=torch.long, device=u.device)
        for _ in range(max(1, rounds)):
            if not masked and idx.numel() == 0:
                break
            if masked:
                used = used + live.any().long()
            sub = _Sub(can, idx)
            xc, alo, ahi = x_cur[idx], at_lo[idx], at_hi[idx]
            xh, lam_s, ok = self._reduced_solve(sub, alo, ahi, xc, lam[idx])
            # (a stopped problem takes no step: no move, no new active set, no new best point)
            ok = ok & torch.isfinite(xh).all(-1) & torch.isfinite(lam_s) & live[idx]
            ok &= ~sub.has_eq | ((sub.a * xh).sum(-1) - sub.rho).abs().le(ftol)
            xh = torch.where(ok.unsqueeze(-1), xh, xc)
            d = xh - xc
            # ratio test: largest t in [0, 1] with 0 <= xc + t d <= ub
            t_lo = torch.where(sub.lb & (d < 0), xc / torch.where(d < 0, -d, 1.0),
                               inf)
            t_hi = torch.where(sub.ubm & (d > 0),
                               (torch.where(sub.ubm, sub.ub, xc) - xc)
                               / torch.where(d > 0, d, 1.0),
                               inf)
            t = torch.minimum(t_lo.amin(-1), t_hi.amin(-1)).clamp(max=1.0).clamp(min=0.0)
            full = ok & (t >= 1.0)
            tt = t.unsqueeze(-1)
            xn = xc + tt * d
            partial = (ok & ~full).unsqueeze(-1)
            block_lo = partial & (t_lo <= tt)
            block_hi = partial & (t_hi <= tt) & ~block_lo
            xn = torch.where(block_lo, 0.0, xn)
            xn = torch.where(block_hi, sub.ub, xn)
            xn = torch.minimum(xn.clamp_min(0.0), sub.ub)
            xp = _project(xn, torch.zeros_like(xn), sub.ub, sub.eq if mask is not None else None,
                          sub.rho if mask is not None else None)
            f_x = sub.objective(xp)
            fb = f_best[idx]
            accept = ok & (f_x <= fb + 1e-14 * torch.clamp(fb.abs(), min=1.0))
            best[idx] = torch.where(accept.unsqueeze(-1), xp, best[idx])
            f_best[idx] = torch.where(accept, f_x, fb)
            # multipliers at the face solution: g = P x + c + a lam (z = g >= 0 at the lower
            # bound, y = -g >= 0 at the upper bound, g = 0 on the free variables)
            g = _bmv(sub.P, xh) + sub.c + sub.a * lam_s.unsqueeze(-1)
            free = sub.lb & ~alo & ~ahi
            wrong_lo = alo & (g < -tol_sign)
            wrong_hi = ahi & (g > tol_sign)
            stationary = (torch.where(free, g, 0.0).abs() <= tol_stat).all(-1)
            exact = full & accept & stationary & ~(wrong_lo | wrong_hi).any(-1)
            fu = full.unsqueeze(-1)
            new_lo = torch.where(fu, alo & ~wrong_lo, alo | block_lo)
            new_hi = torch.where(fu, ahi & ~wrong_hi, ahi | block_hi) & ~new_lo
            at_lo[idx] = new_lo
            at_hi[idx] = new_hi
            x_cur[idx] = torch.where(accept.unsqueeze(-1), xp, xc)
            lam[idx] = lam_s
            if masked:
                live = live & ~exact & accept
            else:
                idx = idx[~exact & accept]
        if masked and self.fixed_iters is not None:
            self._fold(torch.stack([torch.zeros_like(used), torch.zeros_like(used), used]))
        return best

    def _reduced_solve(
        self, sub: _Sub, at_lo: Tensor, at_hi: Tensor, x0: Tensor, lam0: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Solve ``min 0.5 x'Px + c'x`` with the active variables fixed at their bounds and the
        equality kept, by ``polish_steps`` regularized refinement steps on the quasi-definite
        system ``[[P_FF + d I, a_F], [a_F', -d]]`` (exact residuals, so singular ``P_FF`` is
        fine: the steps converge to the solution nearest the start).  Returns ``(x, lam, ok)``
        with the multiplier convention ``P x + c + a lam = 0`` on the free variables."""
        P, c, a = sub.P, sub.c, sub.a
        dt = c.dtype
        zero = torch.zeros_like(x0)
        free = sub.lb & ~at_lo & ~at_hi
        uA = torch.where(at_hi, torch.where(sub.ubm, sub.ub, zero), zero)
        x = torch.where(free, x0, uA)
        aF = a * free.to(dt)
        outer = free.unsqueeze(-1) & free.unsqueeze(-2)
        Kp = torch.where(outer, P, 0.0)
        Kp = Kp + torch.diag_embed(
            torch.where(free, torch.full_like(x0, self.polish_reg), torch.ones_like(x0))
        )
        L, info = torch.linalg.cholesky_ex(Kp)
        ok = info == 0
        KaF = _chol_solve(L, aF)
        aKa = (aF * KaF).sum(-1)
        eqF = sub.has_eq & ((aF * aF).sum(-1) > 0)
        den = torch.where(eqF, aKa + self.polish_reg, 1.0)
        lam = lam0.clone()
        for _ in range(self.polish_steps):
            r1 = torch.where(free, -(_bmv(P, x) + c + a * lam.unsqueeze(-1)), zero)
            r2 = torch.where(eqF, sub.rho - (a * x).sum(-1), 0.0)
            v = _chol_solve(L, r1)
            dlam = torch.where(eqF, ((aF * v).sum(-1) - r2) / den, 0.0)
            dx = v - dlam.unsqueeze(-1) * KaF
            x = x + torch.where(free, dx, zero)
            lam = lam + dlam
        return x, lam, ok


class _Sub:
    """Rows ``idx`` of a :class:`Canonical` problem (for the polish rounds)."""

    def __init__(self, can: Canonical, idx: Tensor) -> None:
        self.P = can.P[idx]
        self.c = can.c[idx]
        self.ub = can.ub[idx]
        self.eq = can.eq[idx]
        self.a = self.eq.to(self.c.dtype)
        self.has_eq = can.has_eq[idx]
        self.rho = can.rho[idx]
        self.lb = ~can.fixed[idx]
        self.ubm = torch.isfinite(self.ub) & self.lb

    def objective(self, x: Tensor) -> Tensor:
        Px = _bmv(self.P, x)
        return 0.5 * (x * Px).sum(-1) + (self.c * x).sum(-1)


# --------------------------------------------------------------------------------------------
# optional: differentiable solve (implicit differentiation at the solution)
# --------------------------------------------------------------------------------------------


def _active_sets(qp: BoxQP, w: Tensor, rel: float = 1e-9) -> tuple[Tensor, Tensor]:
    """(B, m) masks of variables at their lower / upper bound, relative to the natural scale of
    each variable (box width, equality slack for the masked block, else 1)."""
    lo, hi = qp.lo, qp.hi
    s = torch.where(torch.isfinite(hi) & (hi > lo), hi - lo, 1.0)
    if qp.eq_mask is not None and qp.r is not None:
        slack = qp.r - torch.where(qp.eq_mask, lo, 0.0).sum(-1)
        s_eq = torch.where(slack > 0, slack, 1.0).unsqueeze(-1)
        s = torch.where(qp.eq_mask, s_eq.expand_as(s), s)
    at_lo = (w - lo) <= rel * s
    at_hi = ~at_lo & torch.isfinite(hi) & ((hi - w) <= rel * s)
    return at_lo, at_hi


class _IPMQPFunction(torch.autograd.Function):
    """Forward: :class:`IPMQPSolver`.  Backward: implicit differentiation of the KKT system on
    the active set identified at the solution (OptNet style)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        Q: Tensor,
        q: Tensor,
        lo: Tensor,
        hi: Tensor,
        eq_mask: Tensor | None,
        r: Tensor | None,
        solver: IPMQPSolver,
        tol: float,
    ) -> Tensor:
        qp = BoxQP(Q.detach(), q.detach(), lo.detach(), hi.detach(), eq_mask,
                   None if r is None else r.detach())
        res = solver.solve(qp, tol=tol)
        w = res.w
        at_lo, at_hi = _active_sets(qp, w)
        ctx.save_for_backward(w, qp.Q, at_lo, at_hi)
        ctx.eq_mask = eq_mask  # type: ignore[attr-defined]
        ctx.has_r = r is not None  # type: ignore[attr-defined]
        return w

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, v: Tensor
    ) -> tuple[Tensor | None, ...]:
        w, Q, at_lo, at_hi = ctx.saved_tensors  # type: ignore[attr-defined]
        eq_mask: Tensor | None = ctx.eq_mask  # type: ignore[attr-defined]
        B, m = w.shape
        dt = w.dtype
        Qs = 0.5 * (Q + Q.mT)
        free = ~at_lo & ~at_hi
        aF = (eq_mask & free).to(dt) if eq_mask is not None else torch.zeros_like(w)
        use_eq = aF.sum(-1) > 0
        M = torch.zeros(B, m + 1, m + 1, dtype=dt, device=w.device)
        outer = free.unsqueeze(-1) & free.unsqueeze(-2)
        M[:, :m, :m] = torch.where(outer, Qs, 0.0) + torch.diag_embed((~free).to(dt))
        M[:, :m, m] = aF
        M[:, m, :m] = aF
        M[:, m, m] = torch.where(use_eq, 0.0, 1.0)
        rhs = torch.cat([torch.where(free, v, 0.0), torch.zeros(B, 1, dtype=dt, device=w.device)], -1)
        # min-norm solution: the derivative is not unique where Q_FF is singular
        sol = bmv(torch.linalg.pinv(M, hermitian=True), rhs)
        x = torch.where(free, sol[:, :m], 0.0)
        xi = torch.where(use_eq, sol[:, m], 0.0)
        a = eq_mask.to(dt) if eq_mask is not None else torch.zeros_like(w)
        dwA = v - _bmv(Qs, x) - xi.unsqueeze(-1) * a  # dL/d(bound value) for active variables
        gQ = -0.5 * (x.unsqueeze(-1) * w.unsqueeze(-2) + w.unsqueeze(-1) * x.unsqueeze(-2))
        gq = -x
        glo = torch.where(at_lo, dwA, 0.0)
        ghi = torch.where(at_hi, dwA, 0.0)
        gr = xi if ctx.has_r else None  # type: ignore[attr-defined]
        return gQ, gq, glo, ghi, None, gr, None, None


def ipm_qp_layer(
    Q: Tensor,
    q: Tensor,
    lo: Tensor,
    hi: Tensor,
    eq_mask: Tensor | None = None,
    r: Tensor | None = None,
    *,
    solver: IPMQPSolver | None = None,
    tol: float = 1e-12,
) -> Tensor:
    """Differentiable batched QP solve (optional; the optimizer does not need it).

    Same problem as :class:`~ncvx_core.qp.base.BoxQP`; returns ``w`` (B, m) with gradients with
    respect to ``Q`` (symmetrized), ``q``, ``lo``, ``hi`` and ``r``, obtained by implicit
    differentiation of the KKT system at the solution: the variables found at a bound
    (within 1e-9 of its natural scale) are held there, the free block and the equality are
    differentiated (``[[Q_FF, a_F], [a_F', 0]] [x; xi] = [dL/dw_F; 0]``, min-norm solution via a
    pseudo-inverse).  This is the OptNet derivative; it is exact where the active set is locally
    stable (strict complementarity) and ``Q_FF`` is nonsingular on the equality's null space,
    and a generalized (min-norm) derivative otherwise.  A variable with ``lo == hi`` passes its
    gradient to ``lo``.  Status information is not returned: use :class:`IPMQPSolver` to check
    it.
    """
    validate_qp(BoxQP(Q, q, lo, hi, eq_mask, r))
    s = solver if solver is not None else IPMQPSolver()
    out = _IPMQPFunction.apply(Q, q, lo, hi, eq_mask, r, s, float(tol))
    return out  # type: ignore[no-any-return]
