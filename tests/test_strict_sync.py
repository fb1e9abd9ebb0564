"""``strict_sync``: at most one host read per solver pass, counted on the CPU.

Under ``strict_sync=True`` every step of a pass works on the pass's running problems under masks:
line-search rounds and interior-point iterations come in numbers the host chose from the
previous pass's one read (``_Solver._strict_read``). These tests count the operations that would
synchronise on a CUDA device (:class:`ncvx_core.testing.sync.SyncCounter`), check that the
building blocks give the answers of their host-reading forms, and that whole solves end where the
default solves end (``tests/test_gpu_sync.py`` runs iterations under CUDA's sync debug mode).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_linesearch import DT, KINDS, QuietRecorder, _x0, batches, make_toy, quiet_setup

import ncvx_core.solver as S
from ncvx_core import SolverOptions, solve
from ncvx_core.linesearch import LS_CUT, WeakWolfe
from ncvx_core.qp import BoxQP, QPStatus
from ncvx_core.qp.ipm import IPMQPSolver
from ncvx_core.testing import problems as CP
from ncvx_core.testing.sync import SyncCounter


def _two_ineq(x, idx=None):  # type: ignore[no-untyped-def]
    """Nonsmooth Rosenbrock chain, two inequalities (steering by face enumeration)."""
    f = (8 * (x[:, :-1] ** 2 - x[:, 1:]).abs() + (1 - x[:, :-1]) ** 2).sum(1)
    return f, torch.stack([x.sum(1) - 1, -0.5 - x[:, 0]], 1), None


def _five_ineq(x, idx=None):  # type: ignore[no-untyped-def]
    """l1 distance to 1 under five inequalities (steering QPs of 5 multipliers: interior point)."""
    f = (x - 1).abs().sum(1)
    ci = torch.stack([x.sum(1) - 1, -0.5 - x[:, 0], x[:, 1] - 0.3, x[:, 0] + x[:, 2] - 0.2, -x[:, 3] - 2], 1)
    return f, ci, None


def _unconstrained(x, idx=None):  # type: ignore[no-untyped-def]
    return (x - 0.5).abs().sum(1) + 0.1 * (x ** 2).sum(1), None, None


def _count(fn, x0, **opts):  # type: ignore[no-untyped-def]
    passes = [0]
    orig = S._Solver._step

    def step(self, *args):  # type: ignore[no-untyped-def]
        passes[0] += 1
        return orig(self, *args)

    S._Solver._step = step
    try:
        with SyncCounter(sites=True) as c:
            res = solve(fn, x0, SolverOptions(print_level=0, strict_sync=True, **opts))
    finally:
        S._Solver._step = orig
    return res, passes[0], c.sites


@pytest.mark.parametrize("fn", [_two_ineq, _five_ineq, _unconstrained])
@pytest.mark.parametrize("mem", [0, 4])
def test_strict_sync_reads_the_host_once_per_pass(fn, mem):
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solve(fn, x0, SolverOptions(print_level=0, strict_sync=True, maxit=2))  # device constants made once
    runs = [_count(fn, x0, maxit=m, limited_mem_size=mem, opt_tol=1e-12) for m in (3, 12)]
    for res, passes, sites in runs:
        assert passes >= int(res.iters.max()) >= 3
        # one read per pass, and one that finds no problem running
        assert sites["solver.py:_strict_read"] == passes + 1, (passes, sites)
    # everything else is the set-up before the first pass: the same whatever the iteration count
    rest = [{k: v for k, v in s.items() if k not in ("problem function", "solver.py:_strict_read")} for _, _, s in runs]
    assert rest[0] == rest[1], rest
    assert set(rest[1]) <= {"solver.py:__init__", "problem.py:check_start"}, rest[1]
    assert runs[1][1] > runs[0][1]


@pytest.mark.parametrize("make", [CP.make_A1, CP.make_B1, CP.make_B3_d1, CP.make_A1_lbfgs])
def test_strict_sync_ends_where_the_default_solve_ends(make):
    cp = make(batch=6)
    out = [solve(cp.fn, cp.x0, SolverOptions(**{**cp.options, "print_level": 0, "strict_sync": v}))
           for v in (False, True)]
    a, b = out
    assert torch.equal(a.status, b.status)
    assert torch.equal(a.best.feasible, b.best.feasible)
    torch.testing.assert_close(b.best.f, a.best.f, rtol=1e-6, atol=1e-9)


def test_strict_sync_needs_masks():
    from ncvx_core.errors import OptionError

    with pytest.raises(OptionError, match="strict_sync"):
        SolverOptions(strict_sync=True, sync_free=False)
    with pytest.raises(OptionError, match="strict_sync"):
        SolverOptions(strict_sync=1)


# ----------------------------------------------------------------------------------------------
def _stationarity_shaped(B: int, L: int, seed: int) -> BoxQP:
    """Simplex-constrained QPs like the termination QP: min 1/2 w'Qw s.t. w >= 0, sum w = 1."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(B, L, 7, generator=g, dtype=torch.float64)
    Q = G @ G.mT
    return BoxQP(Q=Q, q=torch.zeros(B, L, dtype=torch.float64), lo=torch.zeros(B, L, dtype=torch.float64),
                 hi=torch.full((B, L), math.inf, dtype=torch.float64), eq_mask=torch.ones(B, L, dtype=torch.bool),
                 r=torch.ones(B, dtype=torch.float64))


