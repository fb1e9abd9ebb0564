"""Host synchronisation on a CUDA device (skipped without one).

The per-iteration building blocks that are written sync-free are checked under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any device-to-host copy. With the
default options a whole iteration still synchronises (active-set compaction, QP working sets,
line-search rounds; see docs/batching.md); under ``strict_sync=True`` it does not, which the last
test checks (``tests/test_strict_sync.py`` counts the same on the CPU).
"""

import contextlib

import pytest
import torch

from ncvx_core import SolverOptions, solve
from ncvx_core.hessian import LBFGS, damp
from ncvx_core.penalty import violation
from ncvx_core.problem import Evaluation

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = [pytest.mark.gpu, cuda]


@contextlib.contextmanager
def no_sync():
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def test_lbfgs_product_and_update_do_not_sync():
    B, n, m = 8, 50, 5
    g = torch.Generator(device="cuda").manual_seed(0)
    h = LBFGS(m)
    st = h.init(B, n, torch.float64, torch.device("cuda"))
    s = torch.randn(B, n, generator=g, device="cuda", dtype=torch.float64)
    y = s + 0.1 * torch.randn(B, n, generator=g, device="cuda", dtype=torch.float64)
    mask = torch.ones(B, dtype=torch.bool, device="cuda")
    with no_sync():
        for _ in range(m + 2):
            st, _info = h.update(st, s, y, mask)
            s = s.roll(1, dims=1)
            y = y.roll(1, dims=1)
        HV = h.matmul(st, torch.randn(B, n, 3, generator=g, device="cuda", dtype=torch.float64))
        hs = h.matmul(st, s.unsqueeze(2)).squeeze(2)
        damp(s, y, hs, 1e-4)
    torch.cuda.synchronize()
    assert torch.isfinite(HV).all()


def test_violation_does_not_sync():
    B, n, p, q = 8, 6, 3, 2
    ev = Evaluation(torch.randn(B, device="cuda"), torch.randn(B, p, device="cuda"), torch.randn(B, q, device="cuda"),
                    torch.randn(B, n, device="cuda"), torch.randn(B, p, n, device="cuda"), torch.randn(B, q, n, device="cuda"))
    with no_sync():
        v = violation(ev, 1e-6, 1e-6)
    assert v.tv.shape == (B,)


def test_line_search_rounds_and_records_do_not_sync():
    """Consuming a line-search round (copying the taken trials) and updating the best /
    most-feasible records run under the sync debug mode inside a whole CUDA solve (``sync_free``
    defaults to True on a CUDA device)."""
    import ncvx_core.linesearch as L
    import ncvx_core.solver as S

    calls = {"consume": 0, "records": 0}
    orig_consume, orig_records = L.WeakWolfe._consume, S._update_records

    def consume(self, *args):  # type: ignore[no-untyped-def]
        calls["consume"] += 1
        with no_sync():
            return orig_consume(self, *args)

    def records(*args):  # type: ignore[no-untyped-def]
        calls["records"] += 1
        with no_sync():
            return orig_records(*args)

    def fn(x):  # a nonsmooth Rosenbrock chain with two inequalities: no start converges in 10 iterations
        f = (8 * (x[:, :-1] ** 2 - x[:, 1:]).abs() + (1 - x[:, :-1]) ** 2).sum(1)
        return f, torch.stack([x.sum(1) - 1, -0.5 - x[:, 0]], 1), None

    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cuda()
    L.WeakWolfe._consume, S._update_records = consume, records
    try:
        res = solve(fn, x0, SolverOptions(maxit=10, print_level=0))
    finally:
        L.WeakWolfe._consume, S._update_records = orig_consume, orig_records
    # every problem runs all 10 iterations (on the CPU: 52 rounds consumed, status 4 for all six)
    assert int(res.iters.min()) == 10
    assert calls["consume"] >= 10 and calls["records"] >= 10


@pytest.mark.parametrize("mem", [0, 4])
def test_whole_iteration_does_not_sync_under_strict_sync(mem):
    """``strict_sync=True``: every pass after the first read runs under the sync debug mode in
    "error"; only the pass's one read (``_Solver._strict_read``) may synchronise. The problem
    steers with two inequalities (face enumeration) and five (interior point, fixed iterations
    and masked polish), with full and limited-memory BFGS."""
    import ncvx_core.solver as S

    def two(x):
        f = (8 * (x[:, :-1] ** 2 - x[:, 1:]).abs() + (1 - x[:, :-1]) ** 2).sum(1)
        return f, torch.stack([x.sum(1) - 1, -0.5 - x[:, 0]], 1), None

    def five(x):
        f = (x - 1).abs().sum(1)
        ci = torch.stack([x.sum(1) - 1, -0.5 - x[:, 0], x[:, 1] - 0.3, x[:, 0] + x[:, 2] - 0.2, -x[:, 3] - 2], 1)
        return f, ci, None

    steps = {"n": 0}
    orig_step = S._Solver._step

    def step(self, *args):  # type: ignore[no-untyped-def]
        steps["n"] += 1
        with no_sync():
            return orig_step(self, *args)

    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cuda()
    opts = SolverOptions(maxit=10, print_level=0, strict_sync=True, limited_mem_size=mem, opt_tol=1e-12)
    for fn in (two, five):
        solve(fn, x0, opts)  # device constants made once, outside the checked passes
        S._Solver._step = step
        try:
            res = solve(fn, x0, opts)
        finally:
            S._Solver._step = orig_step
        torch.cuda.synchronize()
        assert int(res.iters.max()) >= 3 and steps["n"] >= int(res.iters.max())
