"""Optional cross-check against PyGRANSO (pip `pygranso`; AGPL; test-only extra; skipped when absent).

Run it in an environment with the reference installed: `make test-reference`.
"""

from __future__ import annotations

import pytest

from ncvx_core import SolverOptions, solve
from ncvx_core.testing import reference
from ncvx_core.testing.problems import PROBLEMS

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not reference.available(), reason="PyGRANSO is not installed (pip install pygranso 'numpy<2' osqp scipy)"),
]

# termination classes that count as the same outcome: converged, or stopped at a feasible bracket
SAME_CLASS = [{0, 1, 2, 6}, {4}, {5}, {7, 8, 9}]


def _cls(code: int) -> int:
    return next(i for i, c in enumerate(SAME_CLASS) if code in c)


@pytest.mark.parametrize("name", ["A1", "A1_restart_demo", "B1", "B3_d1", "C1", "A1_lbfgs"])
def test_matches_reference(name: str) -> None:
    P = PROBLEMS[name](batch=2)
    ours = solve(P.fn, P.x0, SolverOptions(print_level=0, **P.options))
    ref = reference.solve_reference(P.fn, P.x0, P.options)
    for b in range(P.batch):
        assert _cls(int(ours.status[b])) == _cls(int(ref.status[b])), (name, b, ours.status.tolist(), ref.status.tolist())
        if int(ref.status[b]) == 4:
            # stopped at maxit: both runs follow the same path, so the values agree
            fo, fr = float(ours.final.f[b]), float(ref.final_f[b])
            assert abs(fo - fr) <= 1e-4 * max(1.0, abs(fr)), (name, b, fo, fr)
        else:
            # converged: ours is feasible and at least as good (both are local solutions; the
            # reference's loose QP answers can leave it above ours)
            fo, fr = float(ours.best.f[b]), float(ref.best_f[b])
            assert float(ours.best.violation[b]) <= 1e-6
            assert fo <= fr + 1e-4 * max(1.0, abs(fr)), (name, b, fo, fr)