def _fixed_solve(qp: BoxQP, fixed: IPMQPSolver, ref: IPMQPSolver, atol: float):  # type: ignore[no-untyped-def]
    """Solve with ``fixed`` (after a warm-up call) under the counter: no read, every problem
    SOLVED, the answer of the adaptive ``ref`` within ``atol``; returns the result and usage."""
    fixed.solve(qp)  # device constants
    fixed.take_usage()
    with SyncCounter() as c:
        res = fixed.solve(qp)
        usage = fixed.take_usage()
    assert c.n == 0
    assert bool((res.status == QPStatus.SOLVED).all())
    torch.testing.assert_close(res.w, ref.solve(qp).w, rtol=0, atol=atol)
    return res, usage


def test_fixed_iteration_ipm_matches_the_adaptive_one_without_a_read():
    qp = _stationarity_shaped(16, 12, 0)
    fixed = IPMQPSolver(fixed_iters=60, polish=False)  # the IPM alone (no polish)
    res, usage = _fixed_solve(qp, fixed, IPMQPSolver(polish=False), 1e-8)
    most, failed, rounds = usage.tolist()
    assert failed == 0 and 1 <= most <= 60 and most == int(res.iters.max())
    assert rounds == 0  # no polish
    assert fixed.take_usage() is None  # taken: reset
    # too few iterations: reported as not converged, never as SOLVED by the IPM's own test
    short = IPMQPSolver(fixed_iters=2, polish=False)
    res2 = short.solve(qp)
    most2, failed2, _ = short.take_usage().tolist()
    assert failed2 > 0 and bool((res2.iters <= 2).all())


def test_fixed_iters_is_checked():
    with pytest.raises(ValueError, match="fixed_iters"):
        IPMQPSolver(fixed_iters=0)


# ----------------------------------------------------------------------------------------------
class MaskedRecorder(QuietRecorder):
    """``record(trial, rows, mask)`` of the fixed-round search: only the masked rows count."""

    def record(self, trial, rows, mask=None):  # type: ignore[no-untyped-def, override]
        if mask is not None:
            keep = torch.nonzero(mask).flatten()
            trial, rows = trial._replace(x=trial.x[keep]), rows[keep]
        super().record(trial, rows)


@settings(max_examples=60, deadline=None)
@given(data=batches(kinds=KINDS + ["linear"], min_B=1, max_B=8), rounds=st.integers(1, 6),
       t0=st.sampled_from([1.0, 16.0, 1024.0]),
       budgets=st.lists(st.sampled_from([1, 2, 3, 7, math.inf]), min_size=8, max_size=8),
       extrapolate=st.booleans(), armijo=st.sampled_from([None, 1, 2, 4]))
def test_fixed_rounds_give_the_serial_search_or_a_cut(data, rounds, t0, budgets, extrapolate, armijo):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, kinds, x0)
    budget = torch.tensor(budgets[:B], dtype=DT)
    out = {}
    for r in (None, rounds, 200):
        rec = MaskedRecorder(toy)
        _, prob, d = quiet_setup(toy, x0, active, budget, -math.inf, speculation=1)
        prob.peek, prob.record, prob.evaluate = rec, rec.record, rec.evaluate
        prob.rounds = r
        ls = WeakWolfe(t0=t0, extrapolate=extrapolate, armijo_after=armijo)
        out[r] = (ls.search(prob, d, active, budget), rec)
    (ser, rec_s), (cut, rec_c), (big, rec_b) = out[None], out[rounds], out[200]
    # enough rounds: the serial search, record for record
    assert torch.equal(ser.t, big.t) and torch.equal(ser.status, big.status) and torch.equal(ser.evals, big.evals)
    s_pts, b_pts, c_pts = rec_s.per_problem(B), rec_b.per_problem(B), rec_c.per_problem(B)
    for b in range(B):
        assert len(s_pts[b]) == len(b_pts[b]) and all(torch.equal(p, q) for p, q in zip(s_pts[b], b_pts[b]))
    # every round evaluates every problem, in one call
    assert all(rows.numel() == B for _, rows, _ in rec_c.calls) and len(rec_c.calls) == rounds
    # a search the rounds cover ends as the serial one; the others are cut after `rounds` trials,
    # having recorded the serial search's first trials
    done = ser.evals <= rounds
    assert torch.equal(cut.status[done], ser.status[done]) and torch.equal(cut.t[done], ser.t[done])
    assert torch.equal(cut.evals[done], ser.evals[done])
    assert bool((cut.status[~done] == LS_CUT).all()) and bool((cut.evals[~done] == rounds).all())
    for b in range(B):
        assert len(c_pts[b]) == min(len(s_pts[b]), rounds)
        assert all(torch.equal(p, q) for p, q in zip(c_pts[b], s_pts[b]))


