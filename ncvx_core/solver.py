"""Batched BFGS-SQP driver (GRANSO's algorithm, spec sections 2-6) for B independent problems.

Every per-problem quantity is a tensor with the batch dimension first. Each outer pass works on
the problems still running (found with one small host sync), computes a direction for each at its
own fallback level, runs one lock-step line search and commits accepted steps, fallbacks and
terminations per problem through masks. Finished problems are never touched again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .errors import NcvxError, ProblemDefinitionError
from .hessian import BFGS, LBFGS, BFGSState, HessianApprox, regularize, state_put, state_rows
from .linesearch import (
    LS_BRACKETED,
    LS_CUT,
    LS_NO_BRACKET,
    LS_NONDESCENT,
    LS_OK,
    LineSearch,
    LineSearchProblem,
    Trial,
    WeakWolfe,
)
from .memory import plan_memory
from .options import SolverOptions
from .penalty import Violation, violation
from .problem import Evaluation, Evaluator
from .progress import IterationPrinter
from .qp import QPSolver, get_qp_solver
from .qp.ipm import IPMQPSolver
from .qp.registry import AutoQPSolver
from .result import Iterate, SolveResult
from .stationarity import StationarityResult, cache_insert, init_cache, qp_buckets, stationarity_qp
from .status import Status
from .steering import steer
from .utils import (
    bmask,
    bmm,
    compute_mode,
    normal_tensors,
    sync_free_on,
    tree_map,
    tree_put,
    tree_rows,
    tree_where,
)

__all__ = ["solve", "HaltInfo", "LINE_SEARCHES", "HESSIANS"]

logger = logging.getLogger("ncvx_core")

RUNNING = int(Status.RUNNING)


class Record(NamedTuple):
    x: Tensor
    f: Tensor
    ci: Tensor
    ce: Tensor
    tvi: Tensor
    tve: Tensor
    tv: Tensor
    feasible: Tensor
    mu: Tensor
    found: Tensor


class _Rec(NamedTuple):
    """A best / most-feasible record in the solver state, packed so that an update writes two
    tensors instead of ten: ``x (B, n)`` and ``v (B, 7 + p + q)`` = ``[f, tvi, tve, tv, feasible,
    mu, found, ci, ce]`` (the flags as 0 / 1 in the solver's dtype). :func:`_unpack` gives the
    :class:`Record`."""

    x: Tensor
    v: Tensor


_F, _TVI, _TVE, _TV, _FEAS, _MU, _FOUND = range(7)

#: linesearch_previous_step starts a search at this multiple of the last accepted step: on the
#: digits CNN (adv.attack, 100 images) factor 1 broke 41 / 40 images at l-infinity 0.15 (seeds
#: 0 / 1) against 44 / 41 without the option, factor 4 broke 43 / 42 (and the same images at l1
#: and l2), with 23-26 % fewer function rows than without the option (ad hoc runs, not from a
#: benchmark script)
_PREVIOUS_STEP_FACTOR = 4.0
# strict_sync: line-search rounds of the first pass and their cap (doubled after a pass in which a
# search ran out of rounds, else the most rounds a search used in the previous pass), and the
# interior-point iterations of the first pass, their cap and the slack over the most iterations
# a converged QP needed in the previous pass (doubled after a QP that did not converge)
_STRICT_LS_ROUNDS = 2
_STRICT_LS_MAX = 64
_STRICT_IPM_ITERS = 40
_STRICT_IPM_MAX = 100
_STRICT_IPM_SLACK = 2


def _pack_values(ev: Evaluation, viol: Violation, mu: Tensor, found: Tensor) -> Tensor:
    dt = ev.f.dtype
    head = torch.stack([ev.f, viol.tvi, viol.tve, viol.tv, viol.feasible.to(dt), mu.to(dt), found.to(dt)], dim=1)
    return torch.cat([head, ev.ci.to(dt), ev.ce.to(dt)], dim=1)


def _unpack(rec: _Rec, p: int) -> Record:
    v = rec.v
    col = lambda j: v[:, j].clone()  # noqa: E731  (contiguous, not views of the packed tensor)
    return Record(rec.x, col(_F), v[:, 7:7 + p].clone(), v[:, 7 + p:].clone(), col(_TVI), col(_TVE), col(_TV),
                  v[:, _FEAS] > 0.5, col(_MU), v[:, _FOUND] > 0.5)


class State(NamedTuple):
    """Solver state of B problems (every leaf batch-first)."""

    x: Tensor
    ev: Evaluation
    viol: Violation
    mu: Tensor
    H: Any
    status: Tensor
    level: Tensor
    rand_attempts: Tensor
    iters: Tensor
    fn_evals: Tensor
    ls_evals: Tensor       # evaluations since the previous accepted iterate
    last_ls_evals: Tensor  # ... as printed for the last accepted iterate
    stat: Tensor
    n_grads: Tensor
    stat_fallback: Tensor
    alpha: Tensor
    sd_level: Tensor
    best: _Rec
    mf: _Rec
    mu_lowest: Tensor
    counters: Tensor       # (B, 6): requests, updates, damped, sty_fails, infnan_fails, scaling_skips
    # H times the steering columns [g, Je^T, Ji^T] at x, from the last update ((B, n, 1 + q + p), or
    # (B, 0, 0) when not kept), and where it is current (H and x unchanged since)
    hv: Tensor
    hv_ok: Tensor
    # strict_sync: penalty reattempts made at the current iterate (each in its own pass)
    reattempts: Tensor


class HaltInfo(NamedTuple):
    """What ``halt_log_fn`` receives (batched, first dimension B).

    ``updated (B,)`` marks the problems that have a new accepted iterate (all at iteration 0); the
    callback returns a ``(B,)`` bool tensor (or None) and only its entries for updated problems
    still running count. ``x`` has the user's shape ``(B, *shape)``; ``H`` is the inverse-Hessian
    state; ``fallback_level`` the direction strategy that produced the step (0 S, 1 SI, 2 QN, 3 GD,
    4 random); ``status`` the current termination codes (-1 while running).

    The callback runs outside the solver's inference mode; every field but ``H`` is a normal copy it
    may write to or differentiate through; ``H`` is the solver's own state, handed over as is (an
    inference tensor except for a full-memory ``H`` updated in place: clone it before writing to it
    or using it with autograd).
    """

    iteration: Tensor
    x: Tensor
    f: Tensor
    ci: Tensor
    ce: Tensor
    tvi: Tensor
    tve: Tensor
    tv: Tensor
    feasible: Tensor
    mu: Tensor
    phi: Tensor
    stat: Tensor
    n_grads: Tensor
    alpha: Tensor
    ls_evals: Tensor
    fallback_level: Tensor
    H: Any
    updated: Tensor
    status: Tensor


LINE_SEARCHES: dict[str, Callable[[SolverOptions], LineSearch]] = {
    "weak_wolfe": lambda o: WeakWolfe(o.wolfe1, o.wolfe2, o.init_step_size, o.step_tol, o.is_backtrack_linesearch,
                                      o.linesearch_speculation, sync_free=o.sync_free,
                                      extrapolate=o.linesearch_previous_step,
                                      armijo_after=o.linesearch_armijo_after),
    "backtracking": lambda o: WeakWolfe(o.wolfe1, o.wolfe2, o.init_step_size, o.step_tol, True,
                                        o.linesearch_speculation, sync_free=o.sync_free),
}

HESSIANS: dict[str, Callable[[SolverOptions], HessianApprox]] = {
    "bfgs": lambda o: BFGS(o.bfgs_damping),
    "lbfgs": lambda o: LBFGS(o.limited_mem_size or 10, o.bfgs_damping, o.scaleH0, o.limited_mem_fixed_scaling),
}


def _pick(kind: str, spec: Any, registry: dict[str, Callable[[SolverOptions], Any]], opts: SolverOptions,
          protocol: type) -> Any:
    import difflib

    if isinstance(spec, str):
        if spec not in registry:
            close = difflib.get_close_matches(spec, list(registry), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {kind} {spec!r}{hint} (valid: {', '.join(sorted(registry))})")
        return registry[spec](opts)
    if isinstance(spec, type):
        raise TypeError(f"{kind} must be a name or an instance, got the class {spec.__name__}; "
                        f"pass {spec.__name__}(...) instead")
    if not isinstance(spec, protocol):
        raise TypeError(f"{kind} must be a name or an object implementing the {protocol.__name__} protocol, "
                        f"got {type(spec).__name__}")
    return spec


# ----------------------------------------------------------------------------------------------
def _violation_rows(ev: Evaluation, o: SolverOptions) -> Violation:
    return violation(ev, o.viol_ineq_tol, o.viol_eq_tol)


def _phi(ev: Evaluation, viol: Violation, mu: Tensor) -> Tensor:
    return mu * ev.f + viol.v1


def _steer_cols(ev: Evaluation, rows: Tensor | None = None) -> Tensor:
    """``[g, Je^T, Ji^T]`` ``(k, n, 1 + q + p)``: the columns the steering multiplies by H."""
    g, Je, Ji = (ev.g, ev.Je, ev.Ji) if rows is None else (ev.g[rows], ev.Je[rows], ev.Ji[rows])
    return torch.cat([g.unsqueeze(2), Je.transpose(1, 2), Ji.transpose(1, 2)], dim=2)


def _gphi(ev: Evaluation, viol: Violation, mu: Tensor) -> Tensor:
    return mu.unsqueeze(1) * ev.g + viol.gv1


def _record_from(x: Tensor, ev: Evaluation, viol: Violation, mu: Tensor, found: Tensor) -> _Rec:
    return _Rec(x.clone(), _pack_values(ev, viol, mu, found))


def _update_records(best: _Rec, mf: _Rec, rows: Tensor, x: Tensor, ev: Evaluation, viol: Violation,
                    mu: Tensor, constrained: bool, sync_free: bool = True,
                    mask: Tensor | None = None) -> tuple[_Rec, _Rec]:
    """Update the best / most-feasible records of problems ``rows`` (unique) with new evaluations
    (only the rows where ``mask``, if given).

    ``sync_free``: rewrite every row of ``rows`` under the masks (no host read); else copy only the
    improved rows, sized by one ``nonzero`` (fewer operations when few rows improve, as in most
    line-search rounds). The records are the same either way."""
    new = _Rec(x, _pack_values(ev, viol, mu, torch.ones_like(viol.feasible)))  # read only
    f = ev.f
    ok = torch.isfinite(f) & torch.isfinite(viol.tv)  # a NaN/inf point never becomes a record
    if mask is not None:
        ok = ok & mask
    if constrained:
        m_v, b_v = mf.v[rows], best.v[rows]
        b_tv, b_f = m_v[:, _TV], m_v[:, _F]
        better_mf = ok & ((viol.tv < b_tv) | ((viol.tv == b_tv) & (f < b_f)))
        better_b = ok & viol.feasible & ((b_v[:, _FOUND] == 0) | (f < b_v[:, _F]))
    else:
        better_b = ok & (f < best.v[rows, _F])
        better_mf = ok & (f < mf.v[rows, _F])

    # in place: the record tensors belong to the solver state being stepped; integer indices and
    # masks, never boolean indexing (one host sync per field on a GPU)
    if sync_free:  # every row of the round rewritten, its old value where it did not improve
        for rec, better in ((best, better_b), (mf, better_mf)):
            b = better.unsqueeze(1)
            for full, part in zip(rec, new):
                full[rows] = torch.where(b, part.to(full.dtype), full[rows])
        return best, mf
    bi = (better_b | better_mf).nonzero().squeeze(1)  # one host sync sizes the copy for both records
    if bi.numel():
        sel = rows[bi]
        parts = [part[bi].to(full.dtype) for full, part in zip(best, new)]
        for rec, better in ((best, better_b), (mf, better_mf)):
            m = better[bi].unsqueeze(1)
            for full, part in zip(rec, parts):
                full[sel] = torch.where(m, part, full[sel])
    return best, mf


# ----------------------------------------------------------------------------------------------
def solve(
    problem: Callable[..., Any],
    x0: Tensor,
    options: SolverOptions | None = None,
    *,
    qp: str | QPSolver | None = None,
    line_search: str | LineSearch | None = None,
    hessian: str | HessianApprox | None = None,
) -> SolveResult:
    """Solve B independent nonsmooth, nonconvex, constrained problems with BFGS-SQP.

    Args:
        problem: ``problem(x) -> (f, ci, ce)`` with ``x (B, *shape)``, ``f (B,)``, ``ci (B, p)`` or
            None (``ci <= 0``), ``ce (B, q)`` or None (``ce == 0``); see :mod:`ncvx_core.problem`
            for the subset form ``problem(x, idx=...)`` and for user-supplied gradients.
        x0: ``(B, *shape)`` floating-point start points (dtype and device of the solver state
            unless ``double_precision``/``torch_device`` say otherwise).
        options: :class:`SolverOptions` (defaults if None).
        qp: QP solver name (``"auto"``, ``"ipm"``, ``"enum"``, ``"qpth"``) or instance; defaults
            to ``options.QPsolver``.
        line_search: ``"weak_wolfe"``, ``"backtracking"`` or a :class:`LineSearch` instance.
        hessian: ``"bfgs"``, ``"lbfgs"`` or a :class:`HessianApprox` instance; defaults to full
            BFGS, or limited memory when ``options.limited_mem_size > 0``.

    Returns:
        :class:`SolveResult` with batched records, status codes and counters.

    Raises:
        TypeError, ValueError (:class:`ProblemDefinitionError`, :class:`NonFiniteStartError`,
        :class:`OptionError`) for invalid input. Numerical failures are status codes, never
        exceptions.
    """
    o = options if options is not None else SolverOptions()
    if not isinstance(o, SolverOptions):
        raise TypeError(f"options must be a SolverOptions, got {type(o).__name__}")
    return _Solver(problem, x0, o, qp, line_search, hessian).run()


class _Solver:
    def __init__(self, problem: Callable[..., Any], x0: Tensor, o: SolverOptions, qp: Any, ls: Any, hess: Any) -> None:
        if not isinstance(x0, Tensor):
            raise TypeError(f"x0 must be a torch.Tensor of shape (B, *shape), got {type(x0).__name__}")
        if not x0.is_floating_point():
            raise TypeError(f"x0 must be floating point (float32 or float64), got dtype {x0.dtype}")
        if x0.dim() < 2:
            raise ValueError(f"x0 must have shape (B, *shape) with a leading batch dimension, got {tuple(x0.shape)}"
                             " (for one problem use x0.unsqueeze(0))")
        if x0.shape[0] == 0 or x0[0].numel() == 0:
            raise ValueError(f"x0 must hold at least one problem with at least one variable, got {tuple(x0.shape)}")
        dtype = x0.dtype if o.double_precision is None else (torch.float64 if o.double_precision else torch.float32)
        device = x0.device if o.torch_device is None else torch.empty(0, device=o.torch_device).device
        x0 = x0.detach().to(dtype=dtype, device=device)
        bad = ~torch.isfinite(x0.reshape(x0.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"x0 has non-finite entries for problem indices {torch.nonzero(bad).flatten().tolist()[:20]}")
        self.o = o
        self.B = x0.shape[0]
        self.shape = tuple(x0.shape[1:])
        self.n = x0[0].numel()
        self.dtype, self.device = dtype, device
        self.x0 = x0.reshape(self.B, self.n)
        self.ev = Evaluator(problem, self.shape, self.B, dtype, device, user_gradients=not o.globalAD,
                            jacobian=o.jacobian)
        if self.B > 1 and not self.ev.accepts_idx:
            logger.info("the problem function has no idx= parameter: every evaluation runs all %d rows, finished "
                        "problems and line-search rounds included; accept idx= to evaluate only the rows in use "
                        "(docs/batching.md)", self.B)
        self.qp = _WithFallback(get_qp_solver(qp if qp is not None else o.QPsolver))
        self.ls = _pick("line_search", ls if ls is not None else "weak_wolfe", LINE_SEARCHES, o,
                        LineSearch)
        # masked copies instead of host-sized ones (docs/batching.md); the default: on CUDA devices
        self.strict = o.strict_sync
        self.sync_free = self.strict or sync_free_on(o.sync_free, self.device)
        # strict_sync: line-search rounds and interior-point iterations per pass, sized on the host
        # from the previous pass's one read (see _strict_read)
        self.ls_rounds = _STRICT_LS_ROUNDS
        self.ipm_iters = _STRICT_IPM_ITERS
        self.polish_rounds: int | None = None  # the interior-point polish rounds (None: their own)
        self._ls_stat: Tensor | None = None
        # strict_sync: the stationarity QPs' padded sample count (a rung of qp_buckets) and whether
        # the fallback QP is solved with every first one (after a pass where a first one failed)
        self.stat_size = 1
        self.stat_fallback = False
        self._stat_stat: Tensor | None = None
        self.hv_ready = False  # strict_sync: the stored H [g, Je^T, Ji^T] is current in every lane
        if self.sync_free:  # the interior-point solvers made here from a name read the host less often
            self.qp.check_every = 2
            self.qp.fixed_iters = self.ipm_iters if self.strict else None
            if isinstance(qp if qp is not None else o.QPsolver, str):
                _check_every(self.qp.solver, 2, self.qp.fixed_iters)
        self.hess_spec = hess
        if hess is not None:  # validate early; built in run() once the memory plan is known
            self.hess = _pick("hessian", hess, HESSIANS, o, HessianApprox)
        self.printer = IterationPrinter(o, self.B) if o.print_level > 0 else None
        self.t_start = time.monotonic()

    # ------------------------------------------------------------------------------------------
    def _mu0(self) -> Tensor:
        mu0 = self.o.mu0
        if isinstance(mu0, Tensor):
            mu = mu0.detach().to(dtype=self.dtype, device=self.device)
            if mu.dim() == 0:
                mu = mu.expand(self.B)
            if mu.shape != (self.B,):
                raise ValueError(f"option 'mu0' as a tensor must have shape ({self.B},), got {tuple(mu0.shape)}")
            if not bool(torch.isfinite(mu).all()) or bool((mu < 0).any()):
                raise ValueError("option 'mu0' must be finite and >= 0 for every problem")
            return mu.clone()
        return torch.full((self.B,), float(mu0), dtype=self.dtype, device=self.device)

    def _H0(self) -> Any:
        H0 = self.o.H0
        if H0 is None:
            return None
        if not isinstance(H0, Tensor):
            raise TypeError(f"option 'H0' must be a tensor of shape (n, n) or (B, n, n), got {type(H0).__name__}")
        n = self.n
        if H0.shape not in ((n, n), (self.B, n, n), (1, n, n)):
            raise ValueError(f"option 'H0' must have shape ({n}, {n}) or ({self.B}, {n}, {n}), got {tuple(H0.shape)}")
        H0 = H0.detach().to(dtype=self.dtype, device=self.device)
        if self.o.checkH0:
            Hb = H0 if H0.dim() == 3 else H0.unsqueeze(0)
            sym = torch.allclose(Hb, Hb.transpose(1, 2), rtol=1e-10, atol=1e-12)
            _, info = torch.linalg.cholesky_ex(Hb)
            if not sym or bool((info != 0).any()):
                raise ValueError("option 'H0' must be symmetric positive definite (set checkH0=False to skip this check)")
        return H0

    # ------------------------------------------------------------------------------------------
    def run(self) -> SolveResult:
        # the solver's own arithmetic runs in inference mode (no autograd bookkeeping on any of its
        # operations); the user's code (the problem function, halt_log_fn) runs outside it and gets
        # normal tensors, and so does the result
        with compute_mode():
            st = self._run()
        return self._result(st)

    def _run(self) -> State:
        o = self.o
        B, n = self.B, self.n
        x = self.x0
        ev0 = self.ev.evaluate(x, None, None, grad=True)
        self.ev.check_start(ev0)
        if o.prescaling_threshold < math.inf:
            ev0 = self.ev.set_prescaling(ev0, o.prescaling_threshold)
            if o.prescaling_info_msg:
                sf, si, se = self.ev.scales
                n_scaled = int((sf < 1).sum() + (si < 1).sum() + (se < 1).sum())
                logger.info("prescaling: %d function(s) scaled down at x0 (gradient norm > %g); records report "
                            "unscaled objective and constraint values", n_scaled, o.prescaling_threshold)
        self.p, self.q = ev0.ci.shape[1], ev0.ce.shape[1]
        self.constrained = (self.p + self.q) > 0
        mu = self._mu0() if self.constrained else torch.ones(B, dtype=self.dtype, device=self.device)
        self.min_level = o.min_fallback_level if self.constrained else max(o.min_fallback_level, 2)
        self.max_level = o.max_fallback_level if self.constrained else max(self.min_level, o.max_fallback_level)
        viol = _violation_rows(ev0, o)
        self.plan = plan_memory(B, n, self.p, self.q, self.dtype, self.device, limited_mem_size=o.limited_mem_size,
                                ngrad=o.ngrad, auto=o.auto_memory, memory_limit=o.memory_limit,
                                fixed_hessian=self.hess_spec is not None or o.H0 is not None)
        if self.hess_spec is None:
            m = self.plan.limited_mem_size
            self.hess = (LBFGS(m, o.bfgs_damping, o.scaleH0, o.limited_mem_fixed_scaling) if m > 0
                         else BFGS(o.bfgs_damping))
        with torch.inference_mode(False):  # normal tensors: an in-place update keeps them so (no copy for the result)
            H = self.hess.init(B, n, self.dtype, self.device, H0=self._H0(), warm_start=o.limited_mem_warm_start,
                               scaleH0=o.scaleH0)
        # in-place full memory: the update also returns H+ times the next directions' columns, which
        # saves the next pass over every n x n block (see BFGS.update_apply)
        self.reuse = (isinstance(H, BFGSState) and H.inplace and hasattr(self.hess, "update_apply")
                      and o.regularize_threshold == math.inf)
        L = self.plan.ngrad
        self.cache = init_cache(B, L, n, self.p, self.q, self.dtype, self.device)  # all problems, updated in place
        i64 = dict(dtype=torch.long, device=self.device)
        zeros_f = torch.zeros(B, dtype=self.dtype, device=self.device)
        mf = _record_from(x, ev0, viol, mu, torch.ones(B, dtype=torch.bool, device=self.device))
        best = _record_from(x, ev0, viol, mu, viol.feasible if self.constrained else torch.ones_like(viol.feasible))
        st = State(
            x=x.clone(), ev=ev0, viol=viol, mu=mu, H=H,
            status=torch.full((B,), RUNNING, dtype=torch.int16, device=self.device),
            level=torch.full((B,), self.min_level, **i64), rand_attempts=torch.zeros(B, **i64),
            iters=torch.zeros(B, **i64), fn_evals=torch.ones(B, **i64), ls_evals=torch.zeros(B, **i64),
            last_ls_evals=torch.ones(B, **i64),
            stat=zeros_f.clone(), n_grads=torch.ones(B, **i64), stat_fallback=torch.zeros(B, dtype=torch.int8, device=self.device),
            alpha=zeros_f.clone(), sd_level=torch.full((B,), -1, **i64), best=best, mf=mf,
            mu_lowest=mu.clone(), counters=torch.zeros(B, 6, **i64),
            hv=(torch.zeros(B, n, 1 + self.p + self.q, dtype=self.dtype, device=self.device) if self.reuse
                else torch.zeros(B, 0, 0, dtype=self.dtype, device=self.device)),
            hv_ok=torch.zeros(B, dtype=torch.bool, device=self.device),
            reattempts=torch.zeros(B, **i64),
        )
        # stationarity at x0 (H0 before any update)
        all_rows = torch.arange(B, device=self.device)
        st = self._stationarity(st, all_rows, torch.ones(B, dtype=torch.bool, device=self.device))
        updated = torch.ones(B, dtype=torch.bool, device=self.device)
        st = st._replace(status=self._converged(st, updated, torch.full((B,), math.inf, dtype=self.dtype,
                                                                             device=self.device)))
        st = self._halt(st, updated)
        st = self._maxit(st)
        if self.printer is not None:
            self.printer.header(self.constrained, self.p, self.q)
            self.printer.row(st, updated, first=True)
        passes = 0
        while True:
            running = st.status == RUNNING
            if self.strict:
                idx = self._strict_read(running)
            else:
                idx = torch.nonzero(running).flatten()  # the one host sync of a pass
            if idx.numel() == 0:
                break
            full = idx.numel() == B
            sub = st if full else _state_rows(st, idx)
            sub, accepted = self._step(sub, idx, st.x)
            if full:
                st = sub
            else:
                st = _scatter_state(st, idx, sub)
            acc_full = torch.zeros(B, dtype=torch.bool, device=self.device)
            acc_full[idx] = accepted
            st = self._halt(st, acc_full)
            # wall clock (checked after accepted steps), then maxit
            if o.maxclocktime < math.inf and time.monotonic() - self.t_start > o.maxclocktime:
                st = st._replace(status=st.status.masked_fill((st.status == RUNNING) & acc_full,
                                                              int(Status.MAXCLOCKTIME)))
            st = self._maxit(st)
            passes += 1
            if self.printer is not None:
                self.printer.row(st, acc_full)
        return st

    def _strict_read(self, running: Tensor) -> Tensor:
        """The one host read of a pass under ``strict_sync``: the number of running problems, with
        the line-search, interior-point and stationarity usage of the last pass, which size this
        pass's rounds, iterations and QPs. Returns the running problems' indices (sorted; gathered
        by a stable sort, without a second read)."""
        ls = self._ls_stat if self._ls_stat is not None else torch.zeros(2, dtype=torch.long, device=self.device)
        ipms = _ipms(self.qp)
        usage = [u for u in (s.take_usage() for s in ipms) if u is not None]
        ipm = (torch.stack(usage).amax(0) if usage else torch.zeros(3, dtype=torch.long, device=self.device))
        stq = self._stat_stat if self._stat_stat is not None else torch.zeros(2, dtype=torch.long, device=self.device)
        n_run, cut, used, ipm_used, ipm_failed, polish_used, n_samples, stat_failed = torch.cat([
            running.sum().view(1), ls.long(), ipm.long(), stq.long()]).tolist()
        self._stat_stat = None
        L = self.plan.ngrad
        if L > 0 and n_samples:  # room for one more sample than the most a problem had
            self.stat_size = max(self.stat_size, next(c for c in qp_buckets(L) if c >= min(L, n_samples + 1)))
        self.stat_fallback = self.stat_fallback or bool(stat_failed)
        self._ls_stat = None
        if cut:
            self.ls_rounds = min(2 * self.ls_rounds, _STRICT_LS_MAX)
        elif used:
            self.ls_rounds = max(int(used), 1)
        if ipm_failed:
            self.ipm_iters = min(2 * self.ipm_iters, _STRICT_IPM_MAX)
        elif ipm_used:
            self.ipm_iters = min(int(ipm_used) + _STRICT_IPM_SLACK, _STRICT_IPM_MAX)
        if polish_used:  # one round more than the most a problem used
            self.polish_rounds = int(polish_used) + 1
        for s in ipms:
            s.fixed_iters = self.ipm_iters
            s.fixed_polish_rounds = None if self.polish_rounds is None else min(self.polish_rounds, s.polish_rounds)
        order = torch.argsort((~running).to(torch.int8), stable=True)
        return order[:n_run]

    def _maxit(self, st: State) -> State:
        """Code 4 for the running problems that have reached ``maxit`` iterations."""
        return st._replace(status=st.status.masked_fill((st.status == RUNNING) & (st.iters >= self.o.maxit),
                                                        int(Status.MAXIT)))

    # ------------------------------------------------------------------------------------------
    def _apply(self, Hstate: Any, identity: Tensor | None = None, Hreg: Tensor | None = None) -> Callable[..., Tensor]:
        """``V (k, n, c) -> H V`` with H replaced by I where ``identity`` and by ``Hreg`` if given;
        ``apply(V, rows)`` applies the H of problems ``rows`` only."""

        def apply(V: Tensor, rows: Tensor | None = None) -> Tensor:
            Hs, Hr, ident = Hstate, Hreg, identity
            if rows is not None:  # restricted to some of the problems
                Hs = state_rows(Hstate, rows)
                Hr = None if Hreg is None else Hreg[rows]
                ident = None if identity is None else identity[rows]
            HV = bmm(Hr, V) if Hr is not None else self.hess.matmul(Hs, V)
            if ident is not None:
                HV = torch.where(bmask(ident, HV), V, HV)
            return HV

        return apply

    def _regularized(self, Hstate: Any) -> Tensor | None:
        o = self.o
        if o.regularize_threshold == math.inf or not hasattr(Hstate, "H"):
            return None
        H = BFGS.dense(Hstate) if isinstance(Hstate, BFGSState) else Hstate.H
        Hr, _ = regularize(H, o.regularize_threshold, o.regularize_max_eigenvalues)
        return Hr

    def _stationarity(self, st: State, orig_idx: Tensor, mask: Tensor) -> State:
        """Stationarity at the current points of the problems where ``mask`` (k lanes of ``st``, at
        positions ``orig_idx`` of the full batch)."""
        o = self.o
        gphi = _gphi(st.ev, st.viol, st.mu)
        gnorm = gphi.norm(dim=1)
        if self.plan.ngrad == 0:
            # no gradient samples: the measure is the penalty gradient's norm (the smooth check
            # alone), no QP
            return st._replace(stat=torch.where(mask, gnorm, st.stat), n_grads=torch.where(mask, 1, st.n_grads),
                               stat_fallback=st.stat_fallback.masked_fill(mask, 0))
        smooth = gnorm <= o.opt_tol
        need = mask & ~smooth
        stat = torch.where(mask & smooth, gnorm, st.stat)
        n_grads = torch.where(mask & smooth, 1, st.n_grads)
        fb = st.stat_fallback.masked_fill(mask & smooth, 0)
        # strict_sync: every lane, the results kept where needed (no read of which lanes need it)
        rows_all = torch.arange(need.shape[0], device=need.device) if self.strict else torch.nonzero(need).flatten()
        chunk = max(1, self.plan.chunk)
        ev = st.ev
        for start in range(0, rows_all.numel(), chunk):
            rows = rows_all[start:start + chunk]
            orig = orig_idx[rows]  # positions in the full batch (the cache holds every problem)
            keep = need[rows] if self.strict else None
            nb = cache_insert(self.cache, orig, st.x[rows], ev.g[rows], ev.Ji[rows], ev.Je[rows], o.evaldist,
                              exact=self.sync_free, mask=keep)
            Hsub = st.H if rows.numel() == st.x.shape[0] else state_rows(st.H, rows)  # all lanes: no copy
            Hreg = self._regularized(Hsub)
            res = stationarity_qp(self._apply(Hsub, None, Hreg), self.cache, orig, nb, ev.ci[rows], ev.ce[rows],
                                  st.mu[rows], qp=self.qp, l2=o.stat_l2_model, qp_tol=o.qp_tol, strict=self.strict,
                                  size=self.stat_size, fallback=self.stat_fallback)
            if keep is not None:
                res = StationarityResult(*(torch.where(keep, a, b[rows]) for a, b in zip(res, (stat, n_grads, fb))))
                # what the next pass's QP size and fallback are chosen from (_strict_read)
                used = torch.stack([torch.where(keep, nb.sum(1), 0).amax(), (keep & (res.fallback < 0)).any().long()])
                self._stat_stat = used if self._stat_stat is None else torch.maximum(self._stat_stat, used)
            stat = stat.index_copy(0, rows, res.stat)
            n_grads = n_grads.index_copy(0, rows, res.n_grads)
            fb = fb.index_copy(0, rows, res.fallback)
        return st._replace(stat=stat, n_grads=n_grads, stat_fallback=fb)

    def _converged(self, st: State, mask: Tensor, rel_diff: Tensor) -> Tensor:
        o = self.o
        feas = st.viol.feasible
        run = (st.status == RUNNING) & mask & feas
        status = st.status
        code0 = run & (st.stat <= o.opt_tol)
        code1 = run & ~code0 & (rel_diff <= o.rel_tol)
        code2 = run & ~code0 & ~code1 & (st.ev.f <= o.fvalquit)
        for m, c in ((code0, 0), (code1, 1), (code2, 2)):
            status = status.masked_fill(m, c)
        return status

    def _halt(self, st: State, updated: Tensor) -> State:
        fn = self.o.halt_log_fn
        if fn is None or not bool(updated.any()):
            return st
        phi = _phi(st.ev, st.viol, st.mu)
        info = HaltInfo(st.iters, st.x.reshape(self.B, *self.shape), st.ev.f, st.ev.ci, st.ev.ce,
                        st.viol.tvi, st.viol.tve, st.viol.tv, st.viol.feasible, st.mu, phi, st.stat, st.n_grads,
                        st.alpha, st.last_ls_evals, st.sd_level.clamp(min=0), None, updated, st.status.long())
        with torch.inference_mode(False):  # one normal copy of each field (H: the solver's own state, as is)
            out = fn(tree_map(torch.clone, info)._replace(H=st.H))
        if out is None:
            return st
        if not isinstance(out, Tensor) or out.shape != (self.B,):
            raise ProblemDefinitionError(
                f"halt_log_fn must return None or a bool tensor of shape ({self.B},), got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        halt = out.to(device=self.device).bool() & updated & (st.status == RUNNING)
        return st._replace(status=st.status.masked_fill(halt, int(Status.USER_HALT)))

    # ------------------------------------------------------------------------------------------
    def _directions(self, st: State, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Candidate direction per problem at its level: returns ``(d, mu, qp_failed, rand_used)``."""
        o = self.o
        level = st.level
        k = level.shape[0]
        ev, viol, mu = st.ev, st.viol, st.mu
        gphi = _gphi(ev, viol, mu)
        d = -gphi  # level 3
        mu_new = mu
        qp_failed = torch.zeros(k, dtype=torch.bool, device=self.device)
        qn = level == 2
        steer_lanes = level <= 1
        rand = level == 4
        # one host read for the branch checks: lanes per kind (all lanes steering needs no row
        # list), and whether the stored H [g, Je^T, Ji^T] is current where it would be reused
        if self.strict:
            # no read: what each kind of lane may need is known from the levels in use, and the
            # stored products are current once an update has run (the update covers every lane)
            n_qn = int(self.min_level <= 2 <= self.max_level)
            n_steer = k if self.min_level <= 1 else 0
            any_rand = self.max_level >= 4 and bool(rand.any())  # level 4 (off by default) reads
            hv_qn = hv_steer = int(self.hv_ready)
        else:
            n_qn, n_steer, any_rand, hv_qn, hv_steer = torch.stack([
                qn.sum(), steer_lanes.sum(), rand.any().long(), (st.hv_ok | ~qn).all().long(),
                (st.hv_ok | ~steer_lanes).all().long()]).tolist()
        if n_qn:
            if self.reuse and not self.constrained and hv_qn:
                d_qn = -mu.unsqueeze(1) * st.hv[:, :, 0]  # gphi = mu g without constraints
            else:
                d_qn = -self.hess.matmul(st.H, gphi.unsqueeze(2)).squeeze(2)
            d = torch.where(bmask(qn, d), d_qn, d)
        if self.constrained and n_steer:
            every = n_steer == k
            rows = torch.arange(k, device=self.device) if every else torch.nonzero(steer_lanes).flatten()
            Hsub = st.H if every else state_rows(st.H, rows)  # all lanes: no copy
            Hreg = self._regularized(Hsub)
            ident = level[rows] == 1
            apply = self._apply(Hsub, ident, Hreg)
            HV = None
            if self.reuse and hv_steer:  # H V from the last update, I V at level SI
                HV = torch.where(bmask(ident, st.hv[rows]), _steer_cols(ev, rows), st.hv[rows])
            res = steer(apply, ev.g[rows], ev.ci[rows], ev.Ji[rows], ev.ce[rows], ev.Je[rows], mu[rows], qp=self.qp,
                        c_viol=o.steering_c_viol, c_mu=o.steering_c_mu, maxit=o.steering_maxit,
                        ineq_margin=o.steering_ineq_margin, l1_model=o.steering_l1_model, qp_tol=o.qp_tol, HV=HV,
                        sync_free=self.sync_free)
            if self.strict:  # every lane steered; the result kept where the level asks for it
                d = torch.where(bmask(steer_lanes, d), res.d, d)
                mu_new = torch.where(steer_lanes, res.mu, mu)
                qp_failed = steer_lanes & res.qp_failed
            else:
                d = d.index_copy(0, rows, res.d)
                mu_new = mu.index_copy(0, rows, res.mu)
                qp_failed = qp_failed.index_copy(0, rows, res.qp_failed)
        if any_rand:
            rows = torch.nonzero(rand).flatten().tolist()
            g_new = _gphi(ev, viol, mu_new)
            for r in rows:  # rare: level 4 is off by default; one generator per problem keeps batches independent
                gen = torch.Generator(device="cpu")
                gen.manual_seed(hash((o.seed, int(idx[r]), int(st.rand_attempts[r]), int(st.iters[r]))) % (2**63))
                pr = torch.randn(self.n, generator=gen, dtype=self.dtype).to(self.device)
                pr = torch.where((g_new[r] @ pr) > 0, -pr, pr)
                d[r] = pr
        return d, mu_new, qp_failed, rand

    def _step(self, st: State, idx: Tensor, x_full: Tensor) -> tuple[State, Tensor]:
        o = self.o
        k = idx.shape[0]
        dev = self.device
        first_iter = st.iters == 0
        d, mu_dir, qp_failed, rand = self._directions(st, idx)
        if o.search_direction_rescaling:
            d = d / d.norm(dim=1, keepdim=True)
        ev, viol = st.ev, st.viol
        phi_k = _phi(ev, viol, mu_dir)
        gphi_k = _gphi(ev, viol, mu_dir)
        slope = (gphi_k * d).sum(dim=1)
        finite_dir = torch.isfinite(slope) & torch.isfinite(d).all(dim=1)
        descent = finite_dir & (slope < 0)
        nondescent_search = finite_dir & ~descent & (o.linesearch_nondescent_maxit > 0)
        search = ~qp_failed & (descent | nondescent_search)
        budget = torch.where(descent, float(o.linesearch_maxit),
                             float(min(o.linesearch_nondescent_maxit, o.linesearch_maxit))).to(self.dtype)
        rand_attempts = st.rand_attempts + rand.long()

        # -- line search (with penalty reattempts) --------------------------------------------------
        mu_ls = mu_dir.clone()
        best, mf = st.best, st.mf
        records = [best, mf]
        constrained = self.constrained
        user_error = torch.zeros(k, dtype=torch.bool, device=dev)
        evals_total = torch.zeros(k, dtype=torch.long, device=dev)

        # linesearch_previous_step: each search starts at 4 times the problem's last accepted step
        # (capped at init_step_size; init_step_size before the first accepted step)
        t_init = (torch.where(st.alpha > 0, (_PREVIOUS_STEP_FACTOR * st.alpha).clamp(max=o.init_step_size),
                              o.init_step_size)
                  if o.linesearch_previous_step else None)

        def make_problem(mu_cur: Tensor, phi0: Tensor, g0: Tensor) -> LineSearchProblem:
            payload0 = (ev, viol)
            start = Trial(phi0, g0, viol.feasible, st.x, _Payload(*payload0))

            def peek(xr: Tensor, rows: Tensor, grad: bool) -> Trial:
                e = self.ev.evaluate(xr, idx[rows], x_full, grad=grad)
                v = _violation_rows(e, o)
                m = mu_cur[rows]
                phi = _phi(e, v, m)
                g = _gphi(e, v, m) if grad else None
                if not grad:
                    e = Evaluation(e.f, e.ci, e.ce, torch.full_like(xr, math.nan),
                                   torch.full((xr.shape[0], self.p, self.n), math.nan, dtype=self.dtype, device=dev),
                                   torch.full((xr.shape[0], self.q, self.n), math.nan, dtype=self.dtype, device=dev))
                    v = v._replace(gv1=torch.full_like(xr, math.nan))
                return Trial(phi, g, v.feasible, xr, _Payload(e, v))

            def record(trial: Trial, rows: Tensor, mask: Tensor | None = None) -> None:
                e, v = trial.payload
                records[0], records[1] = _update_records(records[0], records[1], rows, trial.x, e, v, mu_cur[rows],
                                                         constrained, self.sync_free, mask)

            def evaluate(xr: Tensor, rows: Tensor, grad: bool) -> Trial:
                trial = peek(xr, rows, grad)
                if grad:
                    record(trial, rows)
                return trial

            # several trial steps of one problem in one call need a function that takes idx
            spec = o.linesearch_speculation if self.ev.accepts_idx else 1
            return LineSearchProblem(start, evaluate, o.fvalquit, peek=peek, record=record, speculation=spec,
                                     t_init=t_init, rounds=self.ls_rounds if self.strict else None)

        try:
            res = self.ls.search(make_problem(mu_ls, phi_k, gphi_k), d, search, budget)
            evals_total += res.evals.long()
            R = torch.where(first_iter, o.linesearch_reattempts_x0, o.linesearch_reattempts)
            cmu = torch.where(first_iter, o.linesearch_c_mu_x0, o.linesearch_c_mu).to(self.dtype)
            mu_lowest = st.mu_lowest
            if constrained:
                # (under strict_sync each reattempt is a pass of its own: see `again` below)
                tries = 0 if self.strict else max(o.linesearch_reattempts_x0, o.linesearch_reattempts)
                for j in range(1, tries + 1):
                    again = search & descent & (res.status == LS_NO_BRACKET) & (j <= R)
                    if not bool(again.any()):
                        break
                    mu_ls = torch.where(again, mu_ls * cmu, mu_ls)
                    mu_lowest = torch.where(again, torch.minimum(mu_lowest, mu_ls), mu_lowest)
                    phi_j = _phi(ev, viol, mu_ls)
                    g_j = _gphi(ev, viol, mu_ls)
                    res_j = self.ls.search(make_problem(mu_ls, phi_j, g_j), d, again, budget)
                    evals_total += res_j.evals.long()
                    res = _merge_ls(again, res_j, res)
        except Exception as exc:  # the user's function raised inside the line search
            if o.debug_mode or isinstance(exc, NcvxError):
                raise
            logger.error("problem function raised during the line search (status 11): %r", exc)
            user_error = search.clone()
            res = None
            mu_lowest = st.mu_lowest
        best, mf = records
        if self.strict and res is not None:  # what the next pass's rounds are sized from (_strict_read)
            # (one search per pass: strict_sync makes each penalty reattempt a pass of its own)
            self._ls_stat = torch.stack([(res.status == LS_CUT).any().long(), res.evals.amax().long()])
        status = st.status
        i16 = lambda c: torch.full((), int(c), dtype=torch.int16, device=dev)  # noqa: E731
        if res is None:
            ls_status = torch.full((k,), LS_OK, dtype=torch.int8, device=dev)
            t = torch.zeros(k, dtype=self.dtype, device=dev)
            trial = None
        else:
            ls_status = res.status
            t = res.t
            trial = res.trial
        cut = ls_status == LS_CUT  # strict_sync: ran out of rounds; the pass is repeated with more
        again = torch.zeros_like(cut)
        mu_again = st.mu
        if self.strict and constrained and res is not None:
            # strict_sync: a penalty reattempt is the next pass, from the same iterate with mu
            # reduced (its direction is computed anew with that mu), instead of a read per attempt
            again = search & descent & (ls_status == LS_NO_BRACKET) & (st.reattempts < R)
            mu_again = torch.where(again, mu_ls * cmu, st.mu)
        cut = cut | again
        ls_status = ls_status.masked_fill(nondescent_search & ~descent & (ls_status != LS_OK) & ~cut, LS_NONDESCENT)

        # -- outcomes ----------------------------------------------------------------------------
        level = st.level
        can_bump = (level < self.max_level) | ((level == 4) & (rand_attempts < o.max_random_attempts))
        feasible_k = viol.feasible
        force_accept = (o.disable_terminationcode_6 & (level == 3) & search & ~user_error & (ls_status != LS_OK)
                        & ~cut)
        ok = search & ~user_error & ((ls_status == LS_OK) | force_accept)
        no_dir = ~qp_failed & ~search  # non-finite or non-descent direction without a search
        fail1 = search & ~user_error & ~ok & (ls_status == LS_BRACKETED)
        fail2 = search & ~user_error & ~ok & (ls_status == LS_NO_BRACKET) & ~cut
        fail3 = search & ~user_error & ~ok & (ls_status == LS_NONDESCENT)
        bump = torch.zeros(k, dtype=torch.bool, device=dev)
        # QP failure in steering
        qp_bump = qp_failed & can_bump & (not o.halt_on_quadprog_error)
        status = torch.where(qp_failed & ~qp_bump, i16(Status.QP_ERROR), status)
        bump |= qp_bump
        # no usable direction
        bump |= no_dir & can_bump
        status = torch.where(no_dir & ~can_bump, i16(Status.NO_DESCENT), status)
        bump |= fail3 & can_bump
        status = torch.where(fail3 & ~can_bump, i16(Status.NO_DESCENT), status)
        # bracketed failure
        halt6 = fail1 & o.halt_on_linesearch_bracket & feasible_k
        status = torch.where(halt6, i16(Status.BRACKET_FEASIBLE), status)
        b1 = fail1 & ~halt6 & can_bump
        bump |= b1
        end1 = fail1 & ~halt6 & ~can_bump
        status = torch.where(end1, torch.where(feasible_k, i16(Status.BRACKET_FEASIBLE), i16(Status.BRACKET_INFEASIBLE)),
                             status)
        status = torch.where(fail2, i16(Status.NO_BRACKET), status)
        status = torch.where(user_error, i16(Status.USER_ERROR), status)
        new_level = torch.where(bump, torch.clamp(level + 1, max=4), level)
        new_level = torch.where(bump & (level == 4), level, new_level)
        ls_evals = st.ls_evals + evals_total
        fn_evals = st.fn_evals + evals_total
        mu_lowest = torch.where(fail2, mu_lowest, st.mu_lowest)
        mu_lowest = torch.where(again, torch.minimum(mu_lowest, mu_again), mu_lowest)

        st = st._replace(status=status, level=new_level, rand_attempts=rand_attempts, ls_evals=ls_evals,
                         fn_evals=fn_evals, best=best, mf=mf, mu_lowest=mu_lowest, mu=mu_again,
                         reattempts=st.reattempts + again.long())
        if trial is None:
            return st, ok
        # the accept step runs under the mask even if no problem accepted (rare: every problem of
        # the pass failed its line search), which saves a host read per pass

        # -- accept --------------------------------------------------------------------------------
        ev_new, viol_new = trial.payload
        mu_acc = mu_ls
        phi_old = _phi(ev, viol, mu_acc)
        gphi_old = _gphi(ev, viol, mu_acc)
        phi_new = trial.phi
        changed = mu_acc != st.mu
        rel_diff = torch.where(changed | (phi_old == 0), math.inf, (phi_new - phi_old).abs() / phi_old.abs())
        H_before = st.H
        new = st._replace(
            x=torch.where(bmask(ok, st.x), trial.x, st.x),
            ev=tree_where(ok, ev_new, st.ev),
            viol=tree_where(ok, viol_new, st.viol),
            mu=torch.where(ok, mu_acc, st.mu),
            iters=st.iters + ok.long(),
            level=torch.where(ok, self.min_level, new_level),
            rand_attempts=torch.where(ok, 0, rand_attempts),
            reattempts=torch.where(ok, 0, st.reattempts),
            ls_evals=torch.where(ok, 0, ls_evals),
            last_ls_evals=torch.where(ok, ls_evals, st.last_ls_evals),
            alpha=torch.where(ok, t, st.alpha),
            sd_level=torch.where(ok, level, st.sd_level),
        )
        # stationarity with the H from before this update
        new = self._stationarity(new._replace(H=H_before), idx, ok)
        # BFGS update with s = t d and y = grad phi(x_new; mu) - grad phi(x_k; mu)
        s = t.unsqueeze(1) * d
        gphi_new = _gphi(new.ev, new.viol, new.mu)
        y = gphi_new - gphi_old
        if self.reuse:
            H_new, info, hv = self.hess.update_apply(H_before, s, y, ok, _steer_cols(new.ev))
            # every row: an updated one has H+ X, the others kept H and x, so H X is current too
            new = new._replace(hv=hv, hv_ok=torch.ones_like(ok))
            self.hv_ready = True
        else:
            H_new, info = self.hess.update(H_before, s, y, ok)
        code = info.code
        cnt = torch.stack([
            ok.long(), ((code == 0) | (code == 1)).long(), info.damped.long(), (code == 2).long(),
            (code == 3).long(), (code == 1).long()], dim=1)
        new = new._replace(H=H_new, counters=new.counters + cnt * ok.long().unsqueeze(1))
        status = self._converged(new, ok, rel_diff)
        new = new._replace(status=status)
        return new, ok

    # ------------------------------------------------------------------------------------------
    def _result(self, st: State) -> SolveResult:
        shape = (self.B, *self.shape)

        scales = self.ev.scales

        def it(rec: Record, fallback: Record | None = None) -> Iterate:
            if fallback is not None:
                rec = tree_where(rec.found, rec, fallback._replace(found=torch.zeros_like(rec.found)))
            if scales is not None:  # report the user's (unscaled) values
                sf, si, se = scales
                ci, ce = rec.ci / si, rec.ce / se
                tvi = ci.clamp(min=0).amax(1) if ci.shape[1] else torch.zeros_like(rec.f)
                tve = ce.abs().amax(1) if ce.shape[1] else torch.zeros_like(rec.f)
                rec = rec._replace(f=rec.f / sf, ci=ci, ce=ce, tvi=tvi, tve=tve, tv=torch.maximum(tvi, tve))
            return Iterate(rec.x.reshape(shape), rec.f, rec.ci, rec.ce, rec.tvi, rec.tve, rec.tv, rec.feasible,
                           rec.mu, rec.found)

        final = Record(st.x, st.ev.f, st.ev.ci, st.ev.ce, st.viol.tvi, st.viol.tve, st.viol.tv, st.viol.feasible,
                       st.mu, torch.ones_like(st.viol.feasible))
        best, mf = _unpack(st.best, self.p), _unpack(st.mf, self.p)
        names = ["requests", "updates", "damped", "sty_fails", "infnan_fails", "scaling_skips"]
        final_it = normal_tensors(it(final))
        res = SolveResult(
            final=final_it, best=normal_tensors(it(best, mf)), most_feasible=normal_tensors(it(mf)),
            status=normal_tensors(st.status.long()), iters=normal_tensors(st.iters), fn_evals=normal_tensors(st.fn_evals),
            stationarity=normal_tensors(st.stat), mu=normal_tensors(st.mu), violation=final_it.violation,
            mu_lowest=normal_tensors(st.mu_lowest), bfgs={nm: st.counters[:, j].clone() for j, nm in enumerate(names)},
            H_final=normal_tensors(st.H), elapsed=time.monotonic() - self.t_start, options=self.o,
            memory_plan=self.plan,
        )
        if self.printer is not None:
            self.printer.footer(res)
        return res


