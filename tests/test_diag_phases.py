"""benchmarks/diag_phases.py: the instrumentation times the solver's phases without changing the
solve, accounts for no more time than the solve took, and restores every wrapped method."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import diag_phases  # noqa: E402
from common import SyntheticProblem  # noqa: E402

import ncvx_core.solver as solver_mod  # noqa: E402
from ncvx_core import SolverOptions, solve  # noqa: E402
from ncvx_core.linesearch import WeakWolfe  # noqa: E402
from ncvx_core.qp import IPMQPSolver  # noqa: E402


def test_instrumented_solve_is_the_same_solve_and_its_phases_add_up():
    P = SyntheticProblem(6, 5, torch.device("cpu"), torch.float64, seed=3)
    opts = dict(maxit=30, print_level=0, ngrad=6)
    plain = solve(P, P.x0(), SolverOptions(**opts))
    originals = (solver_mod._Solver._directions, WeakWolfe.search, IPMQPSolver.solve, solver_mod.stationarity_qp)
    rec = diag_phases.Recorder()
    with diag_phases.instrumented(rec, P) as wrapped:
        res = solve(wrapped, P.x0(), SolverOptions(**opts))
        fn_time = wrapped.total
    assert (solver_mod._Solver._directions, WeakWolfe.search, IPMQPSolver.solve,
            solver_mod.stationarity_qp) == originals
    assert torch.equal(res.final.x, plain.final.x)
    assert torch.equal(res.iters, plain.iters) and torch.equal(res.status, plain.status)
    t = rec.time
    for phase in ("directions", "line search", "stationarity", "H update"):
        assert t[phase] > 0, phase
    assert t["termination QPs"] <= t["stationarity"]
    assert 0 < fn_time
    # every stationarity QP with more than one sample goes to the interior-point solver; its
    # problems are counted per call
    ipm = rec.qp["ipm"]
    assert ipm["calls"] >= 1 and ipm["problems"] >= ipm["calls"]
    assert ipm["call_iters"] <= ipm["iters"]  # the largest per call <= the sum per call


def test_run_config_row_accounts_for_no_more_than_the_solve():
    P = SyntheticProblem(4, 5, torch.device("cpu"), torch.float64, seed=1)
    row = diag_phases.run_config("synthetic", P, P.x0(), dict(maxit=10, print_level=0, ngrad=6))
    label, B, total, directions, ls, fn, stat, tqp, upd, other = row[:10]
    assert (label, B) == ("synthetic", 4)
    assert other >= 0 and directions + ls + stat + upd <= total
    assert tqp <= stat and fn <= total
