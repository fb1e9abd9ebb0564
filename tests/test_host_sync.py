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
    with SyncCounter() as c:
        _ = x[x > 2]  # boolean indexing
        _ = (x > 2).nonzero()
        _ = float(x.sum())
        _ = (x > 2).any().tolist()  # served without dispatch on a CPU tensor
        _ = x[torch.tensor([0, 2])]  # integer indexing: no sync
        _ = torch.where(x > 2, x, 0.0)  # masks: no sync
    assert c.n == 4


def test_record_and_line_search_copies_sync_once_per_call():
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
    L.WeakWolfe._consume = consume
    try:
        with counted(S, "_update_records", rec), counted(L.WeakWolfe, "_consume", con), \
                counted(L.WeakWolfe, "_width", wid), counted(S, "cache_insert", cac):
            res = solve(_problem, x0, SolverOptions(maxit=15, print_level=0))
    finally:
        L.WeakWolfe._consume = orig
    assert int(res.iters.max()) > 3 and rec and con and wid
    # the host-side failure count is exact: every row is either taken or failed
    assert checked and all(n == int(f.sum()) for f, n in checked)
    # the speculation width reads failure counts kept on the host
    assert max(wid) == 0, wid
    # the gradient cache: one nonzero for the points whose distance bounds straddle evaldist
    assert cac and max(cac) <= 1, cac
    # best and most-feasible records: one nonzero for both, however many fields a record has
    assert max(rec) <= 1, rec
    # consuming a round: one nonzero to copy the accepted trials (however many fields a trial
    # has) plus the one of the records update it triggers
    assert max(con) <= 2, con


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
