"""Conformance with the reference (PyGRANSO example notebooks, spec section 10).

Each problem's reference run (row 0) must end in the reference's termination class, with the
reference's objective (trajectory problems that stop at maxit/fvalquit) or the known optimum
(problems that converge), feasible to tolerance. The same problems solved in batches (other
starting points or data sets in the same call) must give row 0 the same answer as the solo run
and reach the known optimum on every row that converges.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ncvx_core import SolverOptions, solve
from ncvx_core.testing.problems import PROBLEMS

# problems whose reference run stops at a fixed budget or threshold: compare the value reached
TRAJECTORY = {"A1_restart_demo", "A1_lbfgs", "A3_fvalquit"}
# problems whose reference run stopped short of the optimum: one-sided check against ref_f
STOPPED_SHORT = {"B3_d2"}
# every conformance run is part of `make test` (about a minute in all on a 2-core CPU)
SLOW_SOLO: set[str] = set()
SLOW_BATCH: set[str] = set()


# PyGRANSO's results on the same batched data (rows 1.. use other seeds/starts than the notebooks)
REF_ROWS = json.loads((Path(__file__).parent / "data" / "pygranso_rows.json").read_text())


def _check_row_vs_reference(P, res, b: int) -> None:
    """Rows beyond the notebook's: at least as good as PyGRANSO on the same data."""
    ref = REF_ROWS[P.name]
    tol = max(P.options.get("viol_ineq_tol", 1e-6), P.options.get("viol_eq_tol", 1e-6))
    # both runs stop on GRANSO's H-scaled stationarity test (opt_tol), which bounds the objective
    # error only loosely: allow 1e-5 relative (or the problem's own tolerance if looser)
    slack = max(P.rtol, 1e-5)
    if ref["status"][b] == 4 and int(res.status[b]) == 4 and ref["viol"][b] > tol:
        # both stopped at maxit while still infeasible (trajectory problems): the same path
        fo, fr = float(res.final.f[b]), ref["final_f"][b]
        assert abs(fo - fr) <= 1e-4 * max(1.0, abs(fr)), f"{P.name}[{b}]: final f {fo!r} vs reference {fr!r}"
        return
    if ref["viol"][b] <= tol:
        assert bool(res.best.found[b]) and float(res.best.violation[b]) <= tol, (
            f"{P.name}[{b}]: reference found a feasible point, ours has violation {float(res.best.violation[b]):.2e}")
    fo, fr = float(res.best.f[b]), ref["best_f"][b]
    assert fo <= fr + slack * max(1.0, abs(fr)), f"{P.name}[{b}]: best f {fo!r} worse than the reference {fr!r}"
    fs = _f_star_row(P, b)
    if fs is not None:
        assert fo >= fs - max(slack * abs(fs), 10 * tol * max(1.0, abs(fs))), f"{P.name}[{b}]: f {fo!r} below optimum {fs!r}"


def _solve(P, **extra):
    return solve(P.fn, P.x0, SolverOptions(print_level=0, **{**P.options, **extra}))


def _f_star_row(P, b: int) -> float | None:
    fs = P.f_star
    if fs is None:
        return None
    if isinstance(fs, torch.Tensor):
        return float(fs.reshape(-1)[b]) if fs.dim() else float(fs)
    return float(fs)


# B2 is smooth: its reference run stopped with code 0; ours may end one step later with code 6 (a
# line-search bracket at the rounding level, at a feasible point) depending on the BLAS threading.
# Either way the value must match f* (checked below, rtol 1e-6).
ROUNDING_END = {"B2"}


def _codes(P) -> set[int]:
    codes = P.ref_code if isinstance(P.ref_code, set) else {P.ref_code}
    return codes | {6} if P.name in ROUNDING_END else codes


