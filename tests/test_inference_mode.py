"""The solver computes in ``torch.inference_mode``; what crosses to the user is a normal tensor.

Inference mode drops the autograd bookkeeping of every operation the solver itself performs. The
tests check the boundary: the problem function and ``halt_log_fn`` run outside inference mode on
normal tensors of their own (so they may differentiate through them or write to them), the result
holds normal tensors, the native QP solvers return normal tensors when called directly, and a solve
started inside the caller's own inference mode still differentiates the problem function.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ncvx_core import SolverOptions, solve
from ncvx_core.qp import BoxQP, EnumQPSolver, IPMQPSolver
from ncvx_core.testing import PROBLEMS
from ncvx_core.utils import normal_tensors

DT = torch.float64


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor leaf of a (nested) NamedTuple / dict / tensor."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _result_tensors(res: Any) -> list[Tensor]:
    out: list[Tensor] = []
    for name in ("final", "best", "most_feasible", "status", "iters", "fn_evals", "stationarity", "mu",
                 "violation", "mu_lowest", "bfgs", "H_final"):
        out += _tensors(getattr(res, name))
    return out


def _ball(x: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, None]:
    """min sum|x - 1| + 0.1 ||x||^2  s.t.  ||x||^2 <= 1 (nonsmooth objective, one constraint)."""
    return (x - 1).abs().sum(1) + 0.1 * (x * x).sum(1), ((x * x).sum(1) - 1).unsqueeze(1), None


def test_result_holds_normal_tensors_for_every_hessian_layout() -> None:
    """Full BFGS (small n: rebuilt each update; n >= 256: updated in place), L-BFGS: every tensor
    of the result is a normal tensor that can be written to and differentiated through."""
    gen = torch.Generator().manual_seed(0)
    for n, m in ((5, 0), (300, 0), (5, 4)):
        x0 = torch.randn(3, n, generator=gen, dtype=DT)
        res = solve(_ball, x0, SolverOptions(maxit=8, print_level=0, limited_mem_size=m))
        leaves = _result_tensors(res)
        assert leaves and not any(t.is_inference() for t in leaves), (n, m)
        res.best.x.add_(0.0)  # in place: allowed on a normal tensor
        w = torch.ones(n, dtype=DT, requires_grad=True)
        (res.final.x * w).sum().backward()  # autograd may save it
        assert torch.equal(w.grad, res.final.x.sum(0))


def _own_gradients(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
    """``_ball`` with gradients computed by the function itself, by autograd on the x it gets."""
    with torch.enable_grad():  # user-gradient functions are called under no_grad
        xv = x.detach().requires_grad_(True)
        f, ci, _ = _ball(xv)
        (gf,) = torch.autograd.grad(f.sum(), xv, retain_graph=True)
        (gc,) = torch.autograd.grad(ci.sum(), xv)
    return f.detach(), gf, ci.detach(), gc.unsqueeze(1), None, None


def test_problem_function_gets_normal_tensors_of_its_own() -> None:
    """The problem function receives normal x and idx outside inference mode; writing to x (after
    computing) does not reach the solver's points: the same solve as without the write."""
    seen: dict[str, bool] = {"inference": False, "mode": False}

    def fn(x: Tensor, idx: Tensor | None = None, scribble: bool = False) -> Any:
        seen["inference"] |= x.is_inference() or (idx is not None and idx.is_inference())
        seen["mode"] |= torch.is_inference_mode_enabled()
        out = _own_gradients(x)
        if scribble:
            x.mul_(-7.0)
        return out

    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    o = SolverOptions(maxit=15, print_level=0, globalAD=False)
    plain = solve(lambda x, idx=None: fn(x, idx), x0, o)
    scribbled = solve(lambda x, idx=None: fn(x, idx, scribble=True), x0, o)
    assert not seen["inference"] and not seen["mode"]
    assert torch.equal(plain.best.x, scribbled.best.x) and torch.equal(plain.iters, scribbled.iters)


def test_user_gradients_may_use_autograd_on_the_point() -> None:
    """With ``globalAD=False`` the function may compute its gradients by autograd on the x it
    receives; the answers match the solver's own differentiation bit for bit."""
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    a = solve(_own_gradients, x0, SolverOptions(maxit=12, print_level=0, globalAD=False))
    b = solve(_ball, x0, SolverOptions(maxit=12, print_level=0))
    assert torch.equal(a.best.x, b.best.x) and torch.equal(a.status, b.status)


def test_halt_callback_gets_normal_tensors() -> None:
    """Every field of HaltInfo but H (the solver's own state, handed over as is) is a normal
    tensor, outside inference mode: the callback may run autograd through it."""
    calls = {"n": 0}
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DT, requires_grad=True)

    def halt(info: Any) -> Tensor:
        calls["n"] += 1
        assert not torch.is_inference_mode_enabled()
        assert not any(t.is_inference() for t in _tensors(info._replace(H=None)))
        (info.x @ w).sum().backward()  # saves info.x for backward
        info.f.add_(0.0)
        return torch.zeros_like(info.updated)

    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=DT)
    solve(_ball, x0, SolverOptions(maxit=5, print_level=0, halt_log_fn=halt))
    assert calls["n"] >= 2


def test_solve_inside_the_callers_inference_mode() -> None:
    """A solve started inside ``torch.inference_mode()`` still differentiates the problem function
    (it runs outside inference mode) and gives the same answer."""
    p = PROBLEMS["A1"](batch=3)
    x0 = torch.tensor([[1.0, 1.0], [-0.5, 2.0], [0.3, -1.2]], dtype=DT)
    o = SolverOptions(maxit=40, print_level=0)
    ref = solve(p.fn, x0, o)
    with torch.inference_mode():
        got = solve(p.fn, x0.clone(), o)
    assert torch.equal(ref.best.x, got.best.x) and torch.equal(ref.status, got.status)
    assert math.isfinite(float(got.best.f.max()))


def _qp(B: int, m: int, eq: bool) -> BoxQP:
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(B, m, m, generator=gen, dtype=DT)
    Q = A @ A.transpose(1, 2) + 0.1 * torch.eye(m, dtype=DT)
    q = torch.randn(B, m, generator=gen, dtype=DT)
    lo, hi = torch.zeros(B, m, dtype=DT), torch.ones(B, m, dtype=DT)
    if eq:
        return BoxQP(Q=Q, q=q, lo=lo, hi=hi.fill_(math.inf), eq_mask=torch.ones(B, m, dtype=torch.bool),
                     r=torch.ones(B, dtype=DT))
    return BoxQP(Q=Q, q=q, lo=lo, hi=hi)


def test_native_qp_solvers_return_normal_tensors_when_called_directly() -> None:
    for solver, qp in ((IPMQPSolver(), _qp(4, 6, True)), (EnumQPSolver(), _qp(4, 3, False))):
        res = solver.solve(qp)
        assert not any(t.is_inference() for t in (res.w, res.status, res.iters)), solver.name
        res.w.add_(0.0)
        with torch.inference_mode():
            inner = solver.solve(qp)
        assert torch.equal(inner.w, res.w), solver.name  # same answer inside inference mode


def test_normal_tensors_copies_only_inference_tensors() -> None:
    plain = torch.ones(3)
    with torch.inference_mode():
        inf = torch.ones(3)
    out = normal_tensors({"a": (plain, inf), "b": [inf, 2], "c": None})
    assert out["a"][0] is plain and not out["a"][1].is_inference() and torch.equal(out["a"][1], inf)
    assert not out["b"][0].is_inference() and out["b"][1] == 2 and out["c"] is None