def _check_every(solver: Any, k: int, fixed_iters: int | None = None) -> None:
    """Set the host-read interval and the fixed iteration count (``strict_sync``) of the
    interior-point solver(s) of a QP solver made from a name (``"ipm"``, or ``"auto"``'s)."""
    for s in (solver, getattr(solver, "ipm", None) if isinstance(solver, AutoQPSolver) else None):
        if isinstance(s, IPMQPSolver):
            s.check_every = k
            s.fixed_iters = fixed_iters


def _ipms(qp: _WithFallback) -> list[IPMQPSolver]:
    """The interior-point solvers with a fixed iteration count behind the solver's QP solver."""
    out = [qp._ipm] if qp._ipm is not None else []
    s = qp.solver
    out += [s] if isinstance(s, IPMQPSolver) else [s.ipm] if isinstance(s, AutoQPSolver) else []
    return [i for i in out if isinstance(i, IPMQPSolver) and i.fixed_iters is not None]


class _WithFallback:
    """Sends the QPs a chosen solver does not support (``supports() is False``, e.g. the
    stationarity QP's equality for ``"enum"``) to the interior-point solver."""

    def __init__(self, solver: QPSolver) -> None:
        self.solver = solver
        self.name = solver.name
        self._ipm: QPSolver | None = None
        self._warned = False
        self.check_every = 1  # for the fallback interior-point solver it makes
        self.fixed_iters: int | None = None  # likewise

    def supports(self, qp: Any) -> bool:
        return True

    def solve(self, qp: Any, **kw: Any) -> Any:
        if self.solver.supports(qp):
            return self.solver.solve(qp, **kw)
        if self._ipm is None:
            self._ipm = get_qp_solver("ipm")
            _check_every(self._ipm, self.check_every, self.fixed_iters)
        if not self._warned:
            logger.info("QP solver %r does not support a QP of size %d%s; using 'ipm' for it", self.name, qp.m,
                        " with an equality" if qp.eq_mask is not None else "")
            self._warned = True
        return self._ipm.solve(qp, **kw)


class _Payload(NamedTuple):
    ev: Evaluation
    viol: Violation


def _merge_ls(mask: Tensor, new: Any, old: Any) -> Any:
    """Per-problem merge of two line-search results (``new`` where ``mask``)."""
    return type(old)(
        torch.where(mask, new.t, old.t),
        tree_where(mask, new.trial, old.trial),
        torch.where(mask, new.status, old.status),
        torch.where(mask, new.evals, old.evals),
    )


def _state_rows(st: State, idx: Tensor) -> State:
    """The solver state of problems ``idx`` (the inverse-Hessian state through
    :func:`~ncvx_core.hessian.state_rows`, which may return a view)."""
    return tree_rows(st._replace(H=None), idx)._replace(H=state_rows(st.H, idx))


def _scatter_state(st: State, idx: Tensor, sub: State) -> State:
    """``st`` with the problems ``idx`` replaced by ``sub``, in place."""
    H = state_put(st.H, idx, sub.H)
    return tree_put(st._replace(H=None), idx, sub._replace(H=None))._replace(H=H)