def _check_row(P, res, b: int, *, solo: bool) -> None:
    name = P.name
    code = int(res.status[b])
    if solo or b == 0:
        assert code in _codes(P), f"{name}[{b}]: status {code} not in reference class {_codes(P)}"
    if name in TRAJECTORY:
        if b == 0:
            ref = P.ref_f
            f = float(res.final.f[b])
            assert abs(f - ref) <= 1e-6 * abs(ref), f"{name}: final f {f!r} vs reference {ref!r}"
        return
    if code not in (0, 1, 2, 6):
        pytest.fail(f"{name}[{b}]: did not converge (status {code}: {res.messages[b]})")
    f = float(res.best.f[b])
    viol = float(res.best.violation[b])
    tol = max(P.options.get("viol_ineq_tol", 1e-6), P.options.get("viol_eq_tol", 1e-6))
    assert bool(res.best.found[b]), f"{name}[{b}]: no feasible point recorded"
    assert viol <= tol, f"{name}[{b}]: best violation {viol:.2e} > {tol:.0e}"
    fs = _f_star_row(P, b)
    if name in STOPPED_SHORT and b == 0:
        # the reference stopped above the optimum: reach at least its value
        assert f <= P.ref_f + P.rtol * abs(P.ref_f), f"{name}: f {f!r} worse than reference {P.ref_f!r}"
        if fs is not None:
            assert f >= fs - 1e-6 * abs(fs) - tol * 10, f"{name}: f {f!r} below the optimum {fs!r}"
        return
    if name == "A1_random_x0":
        # The reference's random start is not reproducible, so only the optimum can be compared. The
        # method stops at points that are stationary for gradients sampled within evaldist (1e-4) of
        # them; across A1's kink |x1^2 - x2| (slope 8) that leaves up to about 8 * 1e-4 absolute, i.e.
        # 1e-2 relative, above f*. (With evaldist 1e-6 this start reaches f* to 4e-6.)
        assert fs - 1e-9 <= f <= fs * (1 + 1e-2), f"{name}[{b}]: f {f!r} vs optimum {fs!r}"
        return
    if fs is not None:
        # a point feasible to tolerance may sit marginally below the optimum
        slack = 10 * tol * max(1.0, abs(fs))
        assert f >= fs - max(P.rtol * abs(fs), slack), f"{name}[{b}]: f {f!r} below optimum {fs!r}"
        if name in STOPPED_SHORT:
            assert f <= fs + 5e-3 * abs(fs), f"{name}[{b}]: f {f!r} far from optimum {fs!r}"
        else:
            assert f <= fs + P.rtol * abs(fs) + 1e-12, f"{name}[{b}]: f {f!r} vs optimum {fs!r} (rtol {P.rtol})"
    elif P.ref_f is not None and b == 0:
        assert abs(f - P.ref_f) <= P.rtol * abs(P.ref_f), f"{name}: f {f!r} vs reference {P.ref_f!r}"


def _params(slow: set[str]):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in PROBLEMS]


@pytest.mark.parametrize("name", _params(SLOW_SOLO))
def test_reference_run(name: str) -> None:
    P = PROBLEMS[name](batch=1)
    res = _solve(P)
    _check_row(P, res, 0, solo=True)
    if P.ref_iters is not None and name not in ("A1", "A1_random_x0") and name not in TRAJECTORY:
        # the spec's acceptance: iteration counts within +-50 % (A1's builds already diverge 9 vs 17)
        it = int(res.iters[0])
        assert 0.5 * P.ref_iters <= it <= 1.5 * P.ref_iters, f"{name}: {it} iterations vs reference {P.ref_iters}"


@pytest.mark.parametrize("name", _params(SLOW_BATCH))
def test_batched_run(name: str) -> None:
    B = 3
    P = PROBLEMS[name](batch=B)
    res = _solve(P)
    solo = _solve(PROBLEMS[name](batch=1))
    # row 0 answers as when solved alone
    assert int(res.status[0]) == int(solo.status[0]), f"{name}: batched status {res.status.tolist()} vs solo {solo.status.tolist()}"
    assert int(res.iters[0]) == int(solo.iters[0])
    for field in ("final", "best"):
        a, b = getattr(res, field).f[0], getattr(solo, field).f[0]
        assert math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12), f"{name}.{field}: {float(a)!r} vs {float(b)!r}"
    _check_row(P, res, 0, solo=False)
    for b in range(1, B):
        _check_row_vs_reference(P, res, b)


def test_a1_golden_trace() -> None:
    """Spec section 10: the A1 rows 0-8 printed identically by two reference builds."""
    P = PROBLEMS["A1"](batch=1)
    seen: dict[int, tuple[float, float, int, float]] = {}

    def log(info):
        it = int(info.iteration[0])
        seen[it] = (float(info.phi[0]), float(info.alpha[0]), int(info.ls_evals[0]), float(info.stat[0]))
        return None

    solve(P.fn, P.x0, SolverOptions(print_level=0, halt_log_fn=log, maxit=8, **P.options))
    phis = [1.41421356237, 0.70773811042, 0.25401310554, 0.21478744238, 0.21422378595, 0.15330884270,
            0.14804462353, 0.10856024489, 0.10482595154]
    ts = [0, 1.5, 0.25, 0.25, 1.0, 1.0, 0.5, 4.0, 1.0]
    evals = [1, 3, 3, 3, 1, 1, 2, 3, 1]
    for k in range(9):
        phi, t, ev, _ = seen[k]
        assert abs(phi - phis[k]) <= 1e-10, f"iteration {k}: phi {phi!r} vs {phis[k]!r}"
        assert t == ts[k], f"iteration {k}: t {t} vs {ts[k]}"
        assert ev == evals[k], f"iteration {k}: evals {ev} vs {evals[k]}"
    assert abs(seen[0][3] - 0.579471) < 1e-6
    assert abs(seen[1][3] - 10.07366) < 1e-4
    assert abs(seen[2][3] - 0.198885) < 1e-6
    assert abs(seen[8][3] - 0.003211) < 1e-6
