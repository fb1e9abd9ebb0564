"""Batched weak Wolfe line search (Lewis-Overton bracketing/bisection, spec section 3).

All problems of the batch search in lock step, each with its own step, bracket and expansion
count. Every trial evaluates only the problems still searching.

Speculation: when few problems are left searching, a round may evaluate several trial steps of
one problem at once, the steps the serial search would try next if every one of them failed the
sufficient-decrease test (bisection towards the lower bracket end). The results are then consumed
in order, exactly as one trial per round would consume them; the trials after the first one that
changes the path are discarded and never counted or recorded. The search is therefore the same
search, in fewer rounds, for a few extra evaluations (bit for bit when the problem function's
rows do not depend on the other rows of its call: a speculative round changes which rows share a
call, and a dense layer's matrix product, for one, can round differently for a different row
count). The width is bounded so that a round never evaluates more rows than the first round of
the search did, and a step is only added where the measured failure rate of earlier trials says
the serial search would reach it with probability at least ``speculate_min_use``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .utils import sync_free_on, tree_map, tree_put, tree_rows, tree_where

__all__ = [
    "LS_OK",
    "LS_BRACKETED",
    "LS_NO_BRACKET",
    "LS_NONDESCENT",
    "LS_CUT",
    "Trial",
    "LineSearchProblem",
    "LineSearchResult",
    "LineSearch",
    "WeakWolfe",
    "Backtracking",
]

LS_OK = 0          # weak Wolfe (or Armijo for backtracking) satisfied, or the fvalquit exit
LS_BRACKETED = 1   # bracketed a minimiser but did not satisfy the conditions
LS_NO_BRACKET = 2  # never bracketed: the function may be unbounded below along d
LS_NONDESCENT = 3  # assigned by the solver for failed searches along non-descent directions
LS_CUT = 4         # still searching after the fixed number of rounds (``LineSearchProblem.rounds``)


class Trial(NamedTuple):
    """One evaluation of the penalty at k points.

    ``phi (k,)``; ``gphi (k, n)`` or None for value-only trials; ``feasible (k,)`` bool; ``x (k, n)``;
    ``payload``: anything batched the caller wants back for the returned point (a NamedTuple of
    tensors with the batch dimension first, e.g. the raw evaluation).
    """

    phi: Tensor
    gphi: Tensor | None
    feasible: Tensor
    x: Tensor
    payload: Any


@dataclass
class LineSearchProblem:
    """What a line search needs about the k problems it searches for.

    Attributes:
        start: the Trial at the current iterates (with gradient); returned for alpha = 0.
        evaluate: ``evaluate(x (j, n), rows (j,) long, grad) -> Trial`` for the listed problems
            (``rows`` index the k problems of this search). The caller's side effects of an
            evaluation (best-point records) happen inside this call.
        fvalquit: accept a feasible trial whose penalty value is <= this.
        peek: optional ``peek(x, rows, grad) -> Trial`` like ``evaluate`` but without side effects;
            ``rows`` may then repeat a problem (several trial steps of one problem). Given together
            with ``record``, a line search calls ``record(trial, rows)`` (rows unique) for every
            trial it takes on its path, in order, and may evaluate trials it then discards.
        record: see ``peek``.
        speculation: the most trial steps per problem one ``peek`` call may carry (1: none).
        t_init: optional ``(k,)`` first trial step per problem (None: the line search's own ``t0``;
            a non-finite or non-positive entry also means ``t0`` for that problem).
        rounds: None (default): search until every problem is done. An int: exactly this many
            rounds of one trial per problem, each evaluating all k problems (the rows of the
            problems not searching are evaluated at their start point and ignored), with no host
            synchronisation; a problem still searching after them comes back with status
            ``LS_CUT``. Needs ``peek`` and ``record``; ``record`` then takes a third argument,
            the ``(k,)`` mask of the rows it may record. The solver's ``strict_sync`` mode.
    """

    start: Trial
    evaluate: Callable[[Tensor, Tensor, bool], Trial]
    fvalquit: float = -math.inf
    peek: Callable[[Tensor, Tensor, bool], Trial] | None = None
    record: Callable[[Trial, Tensor], None] | None = None
    speculation: int = 1
    t_init: Tensor | None = None
    rounds: int | None = None


class LineSearchResult(NamedTuple):
    """``t (k,)`` accepted (or lower-bracket) step; ``trial`` the returned point (with gradient);
    ``status (k,)`` int8 (LS_*); ``evals (k,)`` int32 function evaluations spent."""

    t: Tensor
    trial: Trial
    status: Tensor
    evals: Tensor


@runtime_checkable
class LineSearch(Protocol):
    """A batched line search. ``search`` only works on problems where ``active`` is true (the others
    come back with t = 0, status LS_OK, 0 evaluations and the start trial) and never raises for a
    numerically bad problem."""

    name: str

    def search(self, prob: LineSearchProblem, d: Tensor, active: Tensor, budget: Tensor) -> LineSearchResult: ...


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


@dataclass
class _State:
    """Per-problem search state, ``(k,)`` tensors (``best`` a Trial)."""

    alpha: Tensor
    beta: Tensor
    t: Tensor
    nexp: Tensor
    evals: Tensor
    status: Tensor
    searching: Tensor
    done_ok: Tensor
    alpha_ok: Tensor  # the lower bracket end satisfies the weak Wolfe conditions (extrapolation)
    best: Any
    last_value_trial_t: Tensor


class WeakWolfe:
    """Weak Wolfe bracketing/bisection line search (GRANSO's modified ``linesch_ww``).

    Args:
        c1, c2: Armijo and curvature constants (``wolfe1``, ``wolfe2``).
        t0: initial step (``init_step_size``).
        step_tol: stop when the bracket is shorter than ``step_tol * ||x0 + alpha d|| / ||d||``.
        backtracking: value-only trials, Armijo only, halving from t0 (``is_backtrack_linesearch``).
        speculate: the most trial steps per problem in one round (module docstring); used only
            when the problem offers ``peek``/``record`` and allows it (``speculation``). 1: off.
            The accepted steps, evaluation counts and records do not depend on it when the
            problem function's rows do not depend, to the bit, on the other rows of its call
            (a dense layer's matrix product can round differently for different row counts).
        speculate_min_use: a round carries a problem's next trial step only if the serial search
            would reach it with at least this probability, estimated from the fraction of this
            object's past trials that failed sufficient decrease (none before 16 trials); 0: always
            the most steps ``speculate`` and the row bound allow.
        extrapolate: a trial that satisfies the weak Wolfe conditions at a step below ``t0``
            before any trial failed sufficient decrease is not accepted at once: the step doubles
            (capped at ``t0``) while the conditions hold, and the search returns the largest step
            that satisfied them (the lower bracket end when the next doubling fails sufficient
            decrease; a doubling that only fails the curvature condition continues as a normal
            expansion). With a start below ``t0`` (``LineSearchProblem.t_init``) the search then
            lands near the step the search from ``t0`` would find by bisection, in fewer trials
            when the start is close. False (default): GRANSO's search.
        armijo_after: a search that has taken at least this many trials, has bracketed (a trial
            failed sufficient decrease) and whose lower bracket end is a step > 0 (a trial that
            satisfied sufficient decrease and failed only the curvature condition) returns that
            step as accepted, before its next trial. At a kink of a nonsmooth penalty no step
            may satisfy both conditions, and GRANSO's search then bisects until its budget or
            the bracket tolerance, fails, and the iteration falls back to another direction;
            this ends such searches at a step with sufficient decrease instead. None (default):
            GRANSO's search.
        sync_free: how a round copies the trials it takes into the search's points: True rewrites
            every row of the round under a mask (no host synchronisation; the failure count for the
            speculation width then stays on the device and is read at most once per search, when
            a width above 1 is first possible), False copies the taken rows only, sized by one
            ``nonzero`` (fewer operations; a host sync on a GPU), None (default) True on a CUDA
            device, False on the CPU. The accepted steps, points and counts do not depend on it
            (the speculation widths, and so which rows share a call of the problem function, can:
            see ``speculate``).

    Reference: A. S. Lewis and M. L. Overton, Nonsmooth optimization via quasi-Newton methods,
    Math. Programming 141 (2013).
    """

    name = "weak_wolfe"

    def __init__(self, c1: float = 1e-4, c2: float = 0.5, t0: float = 1.0, step_tol: float = 1e-12,
                 backtracking: bool = False, speculate: int = 1, speculate_min_use: float = 0.5,
                 sync_free: bool | None = None, extrapolate: bool = False, armijo_after: int | None = None) -> None:
        if not 0 <= c1 <= 0.5 or not c1 <= c2 < 1:
            raise ValueError(f"need 0 <= c1 <= 0.5 and c1 <= c2 < 1, got c1={c1}, c2={c2}")
        if isinstance(speculate, bool) or not isinstance(speculate, int) or speculate < 1:
            raise ValueError(f"speculate must be an int >= 1, got {speculate!r}")
        self.c1, self.c2, self.t0, self.step_tol = float(c1), float(c2), float(t0), float(step_tol)
        self.backtracking = bool(backtracking)
        self.speculate = speculate
        if not 0 <= speculate_min_use < 1:
            raise ValueError(f"speculate_min_use must be in [0, 1), got {speculate_min_use!r}")
        self.speculate_min_use = float(speculate_min_use)
        if sync_free is not None and not isinstance(sync_free, bool):
            raise ValueError(f"sync_free must be None or a bool, got {sync_free!r}")
        self.sync_free = sync_free
        if not isinstance(extrapolate, bool):
            raise ValueError(f"extrapolate must be a bool, got {extrapolate!r}")
        if extrapolate and backtracking:
            raise ValueError("extrapolate needs the weak Wolfe search (backtracking=False)")
        self.extrapolate = extrapolate
        if armijo_after is not None:
            if isinstance(armijo_after, bool) or not isinstance(armijo_after, int) or armijo_after < 1:
                raise ValueError(f"armijo_after must be None or an int >= 1, got {armijo_after!r}")
            if backtracking:
                raise ValueError("armijo_after needs the weak Wolfe search (backtracking=False)")
        self.armijo_after = armijo_after
        # decayed counts of past trials that failed sufficient decrease (a host float; a 0-d
        # tensor on the trials' device for value-only trials, see _observe) and of all past trials
        self._n_fail: Tensor | float = 0.0
        self._n_trials = 0.0
        # the failure rate the widths of the current search use, read once per search from a
        # device-side count (None: not read yet in this search)
        self._rate: float | None = None

    def search(self, prob: LineSearchProblem, d: Tensor, active: Tensor, budget: Tensor) -> LineSearchResult:
        start = prob.start
        x0, phi0, g0 = start.x, start.phi, start.gphi
        k = x0.shape[0]
        dev, dt = x0.device, x0.dtype
        s0 = _dot(g0, d)
        dnorm = d.norm(dim=1)
        with torch.no_grad():
            nexpmax = torch.clamp(torch.round(torch.log2(1e5 / dnorm)), min=10).nan_to_num(10, 10, 10).long()
        ls = _State(
            alpha=torch.zeros(k, dtype=dt, device=dev),
            beta=torch.full((k,), math.inf, dtype=dt, device=dev),
            t=self._first_steps(prob.t_init, k, dt, dev),
            nexp=torch.zeros(k, dtype=torch.long, device=dev),
            evals=torch.zeros(k, dtype=torch.int32, device=dev),
            status=torch.full((k,), LS_OK, dtype=torch.int8, device=dev),
            searching=active.clone(),
            done_ok=torch.zeros(k, dtype=torch.bool, device=dev),
            alpha_ok=torch.zeros(k, dtype=torch.bool, device=dev),
            best=tree_map(torch.clone, start),  # the returned point: lower bracket end, or the accepted trial
            last_value_trial_t=torch.zeros(k, dtype=dt, device=dev),
        )
        quiet = prob.peek is not None and prob.record is not None
        spec = min(self.speculate, max(1, int(prob.speculation))) if quiet else 1
        self._rate = None
        cap = 0  # rows of the first round: no later round evaluates more
        if prob.rounds is not None:
            return self._search_rounds(prob, ls, d, dnorm, s0, nexpmax, active, budget, prob.rounds)
        while True:
            thr = self._gate(ls, x0, d, dnorm, budget)
            rows = torch.nonzero(ls.searching).flatten()
            r = rows.numel()
            if r == 0:
                break
            cap = cap or r
            width = self._width(spec, cap // r)
            grad = not self.backtracking
            if width == 1:
                tr = ls.t[rows]
                xr = x0[rows] + tr.unsqueeze(1) * d[rows]
                trial = prob.peek(xr, rows, grad) if quiet else prob.evaluate(xr, rows, grad)
                failed, n_failed = self._consume(ls, prob, quiet, rows, tr, trial, x0, phi0, s0, d, nexpmax)
                if spec > 1:
                    self._observe(failed, n_failed)
                continue
            # the serial search's next trials if each failed sufficient decrease: bisection towards alpha
            a_r, thr_r, ev_r, bud_r = ls.alpha[rows], thr[rows], ls.evals[rows], budget[rows]
            T = [ls.t[rows]]
            valid = [torch.ones(r, dtype=torch.bool, device=dev)]
            for i in range(1, width):
                # (after a failure the search has bracketed, with alpha unchanged)
                v = valid[-1] & ((T[-1] - a_r) > thr_r) & ((ev_r + i) < bud_r)
                if self.armijo_after is not None:
                    v = v & ~self._armijo_exit(v, ev_r + i, a_r, T[-1])
                valid.append(v)
                T.append(0.5 * (a_r + T[-1]))
            Tm, Vm = torch.stack(T, dim=1), torch.stack(valid, dim=1)  # (r, width)
            pj, pi = torch.nonzero(Vm, as_tuple=True)
            pos = torch.full((r, width), -1, dtype=torch.long, device=dev)
            pos[pj, pi] = torch.arange(pj.numel(), device=dev)
            tp = Tm[pj, pi]
            trials = prob.peek(x0[rows[pj]] + tp.unsqueeze(1) * d[rows[pj]], rows[pj], grad)
            on = torch.ones(r, dtype=torch.bool, device=dev)
            for i in range(width):
                live = torch.nonzero(on & Vm[:, i]).flatten()
                if live.numel() == 0:
                    break
                sel = pos[live, i]
                failed, n_failed = self._consume(ls, prob, quiet, rows[live], Tm[live, i], tree_rows(trials, sel),
                                                 x0, phi0, s0, d, nexpmax)
                self._observe(failed, n_failed)
                on = torch.zeros_like(on).index_copy(0, live, failed)
        return self._finish(prob, ls, d, active, strict=False)

    def _gate(self, ls: _State, x0: Tensor, d: Tensor, dnorm: Tensor, budget: Tensor) -> Tensor:
        """End the searches whose bracket is below tolerance or whose budget is spent (and, with
        ``armijo_after``, those that return their lower bracket end); returns the ``(k,)``
        bracket tolerance."""
        # GRANSO's bracket test, relative to ||x0 + alpha d|| / ||d||; the ratio is floored at 1
        # so that a search through x = 0 stops at a bracket of step_tol (instead of bisecting
        # until the step underflows)
        xa_norm = (x0 + ls.alpha.unsqueeze(1) * d).norm(dim=1)
        thr = self.step_tol * torch.clamp(xa_norm / dnorm, min=1.0)
        cont = ((ls.beta - ls.alpha) > thr) & (ls.evals < budget)
        if self.armijo_after is not None:
            take_alpha = self._armijo_exit(ls.searching, ls.evals, ls.alpha, ls.beta)
            ls.done_ok = ls.done_ok | take_alpha
            ls.searching = ls.searching & ~take_alpha
        stop = ls.searching & ~cont
        ls.status = torch.where(stop, torch.where(torch.isinf(ls.beta), LS_NO_BRACKET, LS_BRACKETED).to(torch.int8),
                                ls.status)
        ls.searching = ls.searching & cont
        return thr

    def _search_rounds(self, prob: LineSearchProblem, ls: _State, d: Tensor, dnorm: Tensor, s0: Tensor,
                       nexpmax: Tensor, active: Tensor, budget: Tensor, rounds: int) -> LineSearchResult:
        """``rounds`` rounds over all k problems under masks, no host read (``LineSearchProblem.rounds``)."""
        if prob.peek is None or prob.record is None:
            raise ValueError("LineSearchProblem.rounds needs peek and record")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"LineSearchProblem.rounds must be None or an int >= 1, got {rounds!r}")
        x0, phi0 = prob.start.x, prob.start.phi
        k = x0.shape[0]
        every = torch.arange(k, device=x0.device)
        grad = not self.backtracking
        for rnd in range(rounds + 1):
            self._gate(ls, x0, d, dnorm, budget)
            if rnd == rounds:
                break
            mask = ls.searching
            tr = torch.where(mask, ls.t, 0.0)
            trial = prob.peek(x0 + tr.unsqueeze(1) * d, every, grad)
            self._consume(ls, prob, True, every, tr, trial, x0, phi0, s0, d, nexpmax, mask=mask)
        ls.status = torch.where(ls.searching, LS_CUT, ls.status).to(torch.int8)
        return self._finish(prob, ls, d, active, strict=True)

    def _finish(self, prob: LineSearchProblem, ls: _State, d: Tensor, active: Tensor,
                strict: bool) -> LineSearchResult:
        x0 = prob.start.x
        alpha, evals, status, best, done_ok = ls.alpha, ls.evals, ls.status, ls.best, ls.done_ok
        last_value_trial_t = ls.last_value_trial_t
        if self.backtracking:
            # one gradient evaluation at the accepted point, or at the last trial after a failure
            t_ret = torch.where(done_ok, alpha, last_value_trial_t)
            need = active & (evals > 0)
            if strict:  # every row evaluated, the others ignored (no host read)
                rows = torch.arange(x0.shape[0], device=x0.device)
                t_ret = torch.where(need, t_ret, 0.0)
                trial = prob.peek(x0 + t_ret.unsqueeze(1) * d, rows, True)
                assert prob.record is not None
                prob.record(trial, rows, need)
                evals = evals + need.to(evals.dtype)
                tree_put(best, rows, tree_where(need, trial, best))
                alpha = torch.where(need, t_ret, alpha)
            else:
                rows = torch.nonzero(need).flatten()
                if rows.numel():
                    xr = x0[rows] + t_ret[rows].unsqueeze(1) * d[rows]
                    trial = prob.evaluate(xr, rows, True)
                    evals = evals.index_add(0, rows, torch.ones_like(rows, dtype=torch.int32))
                    tree_put(best, rows, trial)
                    alpha = alpha.index_copy(0, rows, t_ret[rows])
            status = torch.where(active & ~done_ok & (status == LS_OK), LS_BRACKETED, status).to(torch.int8)
            status = torch.where(active & ~done_ok & (status == LS_NO_BRACKET), LS_BRACKETED, status).to(torch.int8)
        status = status.masked_fill(~active, LS_OK)
        return LineSearchResult(alpha, best, status, evals)

    def _armijo_exit(self, searching: Tensor, evals: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        """Searches that return their lower bracket end before the next trial (``armijo_after``)."""
        assert self.armijo_after is not None
        return searching & (evals >= self.armijo_after) & (alpha > 0) & torch.isfinite(beta)

    def _first_steps(self, t_init: Tensor | None, k: int, dt: torch.dtype, dev: torch.device) -> Tensor:
        """``(k,)`` first trial steps: ``t_init`` where it is finite and positive, else ``t0``."""
        t0 = torch.full((k,), self.t0, dtype=dt, device=dev)
        if t_init is None:
            return t0
        if not isinstance(t_init, Tensor) or t_init.shape != (k,) or not t_init.is_floating_point():
            got = (f"{tuple(t_init.shape)} {t_init.dtype}" if isinstance(t_init, Tensor) else type(t_init).__name__)
            raise ValueError(f"LineSearchProblem.t_init must be a floating-point tensor of shape ({k},), got {got}")
        t = t_init.to(dtype=dt, device=dev)
        return torch.where(torch.isfinite(t) & (t > 0), t, t0)

    # speculation width: a trial step is added to a problem's round only while the chance that the
    # serial search would reach it (every earlier one failing sufficient decrease) is at least
    # speculate_min_use, with the failure rate measured on this object's own past trials (outcomes
    # only: the width, and so the batch composition of every call, does not depend on timing)
    _SPEC_MIN_TRIALS = 16
    _SPEC_DECAY = 0.98

    def _observe(self, failed: Tensor, n_failed: int | None = None) -> None:
        """Record trial outcomes (``failed``: bool, failed sufficient decrease). ``n_failed``: their
        count when the host already knows it (then the count stays on the host and the width needs
        no synchronisation); None: summed on the device."""
        n = failed.numel()
        if n:
            count = failed.sum(dtype=torch.float64) if n_failed is None else float(n_failed)
            self._n_fail = self._SPEC_DECAY ** n * self._n_fail + count
            self._n_trials = self._SPEC_DECAY ** n * self._n_trials + n

    def _width(self, spec: int, room: int) -> int:
        """Trial steps per problem this round: at most ``spec`` and ``room`` (rows of the first
        round over rows searching now)."""
        limit = min(spec, room)
        if limit < 2 or self.speculate_min_use <= 0:
            return max(1, limit)
        trials = self._n_trials
        if trials < self._SPEC_MIN_TRIALS * (1 - 1e-9):
            return 1
        if isinstance(self._n_fail, Tensor):
            # a device-side count (masked round copies): read at most once per search, so a
            # search's widths use the rate from before its first speculative round
            if self._rate is None:
                self._rate = float(self._n_fail) / trials
            rate = self._rate
        else:
            rate = self._n_fail / trials
        p = min(rate, 0.999)
        w, reach = 1, p
        while w < limit and reach >= self.speculate_min_use:
            w += 1
            reach *= p
        return w

    def _consume(self, ls: _State, prob: LineSearchProblem, quiet: bool, rows: Tensor, tr: Tensor, trial: Trial,
                 x0: Tensor, phi0: Tensor, s0: Tensor, d: Tensor, nexpmax: Tensor,
                 mask: Tensor | None = None) -> tuple[Tensor, int | None]:
        """Apply one trial per problem ``rows`` (unique) at steps ``tr``; returns ``(len(rows),)``
        bool: the trial failed sufficient decrease (the search bisects towards alpha next), and
        their number when it is known on the host without a synchronisation (else None).

        Every row either is taken (accepted, or its lower bracket end moves up) or failed
        sufficient decrease, never both; so the failures number ``len(rows)`` minus the taken
        rows, which the copy of the taken trials has counted already when it is sized on the host
        (``sync_free`` off).

        ``mask``: ``rows`` are then all k problems, and only those where ``mask`` take the trial
        (the others keep their state: the rounds of ``LineSearchProblem.rounds``)."""
        old = {f: getattr(ls, f) for f in _FIELDS} if mask is not None else None
        if quiet and not self.backtracking:
            if mask is None:
                prob.record(trial, rows)
            else:
                prob.record(trial, rows, mask)  # type: ignore[call-arg]
        ls.evals = ls.evals.index_add(0, rows, torch.ones_like(rows, dtype=torch.int32))
        phi = trial.phi
        quit_ = trial.feasible & torch.isfinite(phi) & (phi <= prob.fvalquit)
        armijo_fail = ~(phi < phi0[rows] + self.c1 * tr * s0[rows])  # NaN fails
        if self.backtracking:
            curv_fail = torch.zeros_like(armijo_fail)
        else:
            gtd = _dot(trial.gphi, d[rows])
            curv_fail = ~(gtd > self.c2 * s0[rows])  # NaN fails
        ok = quit_ | (~armijo_fail & ~curv_fail)
        if self.extrapolate:
            # a Wolfe step below t0 with no failed trial yet (beta = inf) grows; a failure of
            # sufficient decrease above a Wolfe step returns that step (the lower bracket end,
            # already the search's point: the failed trial is not taken)
            grow = ok & ~quit_ & torch.isinf(ls.beta[rows]) & (tr < self.t0)
            back = armijo_fail & ~quit_ & ls.alpha_ok[rows]
            ok = (ok & ~grow) | back
        raise_alpha = ~ok & ~armijo_fail & curv_fail
        lower_beta = ~ok & armijo_fail
        take = ok | raise_alpha
        if self.extrapolate:
            take = (take & ~back) | grow
        n_failed: int | None = None
        if self.backtracking:
            # value-only trials: remember the last trial step; accepted points get a gradient later
            ls.last_value_trial_t = ls.last_value_trial_t.index_copy(0, rows, tr)
        elif mask is not None or sync_free_on(self.sync_free, rows.device):
            # every row of the round is rewritten (its old point where the trial is not taken):
            # integer indices and masks, no host sync
            tree_put(ls.best, rows, tree_where(take if mask is None else take & mask, trial, tree_rows(ls.best, rows)))
        else:
            ti = take.nonzero().squeeze(1)  # one host sync (sizes the copy), then integer gathers
            n_failed = rows.numel() - ti.numel()
            if ti.numel():
                tree_put(ls.best, rows[ti], tree_rows(trial, ti))
        ls.alpha = ls.alpha.index_copy(0, rows, torch.where(take, tr, ls.alpha[rows]))
        if self.extrapolate:
            ls.alpha_ok = ls.alpha_ok.index_copy(0, rows, torch.where(take, grow, ls.alpha_ok[rows]))
        ls.beta = ls.beta.index_copy(0, rows, torch.where(lower_beta, tr, ls.beta[rows]))
        ls.done_ok = ls.done_ok.index_copy(0, rows, ok)
        ls.searching = ls.searching.index_copy(0, rows, ~ok)
        # next step for those still searching
        a_r, b_r, ne_r = ls.alpha[rows], ls.beta[rows], ls.nexp[rows]
        bracketed = torch.isfinite(b_r)
        can_expand = ~bracketed & (ne_r < nexpmax[rows])
        t_next = torch.where(bracketed, 0.5 * (a_r + b_r), 2.0 * a_r)
        expand = can_expand & ~ok
        give_up = ~ok & ~bracketed & ~can_expand
        if self.extrapolate:  # a growing step is neither an expansion nor a failure
            t_next = torch.where(grow, torch.clamp(2.0 * tr, max=self.t0), t_next)
            expand = expand & ~grow
            give_up = give_up & ~grow
        ls.t = ls.t.index_copy(0, rows, torch.where(ok, tr, t_next))
        ls.nexp = ls.nexp.index_copy(0, rows, ne_r + expand.long())
        ls.status = ls.status.index_copy(0, rows, torch.where(give_up, LS_NO_BRACKET, ls.status[rows]).to(torch.int8))
        ls.searching = ls.searching.index_copy(0, rows, ls.searching[rows] & ~give_up)
        if old is not None:  # rows = every problem: the others keep their state
            for f, v in old.items():
                setattr(ls, f, torch.where(mask, getattr(ls, f), v))
            return lower_beta & mask, None
        return lower_beta, n_failed


# the per-problem fields of a search, replaced (never written in place) by each round
_FIELDS = ("alpha", "beta", "t", "nexp", "evals", "status", "searching", "done_ok", "alpha_ok", "last_value_trial_t")


class Backtracking(WeakWolfe):
    """Armijo backtracking (halving from t0) with value-only trials; spec 3.5."""

    name = "backtracking"

    def __init__(self, c1: float = 1e-4, t0: float = 1.0, step_tol: float = 1e-12) -> None:
        super().__init__(c1=c1, c2=max(c1, 0.5), t0=t0, step_tol=step_tol, backtracking=True)
