"""The memory planner (``ncvx_core.memory.plan_memory``) and its use by the solver: full BFGS
switches to limited memory, the gradient cache shrinks and the stationarity QP is chunked when
the estimate exceeds the budget; the choice is logged and can be fixed by options."""

from __future__ import annotations

import logging

import pytest
import torch

from ncvx_core import BFGSState, LBFGSState, SolverOptions, solve
from ncvx_core.memory import plan_memory

DT = torch.float64
CPU = torch.device("cpu")
MB = 2**20


def _plan(B: int, n: int, budget: float, **kw):
    args = dict(limited_mem_size=0, ngrad=None, memory_limit=budget)
    args.update(kw)
    return plan_memory(B, n, 1, 0, DT, CPU, **args)


def test_a_problem_that_fits_is_left_alone():
    plan = _plan(8, 100, 1e9)
    assert (plan.limited_mem_size, plan.ngrad, plan.chunk, plan.reasons) == (0, 100, 8, [])
    assert plan.estimate <= plan.budget


def test_full_bfgs_switches_to_limited_memory_cache_shrinks_and_qp_is_chunked(caplog):
    # B = 8, n = 1000: H needs 8 * 1e6 * 8 B = 61 MiB (in place on the CPU), more than a quarter of 40 MiB
    with caplog.at_level(logging.WARNING, logger="ncvx_core"):
        plan = _plan(8, 1000, 40 * MB)
    assert plan.limited_mem_size == 50  # 100 pairs (12.2 MiB) > 10 MiB, 50 pairs (6.1 MiB) fit
    assert 8 * 2 * plan.limited_mem_size * 1000 * 8 <= 0.25 * plan.budget
    assert plan.ngrad == 50  # the cache of 100 samples (18.3 MiB) > 0.3 x budget; 50 fit
    assert 8 * plan.ngrad * 1000 * 3 * 8 <= 0.3 * plan.budget
    assert 1 <= plan.chunk < 8
    assert plan.estimate <= plan.budget
    text = " ".join(plan.reasons)
    assert "full BFGS needs" in text and "ngrad=50" in text and "chunks of" in text
    assert sum("memory:" in r.getMessage() for r in caplog.records) == len(plan.reasons)


def test_options_fix_the_choice():
    assert _plan(8, 1000, 40 * MB, auto=False).limited_mem_size == 0  # auto_memory=False: nothing changes
    assert _plan(8, 1000, 40 * MB, auto=False).reasons == []
    fixed = _plan(8, 1000, 40 * MB, fixed_hessian=True)  # a hessian object or H0 given: storage kept
    assert fixed.limited_mem_size == 0
    assert _plan(8, 1000, 40 * MB, ngrad=100).ngrad == 100  # an explicit ngrad is kept


def test_the_copying_update_counts_a_second_matrix():
    """Below the in-place dimension the update writes a new (B, n, n) matrix: twice the memory of
    H; in place (n >= 256 on the CPU) once. Compared with one L-BFGS pair (2 n numbers)."""
    for n, copies in ((200, 2), (256, 1)):
        full = _plan(64, n, 1e12).estimate
        one_pair = _plan(64, n, 1e12, limited_mem_size=1).estimate
        assert full - one_pair == 64 * (copies * n * n - 2 * n) * 8


def test_imagenet_sized_batch_fits_24_gib():
    """n = 150528 (3 x 224 x 224), B = 32, one constraint, with 60 % of a 24 GiB machine."""
    plan = _plan(32, 150528, 0.6 * 24 * 2**30)
    assert plan.limited_mem_size > 0
    assert plan.estimate <= plan.budget


def _quad(C):
    def fn(x, idx):
        c = C[idx]
        return 0.5 * ((x - c) ** 2).sum(1) + (x - c).abs().sum(1), (x.sum(1, keepdim=True) - 1.0), None

    return fn


@pytest.mark.parametrize("auto", [True, False])
def test_solver_follows_the_plan(auto, caplog):
    g = torch.Generator().manual_seed(0)
    C = torch.randn(3, 300, generator=g, dtype=DT)
    x0 = torch.zeros(3, 300, dtype=DT)
    o = SolverOptions(maxit=15, print_level=0, memory_limit=2 * MB, auto_memory=auto)
    with caplog.at_level(logging.WARNING, logger="ncvx_core"):
        res = solve(_quad(C), x0, o)
    if auto:
        assert res.memory_plan.limited_mem_size > 0 and isinstance(res.H_final, LBFGSState)
        assert res.H_final.S.shape[1] == res.memory_plan.limited_mem_size
        assert any("using limited memory" in r.getMessage() for r in caplog.records)
    else:
        assert res.memory_plan.limited_mem_size == 0 and isinstance(res.H_final, BFGSState)
        assert not any("memory:" in r.getMessage() for r in caplog.records)
    assert bool(torch.isfinite(res.best.f).all())
    assert bool((res.iters > 0).all())
