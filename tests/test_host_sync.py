"""Host synchronisation, counted on the CPU.

On a CUDA device, a device-to-host copy stalls the host until the queued kernels finish. The
operations that need one are visible at the dispatcher on any device: reading a scalar
(``.item()``, ``bool()``, ``int()``: ``aten._local_scalar_dense``), ``nonzero``,
``masked_select``, ``unique`` and indexing with a boolean mask (a hidden ``nonzero``). These tests
count them with :class:`ncvx_core.testing.sync.SyncCounter` so that the sync budget of the pieces that copy rows is
checked on every machine, not only under ``torch.cuda.set_sync_debug_mode`` on a GPU
(``tests/test_gpu_sync.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import ncvx_core.linesearch as L
import ncvx_core.solver as S
from ncvx_core import SolverOptions, solve
from ncvx_core.testing.sync import SyncCounter


@contextlib.contextmanager
def counted(module, name: str, per_call: list[int]) -> Iterator[None]:
    """Run every call of ``module.name`` under its own counter; append its count to ``per_call``."""
    orig = getattr(module, name)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        with SyncCounter() as c:
            out = orig(*args, **kwargs)
        per_call.append(c.n)
        return out

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, orig)


def _problem(x, idx=None):  # type: ignore[no-untyped-def]
    """Nonsmooth, constrained: min |x - 1|_1 s.t. sum(x) <= 1, x_1 >= -0.5."""
    f = (x - 1).abs().sum(1)
    ci = torch.stack([x.sum(1) - 1, -0.5 - x[:, 0]], 1)
    return f, ci, None


def test_counter_sees_the_operations_that_sync():
    x = torch.arange(6.0)
    idx = torch.arange(0, 4, 2)
    with SyncCounter() as c:
        _ = x[x > 2]  # boolean indexing
        _ = (x > 2).nonzero()
        _ = float(x.sum())
        _ = (x > 2).any().tolist()  # served without dispatch on a CPU tensor
        _ = torch.where(x > 2, torch.tensor(3.0), x)  # host number made a tensor: host-to-device copy
        _ = x[idx]  # integer indexing with a device index: no sync
        _ = torch.where(x > 2, x, 0.0)  # masks and Python scalars: no sync
        _ = x.masked_fill(x > 2, 3.0)
        _ = torch.full((), 3.0)
    assert c.n == 5


@pytest.mark.parametrize("sync_free", [False, True])
def test_record_and_line_search_copies_sync_once_per_call(sync_free):
    x0 = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rec: list[int] = []
    con: list[int] = []
    wid: list[int] = []
    orig = L.WeakWolfe._consume
    checked = []

    def consume(self, *args):  # type: ignore[no-untyped-def]
        failed, n_failed = orig(self, *args)
        checked.append((failed.clone(), n_failed))  # compared after the run (no sync here)
        return failed, n_failed

    cac: list[int] = []
    searches: list[int] = []
    L.WeakWolfe._consume = consume
    try:
        with counted(S, "_update_records", rec), counted(L.WeakWolfe, "_consume", con), \
                counted(L.WeakWolfe, "_width", wid), counted(S, "cache_insert", cac), \
                counted(L.WeakWolfe, "search", searches):
            res = solve(_problem, x0, SolverOptions(maxit=15, print_level=0, sync_free=sync_free))
    finally:
        L.WeakWolfe._consume = orig
    assert int(res.iters.max()) > 3 and rec and con and wid
    # the gradient cache: one nonzero for the points whose distance bounds straddle evaldist, none
    # when every cached point is measured (sync_free)
    assert cac and max(cac) <= (0 if sync_free else 1), cac
    # best and most-feasible records: rewritten under masks (sync_free), else one nonzero sizes the
    # copy for both records, however many fields a record has
    assert max(rec) == (0 if sync_free else 1), rec
    if sync_free:
        # consuming a round: the accepted trials are copied under a mask
        assert max(con) == 0, con
        assert all(n is None for _, n in checked)
        # the speculation width reads the device-side failure count at most once per search
        assert max(wid) <= 1 and sum(wid) <= len(searches), (wid, len(searches))
    else:
        # one nonzero sizes the copy of the accepted trials (however many fields a trial has), one
        # the records update it triggers
        assert max(con) == 2, con
        # the host-side failure count is exact: every row is either taken or failed
        assert checked and all(n == int(f.sum()) for f, n in checked)
        # so the speculation width reads failure counts kept on the host
        assert max(wid) == 0, wid


def test_sync_free_gives_the_same_solve():
    x0 = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, b = (solve(_problem, x0, SolverOptions(maxit=30, print_level=0, sync_free=v)) for v in (False, True))
    assert torch.equal(a.status, b.status) and torch.equal(a.iters, b.iters)
    for ra, rb in ((a.final, b.final), (a.best, b.best), (a.most_feasible, b.most_feasible)):
        assert torch.equal(ra.x, rb.x) and torch.equal(ra.f, rb.f)
    assert torch.equal(a.fn_evals, b.fn_evals)


def test_sites_separate_the_problem_function_from_the_solver():
    def fn(x):  # type: ignore[no-untyped-def]
        _ = x[x[:, 0] > 0]  # a boolean index in the user's function
        return _problem(x)

    x0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with SyncCounter(sites=True) as c:
        solve(fn, x0, SolverOptions(maxit=3, print_level=0))
    calls = c.sites["problem function"]
    assert calls >= 2  # the start point and at least one line-search round
    assert c.n > calls and sum(c.sites.values()) == c.n
    assert all(k == "problem function" or k.split(":")[0].endswith(".py") for k in c.sites)


def test_building_blocks_do_not_sync():
    """The pieces ``tests/test_gpu_sync.py`` runs under CUDA's sync debug mode, counted here on the
    CPU: the L-BFGS and BFGS updates and products, damping, the violation measures and the
    enumeration QP of the steering step have no host synchronisation (no scalar reads, no
    ``nonzero``, no tensors made from host numbers)."""
    from ncvx_core.hessian import BFGS, LBFGS, damp
    from ncvx_core.penalty import violation
    from ncvx_core.problem import Evaluation
    from ncvx_core.qp import BoxQP
    from ncvx_core.qp.enum import EnumQPSolver

    g = torch.Generator().manual_seed(0)
    B, n, m = 8, 50, 5
    s = torch.randn(B, n, generator=g, dtype=torch.float64)
    y = s + 0.1 * torch.randn(B, n, generator=g, dtype=torch.float64)
    V = torch.randn(B, n, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(B, dtype=torch.bool)
    mask[3] = False
    for h in (LBFGS(m), BFGS()):
        st = h.init(B, n, torch.float64, torch.device("cpu"))
        with SyncCounter() as c:
            for _ in range(m + 2):
                st, _info = h.update(st, s, y, mask)
                s, y = s.roll(1, dims=1), y.roll(1, dims=1)
            HV = h.matmul(st, V)
            hs = h.matmul(st, s.unsqueeze(2)).squeeze(2)
            damp(s, y, hs, 1e-4)
        assert c.n == 0, (type(h).__name__, c.n)
        assert torch.isfinite(HV).all()
    p, q = 3, 2
    ev = Evaluation(torch.randn(B, generator=g), torch.randn(B, p, generator=g), torch.randn(B, q, generator=g),
                    torch.randn(B, n, generator=g), torch.randn(B, p, n, generator=g),
                    torch.randn(B, q, n, generator=g))
    A = torch.randn(B, 3, 3, generator=g, dtype=torch.float64)
    qp = BoxQP(Q=A @ A.mT + 0.1 * torch.eye(3, dtype=torch.float64), q=torch.randn(B, 3, generator=g, dtype=torch.float64),
               lo=torch.zeros(B, 3, dtype=torch.float64), hi=torch.ones(B, 3, dtype=torch.float64))
    solver = EnumQPSolver()
    solver.solve(qp)  # the first call builds the face table once (one copy per device)
    with SyncCounter() as c:
        v = violation(ev, 1e-6, 1e-6)
        res = solver.solve(qp)
    assert c.n == 0, c.n
    assert v.tv.shape == (B,) and res.w.shape == (B, 3)