def test_strict_sync_steering_by_interior_point_ends_like_the_default():
    """Five inequalities: the steering QPs go to the interior-point solver, whose fixed-iteration
    form keeps the polish (under masks), so the steering directions stay exact at the kinks."""
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = (solve(_five_ineq, x0, SolverOptions(print_level=0, maxit=12, opt_tol=1e-12, strict_sync=v))
            for v in (False, True))
    assert bool((a.status == 0).all()) and bool((b.status == 0).all())
    torch.testing.assert_close(b.best.f, a.best.f, rtol=1e-12, atol=1e-12)


def test_masked_polish_gives_the_polished_answer_without_a_read():
    qp = _stationarity_shaped(16, 12, 1)
    fixed = IPMQPSolver(fixed_iters=60)
    res, usage = _fixed_solve(qp, fixed, IPMQPSolver(), 1e-12)
    rounds = int(usage[2])
    assert 1 <= rounds <= fixed.polish_rounds
    # as many rounds as the problems used give the same answer
    fixed.fixed_polish_rounds = rounds
    torch.testing.assert_close(fixed.solve(qp).w, res.w, rtol=0, atol=0)


@pytest.mark.parametrize("fn", [_two_ineq, _five_ineq])
def test_no_step_of_a_pass_synchronises(fn):
    """The CPU count of what ``tests/test_gpu_sync.py`` checks under CUDA's sync debug mode: no
    operation inside a pass's step (directions, line search, stationarity, BFGS update,
    termination tests) would synchronise."""
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = SolverOptions(maxit=10, print_level=0, strict_sync=True, opt_tol=1e-12)
    solve(fn, x0, opts)  # device constants made once
    counts: list[int] = []
    orig = S._Solver._step

    def step(self, *args):  # type: ignore[no-untyped-def]
        with SyncCounter() as c:
            out = orig(self, *args)
        counts.append(c.n)
        return out

    S._Solver._step = step
    try:
        res = solve(fn, x0, opts)
    finally:
        S._Solver._step = orig
    assert len(counts) >= int(res.iters.max()) >= 3
    assert max(counts) == 0, counts


def test_a_nan_in_one_problem_leaves_the_others_alone_under_strict_sync():
    """Masked rounds evaluate every running row; a problem whose function turns NaN away from its
    start ends on its own, and the other problems' iterates are those of a clean run."""
    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def clean(x, idx=None):  # type: ignore[no-untyped-def]
        return (x - 1).abs().sum(1), torch.stack([x.sum(1) - 1, -0.5 - x[:, 0]], 1), None

    def nan_in_2(x, idx=None):  # type: ignore[no-untyped-def]
        f, ci, _ = clean(x)
        rows = torch.arange(x.shape[0]) if idx is None else idx
        bad = (rows == 2) & ((x - x0[2]).norm(dim=1) > 0.05)
        return torch.where(bad, math.nan, f), ci, None

    opts = SolverOptions(print_level=0, maxit=40, strict_sync=True)
    a, b = solve(nan_in_2, x0, opts), solve(clean, x0, opts)
    keep = torch.tensor([0, 1, 3, 4])
    assert torch.equal(a.best.x[keep], b.best.x[keep]) and torch.equal(a.status[keep], b.status[keep])
    assert bool(torch.isfinite(a.best.f).all()) and int(a.status[2]) != 0
    assert float((a.best.x[2] - x0[2]).norm()) <= 0.05 + 1e-12  # never left the finite region


def test_strict_building_blocks_reject_bad_arguments():
    from ncvx_core.stationarity import cache_insert, init_cache, stationarity_qp

    g = torch.Generator().manual_seed(0)
    B, n = 3, 4
    x0 = torch.randn(B, n, generator=g, dtype=torch.float64)
    toy = make_toy(g, B, n, ["quad"] * B, x0)
    for bad in (0, 1.5, True, "2"):
        rec = MaskedRecorder(toy)
        _, prob, d = quiet_setup(toy, x0, torch.ones(B, dtype=torch.bool), torch.full((B,), math.inf, dtype=DT),
                                 -math.inf, speculation=1)
        prob.peek, prob.record, prob.rounds = rec, rec.record, bad
        with pytest.raises(ValueError, match="LineSearchProblem.rounds"):
            WeakWolfe().search(prob, d, torch.ones(B, dtype=torch.bool), torch.full((B,), math.inf, dtype=DT))
    cache = init_cache(B, 5, n, 0, 0, torch.float64, torch.device("cpu"))
    rows = torch.arange(B)
    empty = torch.zeros(B, 0, n, dtype=torch.float64)
    for bad in (torch.ones(B), torch.ones(B + 1, dtype=torch.bool), [True] * B):
        with pytest.raises(ValueError, match="mask"):
            cache_insert(cache, rows, x0, x0, empty, empty, 1e-4, exact=True, mask=bad)
    nb = cache_insert(cache, rows, x0, x0, empty, empty, 1e-4, exact=True)
    ci = torch.zeros(B, 0, dtype=torch.float64)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="size"):
            stationarity_qp(lambda V, r=None: V, cache, rows, nb, ci, ci, torch.ones(B, dtype=torch.float64),
                            qp=IPMQPSolver(), strict=True, size=bad)
