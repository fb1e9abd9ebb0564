"""Property tests of the batched weak Wolfe line search in ``ncvx_core/linesearch.py`` (spec section 3).

The penalty functions are batched toys written here: convex quadratics, absolute-value kinks,
maxima of affine functions, linear functions (unbounded below), functions that are NaN outside a
ball and a discontinuous function whose bracket collapses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ncvx_core.linesearch import (
    LS_BRACKETED,
    LS_NO_BRACKET,
    LS_OK,
    Backtracking,
    LineSearchProblem,
    Trial,
    WeakWolfe,
)

DT = torch.float64
seeds = st.integers(0, 2**31 - 1)




class Payload(NamedTuple):
    phi: torch.Tensor
    row: torch.Tensor
    tag: str = "payload"  # non-tensor leaves pass through


# ----------------------------------------------------------------------------------------------
# batched toy penalty functions
@dataclass
class Toy:
    """phi_b(x) = 1/2 x'A x + b'x + sum_i w_i |x_i - c_i| + lam * max_j (a_j'x + e_j)
    (+ jump where b'x < theta), NaN where |x - center| > radius."""

    A: torch.Tensor  # (B, n, n) PSD
    b: torch.Tensor  # (B, n)
    w: torch.Tensor  # (B, n) >= 0
    c: torch.Tensor  # (B, n)
    lam: torch.Tensor  # (B,)
    aff: torch.Tensor  # (B, J, n)
    e: torch.Tensor  # (B, J)
    center: torch.Tensor  # (B, n)
    radius: torch.Tensor  # (B,) inf = no NaN region
    theta: torch.Tensor  # (B,) -inf = no jump
    jump: torch.Tensor  # (B,)
    feasible: torch.Tensor  # (B,) bool
    lie: torch.Tensor  # (B, n) added to the reported gradient (0 = exact gradient)

    @property
    def B(self) -> int:
        return self.b.shape[0]

    def sub(self, idx: torch.Tensor) -> Toy:
        return Toy(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def phi(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        A, b, w, c = self.A[idx], self.b[idx], self.w[idx], self.c[idx]
        Ax = (A * x.unsqueeze(1)).sum(-1)
        v = 0.5 * (Ax * x).sum(-1) + (b * x).sum(-1) + (w * (x - c).abs()).sum(-1)
        aff = (self.aff[idx] * x.unsqueeze(1)).sum(-1) + self.e[idx]
        v = v + self.lam[idx] * aff.amax(-1)
        v = v + torch.where((b * x).sum(-1) < self.theta[idx], self.jump[idx], 0.0)
        out = (x - self.center[idx]).norm(dim=1) > self.radius[idx]
        return torch.where(out, math.nan, v)

    def grad(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        A, b, w, c = self.A[idx], self.b[idx], self.w[idx], self.c[idx]
        g = (A * x.unsqueeze(1)).sum(-1) + b + w * torch.sign(x - c)
        aff = (self.aff[idx] * x.unsqueeze(1)).sum(-1) + self.e[idx]
        j = aff.argmax(-1)
        g = g + self.lam[idx].unsqueeze(1) * self.aff[idx][torch.arange(len(idx)), j]
        g = g + self.lie[idx]
        out = (x - self.center[idx]).norm(dim=1) > self.radius[idx]
        return torch.where(out.unsqueeze(1), math.nan, g)


def make_toy(g: torch.Generator, B: int, n: int, kinds: list[str], x0: torch.Tensor | None = None) -> Toy:
    """A batch of toys; ``nanball`` problems are NaN outside a ball around ``x0`` (radius 0.5..3.5)."""
    def rn(*s):
        return torch.randn(*s, generator=g, dtype=DT)

    def ru(*s):
        return torch.rand(*s, generator=g, dtype=DT)

    J = 3
    M = rn(B, n, n)
    A = M @ M.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=DT)
    A = 0.5 * (A + A.transpose(1, 2))
    b, c, w = rn(B, n), rn(B, n), torch.zeros(B, n, dtype=DT)
    lam = torch.zeros(B, dtype=DT)
    aff, e = rn(B, J, n), rn(B, J)
    center = torch.zeros(B, n, dtype=DT) if x0 is None else x0.clone()
    radius = torch.full((B,), math.inf, dtype=DT)
    theta = torch.full((B,), -math.inf, dtype=DT)
    jump = torch.zeros(B, dtype=DT)
    for i, kind in enumerate(kinds):
        if kind in ("kink", "mixed"):
            w[i] = ru(n) * 2
        if kind in ("maxaff", "mixed"):
            lam[i] = 0.5 + ru(1).item()
        if kind == "linear":
            A[i] = 0.0
        if kind == "nanball":
            radius[i] = 0.5 + 3 * ru(1).item()
    return Toy(A, b, w, c, lam, aff, e, center, radius, theta, jump,
               torch.ones(B, dtype=torch.bool), torch.zeros(B, n, dtype=DT))


class Recorder:
    """An ``evaluate`` callback over a Toy that records every call."""

    def __init__(self, toy: Toy, feasible: torch.Tensor | None = None) -> None:
        self.toy = toy
        self.feasible = toy.feasible if feasible is None else feasible
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def trial(self, x: torch.Tensor, rows: torch.Tensor, grad: bool) -> Trial:
        phi = self.toy.phi(x, rows)
        gphi = self.toy.grad(x, rows) if grad else None
        return Trial(phi, gphi, self.feasible[rows].clone(), x.clone(), Payload(phi.clone(), rows.clone()))

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, grad: bool) -> Trial:
        assert rows.dtype == torch.long
        self.calls.append((x.clone(), rows.clone(), grad))
        return self.trial(x, rows, grad)


@dataclass
class Setup:
    toy: Toy
    x0: torch.Tensor
    d: torch.Tensor
    rec: Recorder
    prob: LineSearchProblem
    active: torch.Tensor
    budget: torch.Tensor


def setup(toy: Toy, x0, d=None, active=None, budget=None, fvalquit=-math.inf, feasible=None) -> Setup:
    B = toy.B
    rec = Recorder(toy, feasible)
    rows = torch.arange(B)
    start = rec.trial(x0, rows, True)
    if d is None:
        d = -start.gphi
    active = torch.ones(B, dtype=torch.bool) if active is None else active
    budget = torch.full((B,), math.inf, dtype=DT) if budget is None else budget
    prob = LineSearchProblem(start=start, evaluate=rec, fvalquit=fvalquit)
    return Setup(toy, x0, d, rec, prob, active, budget)


def run(ls, S: Setup):
    return ls.search(S.prob, S.d, S.active, S.budget)


def _s0(S: Setup) -> torch.Tensor:
    return (S.prob.start.gphi * S.d).sum(1)


def check_calls(S: Setup, res, grads_expected: bool | None = True, final_grad_call: bool = False):
    """evaluate was only called on rows still searching, each problem in one contiguous run of calls
    (with ``final_grad_call``: the backtracking search's last gradient call is left out)."""
    B = S.toy.B
    seen = [[] for _ in range(B)]
    calls = S.rec.calls
    if final_grad_call:
        x, rows, grad = calls[-1]
        assert grad is True
        calls = calls[:-1]
        extra = torch.zeros(B, dtype=torch.int32).index_add(0, rows, torch.ones_like(rows, dtype=torch.int32))
    else:
        extra = torch.zeros(B, dtype=torch.int32)
    for k, (x, rows, grad) in enumerate(calls):
        assert rows.numel() > 0
        assert torch.equal(rows, torch.unique(rows))  # sorted, no duplicates
        assert bool(S.active[rows].all())
        # the points lie on the search rays x0 + t d with t > 0
        dx = x - S.x0[rows]
        dd = S.d[rows]
        t = (dx * dd).sum(1) / (dd * dd).sum(1)
        assert bool((t > 0).all())
        assert torch.allclose(dx, t.unsqueeze(1) * dd, rtol=1e-12, atol=1e-12 * float(x.abs().max() + 1))
        if grads_expected is not None:
            assert grad is grads_expected
        for r in rows.tolist():
            seen[r].append(k)
    for b in range(B):
        assert len(seen[b]) + int(extra[b]) == int(res.evals[b])
        if seen[b]:
            assert seen[b] == list(range(seen[b][0], seen[b][0] + len(seen[b])))
            assert seen[b][0] == 0  # everybody active starts at the first trial
    return seen


def check_basic(S: Setup, res, ls):
    B = S.toy.B
    assert res.t.shape == (B,) and res.status.shape == (B,) and res.evals.shape == (B,)
    assert res.status.dtype == torch.int8
    assert bool(torch.isfinite(res.t).all()) and bool((res.t >= 0).all())
    start = S.prob.start
    ina = ~S.active
    assert bool((res.t[ina] == 0).all())
    assert bool((res.evals[ina] == 0).all())
    assert bool((res.status[ina] == LS_OK).all())
    for a, b in zip(res.trial[:4], start[:4]):
        assert torch.equal(a[ina], b[ina])
    assert torch.equal(res.trial.payload.phi[ina], start.payload.phi[ina])
    assert torch.equal(res.trial.payload.row[ina], start.payload.row[ina])
    # the returned trial is the point x0 + t d, with consistent values and payload
    xt = S.x0 + res.t.unsqueeze(1) * S.d
    assert torch.allclose(res.trial.x, xt, rtol=0, atol=1e-13 * float(xt.abs().max() + 1))
    rows = torch.arange(B)
    phi_t = S.toy.phi(res.trial.x, rows)
    assert torch.equal(res.trial.phi, phi_t)
    assert torch.equal(res.trial.payload.phi, res.trial.phi)
    assert torch.equal(res.trial.payload.row, rows)
    assert res.trial.gphi is not None
    # independent recomputation of the conditions at x0 + t d
    s0 = _s0(S)
    phi0 = start.phi
    phi_rec = S.toy.phi(xt, rows)
    g_rec = S.toy.grad(xt, rows)
    pos = S.active & (res.t > 0)
    if ls.backtracking:  # a failed backtracking search returns its last (rejected) trial
        pos = pos & (res.status == LS_OK)
    armijo = phi_rec < phi0 + ls.c1 * res.t * s0
    assert bool(armijo[pos].all()), "every returned positive step satisfies Armijo"
    ok = S.active & (res.status == LS_OK)
    assert bool((res.t[ok] > 0).all())
    if not ls.backtracking:
        wolfe = (g_rec * S.d).sum(1) > ls.c2 * s0
        quit_ = S.prob.fvalquit > -math.inf
        if not quit_:
            assert bool(wolfe[ok].all()), "weak Wolfe on success"
    return ok


# ----------------------------------------------------------------------------------------------
KINDS = ["quad", "kink", "maxaff", "mixed", "nanball"]


@st.composite
def batches(draw, kinds=KINDS, min_B=2, max_B=6):
    B = draw(st.integers(min_B, max_B))
    n = draw(st.integers(1, 5))
    ks = draw(st.lists(st.sampled_from(kinds), min_size=B, max_size=B))
    active = draw(st.lists(st.booleans(), min_size=B, max_size=B))
    if not any(active):
        active[draw(st.integers(0, B - 1))] = True
    seed = draw(seeds)
    return B, n, ks, torch.tensor(active), seed


def _x0(g, B, n):
    return torch.randn(B, n, generator=g, dtype=DT)


@given(data=batches(), c1=st.floats(0.0, 0.4), dc=st.floats(0.05, 0.55), t0=st.sampled_from([1.0, 0.25, 3.0]))
def test_wolfe_conditions_on_success(data, c1, dc, t0):
    B, n, kinds, active, seed = data
    c2 = min(c1 + dc, 0.95)
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n) * 0.3
    toy = make_toy(g, B, n, kinds, x0)
    S = setup(toy, x0, active=active)
    ls = WeakWolfe(c1=c1, c2=c2, t0=t0)
    res = run(ls, S)
    check_basic(S, res, ls)
    check_calls(S, res)
    assert bool(((res.status == LS_OK) | (res.status == LS_BRACKETED) | (res.status == LS_NO_BRACKET)).all())
    # smooth strongly convex problems always succeed
    quad = torch.tensor([k == "quad" for k in kinds]) & active
    assert bool((res.status[quad] == LS_OK).all())
    # returned points never carry NaN values
    assert bool(torch.isfinite(res.trial.phi).all())


def _linear_toy(B: int, n: int, scales: list[float]) -> Toy:
    g = torch.Generator().manual_seed(0)
    toy = make_toy(g, B, n, ["linear"] * B)
    b = torch.randn(B, n, generator=g, dtype=DT)
    b = b / b.norm(dim=1, keepdim=True) * torch.tensor(scales, dtype=DT).unsqueeze(1)
    toy.b = b
    toy.aff.zero_()
    return toy


def test_unbounded_below_gives_no_bracket_after_nexpmax_expansions():
    # ||d|| = 1: nexpmax = round(log2(1e5)) = 17; 1e-3: round(log2(1e8)) = 27; 1e3: max(10, 7) = 10
    scales = [1.0, 1e-3, 1e3, 1.0]
    toy = _linear_toy(4, 3, scales)
    S = setup(toy, torch.zeros(4, 3, dtype=DT) + 0.1)
    ls = WeakWolfe()
    res = run(ls, S)
    check_basic(S, res, ls)
    check_calls(S, res)
    nexpmax = [17, 27, 10, 17]
    assert res.status.tolist() == [LS_NO_BRACKET] * 4
    assert res.evals.tolist() == [1 + k for k in nexpmax]
    assert res.t.tolist() == [2.0**k for k in nexpmax]


def test_unbounded_below_mixed_with_solvable_problem():
    g = torch.Generator().manual_seed(3)
    toy = make_toy(g, 3, 2, ["linear", "quad", "linear"])
    S = setup(toy, _x0(g, 3, 2))
    res = run(WeakWolfe(t0=0.5), S)
    assert res.status.tolist() == [LS_NO_BRACKET, LS_OK, LS_NO_BRACKET]
    check_calls(S, res)


def _jump_toy(taus: list[float], n: int = 2) -> tuple[Toy, torch.Tensor]:
    """phi = b'x, dropping linearly along d = -b until t = tau where it jumps up by 10."""
    B = len(taus)
    g = torch.Generator().manual_seed(1)
    toy = make_toy(g, B, n, ["linear"] * B)
    toy.aff.zero_()
    toy.b = torch.randn(B, n, generator=g, dtype=DT)
    x0 = torch.randn(B, n, generator=g, dtype=DT) + 2.0
    bx0 = (toy.b * x0).sum(1)
    bb = (toy.b * toy.b).sum(1)
    toy.theta = bx0 - torch.tensor(taus, dtype=DT) * bb  # b'(x0 - t b) < theta  <=>  t > tau
    toy.jump = torch.full((B,), 1e3, dtype=DT)
    return toy, x0


def test_collapsing_bracket_gives_bracketed():
    taus = [0.3, 0.7, 2.5]
    toy, x0 = _jump_toy(taus)
    S = setup(toy, x0)
    ls = WeakWolfe()
    res = run(ls, S)
    check_basic(S, res, ls)
    check_calls(S, res)
    assert res.status.tolist() == [LS_BRACKETED] * 3
    tau = torch.tensor(taus, dtype=DT)
    assert bool((res.t <= tau * (1 + 1e-9)).all())
    assert bool((res.t >= tau * (1 - 1e-9)).all())
    # the bracket shrank to the step tolerance in a bounded number of evaluations
    assert bool((res.evals < 80).all())


def test_armijo_tie_fails():
    # phi = b'x / 2 with the reported gradient b: phi(x0 + t d) = phi0 + c1 t s0 exactly for c1 = 1/2
    toy = _linear_toy(2, 2, [1.0, 1.0])
    toy.b = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=DT)
    toy.lie = torch.tensor([[0.5, 0.0], [0.5, 0.0]], dtype=DT)
    x0 = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=DT)
    d = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]], dtype=DT)
    S = setup(toy, x0, d=d)
    res = run(WeakWolfe(c1=0.5, c2=0.5), S)
    assert res.status.tolist() == [LS_BRACKETED] * 2
    assert res.t.tolist() == [0.0, 0.0]
    assert torch.equal(res.trial.x, x0)


@given(data=batches(kinds=["nanball"], min_B=2), t0=st.sampled_from([1.0, 10.0, 1e3]))
def test_nan_beyond_a_step_never_returns_nan(data, t0):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, kinds, x0)
    S = setup(toy, x0, active=active)
    ls = WeakWolfe(t0=t0)
    res = run(ls, S)
    ok = check_basic(S, res, ls)
    check_calls(S, res)
    assert bool(torch.isfinite(res.trial.phi).all())
    assert bool(torch.isfinite(res.trial.gphi[ok]).all())
    inside = (res.trial.x - toy.center).norm(dim=1) <= toy.radius
    assert bool(inside.all())


def test_nan_at_initial_step_succeeds_with_smaller_step():
    # phi = 1/2|x|^2 + b'x from x0 = 0 along d = -b: Wolfe interval t in (0.5, ~2); NaN beyond
    # t = 3 (problem 0) or t = 0.4 (problem 1, which can only fail cleanly)
    g = torch.Generator().manual_seed(5)
    x0 = torch.zeros(2, 3, dtype=DT)
    toy = make_toy(g, 2, 3, ["nanball", "nanball"], x0)
    toy.A = torch.eye(3, dtype=DT).expand(2, 3, 3).clone()
    toy.radius = torch.tensor([3.0, 0.4], dtype=DT) * toy.b.norm(dim=1)
    S = setup(toy, x0)
    ls = WeakWolfe(t0=1000.0)
    res = run(ls, S)
    check_basic(S, res, ls)
    check_calls(S, res)
    assert res.status.tolist() == [LS_OK, LS_BRACKETED]
    assert 0.5 < float(res.t[0]) < 2.0
    assert 0.0 < float(res.t[1]) <= 0.4
    assert bool(torch.isfinite(res.trial.phi).all())


@given(data=batches(kinds=KINDS + ["linear"], min_B=2), perm_seed=seeds,
       backtracking=st.booleans())
def test_batch_independence_and_permutation(data, perm_seed, backtracking):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n) * 0.5
    toy = make_toy(g, B, n, kinds, x0)
    budget = torch.where(torch.rand(B, generator=g, dtype=DT) < 0.3, 4.0, math.inf).to(DT)
    ls = WeakWolfe(backtracking=backtracking)
    S = setup(toy, x0, active=active, budget=budget)
    res = run(ls, S)
    for b in range(B):
        idx = torch.tensor([b])
        Sb = setup(toy.sub(idx), x0[idx], active=active[idx], budget=budget[idx])
        rb = run(ls, Sb)
        assert torch.equal(rb.t, res.t[idx])
        assert torch.equal(rb.evals, res.evals[idx])
        assert torch.equal(rb.status, res.status[idx])
        assert torch.equal(rb.trial.x, res.trial.x[idx])
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(perm_seed))
    Sp = setup(toy.sub(perm), x0[perm], active=active[perm], budget=budget[perm])
    rp = run(ls, Sp)
    assert torch.equal(rp.t, res.t[perm])
    assert torch.equal(rp.evals, res.evals[perm])
    assert torch.equal(rp.status, res.status[perm])
    assert torch.equal(rp.trial.phi, res.trial.phi[perm])


@given(data=batches(kinds=["quad", "kink", "mixed", "linear"], min_B=2),
       budgets=st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, math.inf]), min_size=6, max_size=6))
def test_budget_is_respected(data, budgets):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    toy = make_toy(g, B, n, kinds)
    x0 = _x0(g, B, n)
    budget = torch.tensor(budgets[:B], dtype=DT)
    ls = WeakWolfe(t0=4.0)
    free = run(ls, setup(toy, x0, active=active))
    S = setup(toy, x0, active=active, budget=budget)
    res = run(ls, S)
    check_basic(S, res, ls)
    check_calls(S, res)
    assert bool((res.evals.to(DT) <= budget).all())
    within = active & (free.evals.to(DT) <= budget)
    assert torch.equal(res.t[within], free.t[within])
    assert torch.equal(res.status[within], free.status[within])
    cut = active & ~within
    assert bool((res.evals.to(DT)[cut] == budget[cut]).all())
    assert bool((res.status[cut] != LS_OK).all())


# ----------------------------------------------------------------------------------------------
# backtracking
@given(data=batches(kinds=["quad", "kink", "mixed", "linear", "nanball"]), t0=st.sampled_from([1.0, 8.0, 64.0]),
       cls=st.booleans())
def test_backtracking_value_only_trials_and_halving(data, t0, cls):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, kinds, x0)
    S = setup(toy, x0, active=active)
    ls = Backtracking(t0=t0) if cls else WeakWolfe(t0=t0, backtracking=True)
    assert ls.backtracking
    res = run(ls, S)
    ok = check_basic(S, res, ls)
    check_calls(S, res, False, final_grad_call=True)
    calls = S.rec.calls
    assert len(calls) >= 2
    # value-only trials, then exactly one gradient evaluation at the returned points
    assert [c[2] for c in calls] == [False] * (len(calls) - 1) + [True]
    xf, rows_f, _ = calls[-1]
    assert torch.equal(rows_f, torch.nonzero(active).flatten())
    assert torch.equal(xf, res.trial.x[rows_f])
    for b in torch.nonzero(active).flatten().tolist():
        ts = []
        for x, rows, _grad in calls[:-1]:
            hit = torch.nonzero(rows == b).flatten()
            if hit.numel():
                dx = x[hit[0]] - S.x0[b]
                ts.append(float((dx @ S.d[b]) / (S.d[b] @ S.d[b])))
        assert len(ts) + 1 == int(res.evals[b])
        expected = [t0 * 0.5**k for k in range(len(ts))]
        assert all(math.isclose(a, e, rel_tol=1e-12) for a, e in zip(ts, expected)), (ts, expected)
        if res.status[b] == LS_OK:
            assert math.isclose(float(res.t[b]), ts[-1], rel_tol=1e-12)
    assert bool((res.status[active & ~ok] == LS_BRACKETED).all())
    # the final gradient evaluation is the returned gradient
    assert torch.equal(res.trial.gphi[active], toy.grad(res.trial.x[active], torch.nonzero(active).flatten()))


def test_backtracking_accepts_where_weak_wolfe_cannot_bracket():
    toy = _linear_toy(2, 3, [1.0, 2.0])
    x0 = torch.ones(2, 3, dtype=DT)
    S = setup(toy, x0)
    res = run(Backtracking(t0=2.0), S)
    assert res.status.tolist() == [LS_OK, LS_OK]
    assert res.t.tolist() == [2.0, 2.0]
    assert res.evals.tolist() == [2, 2]
    S2 = setup(toy, x0)
    assert run(WeakWolfe(t0=2.0), S2).status.tolist() == [LS_NO_BRACKET] * 2


def test_backtracking_budget_counts_value_trials():
    toy, x0 = _jump_toy([0.01, 0.02])
    S = setup(toy, x0, budget=torch.tensor([3.0, 1.0], dtype=DT))
    res = run(Backtracking(), S)
    assert res.status.tolist() == [LS_BRACKETED] * 2
    value_calls = [c for c in S.rec.calls if not c[2]]
    per_row = [sum(int((c[1] == b).sum()) for c in value_calls) for b in range(2)]
    assert per_row == [3, 1]
    # on exhaustion the last trial point is re-evaluated with gradient and returned
    assert res.t.tolist() == [0.25, 1.0]
    assert res.evals.tolist() == [4, 2]


# ----------------------------------------------------------------------------------------------
# fvalquit
@pytest.mark.parametrize("backtracking", [False, True])
def test_fvalquit_accepts_feasible_trial_even_if_wolfe_fails(backtracking):
    # the same linear phi(x0 + t d) = phi0 - t for three problems: curvature fails at every step,
    # so weak Wolfe alone never brackets; quit level phi0 - 1/2
    toy = _linear_toy(3, 2, [1.0, 1.0, 1.0])
    toy.b = toy.b[:1].expand(3, 2).clone()
    x0 = torch.ones(3, 2, dtype=DT)
    toy.center = x0.clone()
    toy.radius = torch.tensor([math.inf, math.inf, 0.3], dtype=DT)  # problem 2: NaN beyond t = 0.3
    feasible = torch.tensor([True, False, True])
    phi0 = float((toy.b[0] * x0[0]).sum())
    fq = phi0 - 0.5
    S = setup(toy, x0, fvalquit=fq, feasible=feasible)
    res = run(WeakWolfe(backtracking=backtracking), S)
    check_calls(S, res, None, final_grad_call=backtracking)
    # problem 0: the first trial (t = 1, phi = phi0 - 1) is feasible and below the quit level
    assert int(res.status[0]) == LS_OK and float(res.t[0]) == 1.0
    assert int(res.evals[0]) == (2 if backtracking else 1)
    assert float(res.trial.phi[0]) <= fq
    # problem 2 can never reach the quit level with a finite value
    assert float(res.trial.phi[2]) > fq
    assert bool(torch.isfinite(res.trial.phi).all())
    if not backtracking:
        assert int(res.status[1]) == LS_NO_BRACKET  # infeasible: no quit exit
        assert int(res.status[2]) == LS_BRACKETED
    else:
        assert res.status.tolist() == [LS_OK] * 3  # Armijo suffices
        assert res.t.tolist() == [1.0, 1.0, 0.25]


def test_fvalquit_ignores_nan_and_infeasible():
    toy = _linear_toy(2, 2, [1.0, 1.0])
    x0 = torch.ones(2, 2, dtype=DT)
    S = setup(toy, x0, fvalquit=math.inf, feasible=torch.tensor([True, False]))
    res = run(WeakWolfe(), S)
    # fvalquit = +inf: any finite feasible trial quits; the infeasible one expands to the end
    assert res.status.tolist() == [LS_OK, LS_NO_BRACKET]
    assert res.evals.tolist() == [1, 18]


def test_inactive_everything_returns_start():
    g = torch.Generator().manual_seed(2)
    toy = make_toy(g, 3, 2, ["quad", "kink", "linear"])
    S = setup(toy, _x0(g, 3, 2), active=torch.zeros(3, dtype=torch.bool))
    res = run(WeakWolfe(), S)
    assert S.rec.calls == []
    assert res.t.tolist() == [0.0] * 3 and res.evals.tolist() == [0] * 3
    assert res.status.tolist() == [LS_OK] * 3
    assert torch.equal(res.trial.x, S.prob.start.x) and torch.equal(res.trial.phi, S.prob.start.phi)
    assert torch.equal(res.trial.gphi, S.prob.start.gphi)


def test_invalid_constants_raise():
    with pytest.raises(ValueError):
        WeakWolfe(c1=0.6)
    with pytest.raises(ValueError):
        WeakWolfe(c1=0.3, c2=0.2)
    with pytest.raises(ValueError):
        WeakWolfe(c2=1.0)


# ----------------------------------------------------------------------------------------------
# speculation: several trial steps of one problem per round, same search
class QuietRecorder(Recorder):
    """``peek`` (no side effects, rows may repeat) and ``record`` callbacks over a Toy."""

    def __init__(self, toy: Toy, feasible: torch.Tensor | None = None) -> None:
        super().__init__(toy, feasible)
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def evaluate(self, x: torch.Tensor, rows: torch.Tensor, grad: bool) -> Trial:
        trial = self(x, rows, grad)
        if grad:
            self.record(trial, rows)
        return trial

    def record(self, trial: Trial, rows: torch.Tensor) -> None:
        assert torch.equal(rows, torch.unique(rows))  # one trial per problem per record
        self.records.append((trial.x.clone(), rows.clone()))

    def per_problem(self, B: int) -> list[list[torch.Tensor]]:
        out: list[list[torch.Tensor]] = [[] for _ in range(B)]
        for x, rows in self.records:
            for j, r in enumerate(rows.tolist()):
                out[r].append(x[j])
        return out


def quiet_setup(toy: Toy, x0, active, budget, fvalquit, speculation):
    rec = QuietRecorder(toy)
    start = rec.trial(x0, torch.arange(toy.B), True)
    prob = LineSearchProblem(start=start, evaluate=rec.evaluate, fvalquit=fvalquit, peek=rec, record=rec.record,
                             speculation=speculation)
    return rec, prob, -start.gphi


@given(data=batches(kinds=KINDS + ["linear"], min_B=1, max_B=8), width=st.integers(2, 9),
       t0=st.sampled_from([1.0, 16.0, 1024.0]), backtracking=st.booleans(),
       budgets=st.lists(st.sampled_from([1, 2, 3, 7, math.inf]), min_size=8, max_size=8),
       quit_=st.booleans(), extrapolate=st.booleans(), armijo=st.sampled_from([None, 1, 2, 4, 7]))
def test_speculation_gives_the_serial_search_in_fewer_rounds(data, width, t0, backtracking, budgets, quit_,
                                                             extrapolate, armijo):
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, kinds, x0)
    budget = torch.tensor(budgets[:B], dtype=DT)
    fvalquit = float(toy.phi(x0, torch.arange(B)).min()) - 0.5 if quit_ else -math.inf
    extrapolate = extrapolate and not backtracking
    t_init = t0 * 2.0 ** -torch.randint(0, 12, (B,), generator=g).to(DT) if extrapolate else None
    out = {}
    for w in (1, width):
        rec, prob, d = quiet_setup(toy, x0, active, budget, fvalquit, speculation=9)
        prob.t_init = t_init
        ls = WeakWolfe(t0=t0, backtracking=backtracking, speculate=w, speculate_min_use=0.0, extrapolate=extrapolate,
                       armijo_after=None if backtracking else armijo)
        out[w] = (ls.search(prob, d, active, budget), rec)
    (r1, rec1), (rw, recw) = out[1], out[width]
    assert torch.equal(r1.t, rw.t)
    assert torch.equal(r1.status, rw.status) and torch.equal(r1.evals, rw.evals)
    for a, b in zip(r1.trial[:4], rw.trial[:4]):
        assert (a is None and b is None) or torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    # the same trial points were recorded, in the same order, for every problem
    s1, sw = rec1.per_problem(B), recw.per_problem(B)
    for b in range(B):
        assert len(s1[b]) == len(sw[b])
        for p, q in zip(s1[b], sw[b]):
            assert torch.equal(p, q)  # points on the ray: finite
    # the serial search evaluates each trial once, one per problem per call
    assert sum(int(rows.numel()) for _, rows, _ in rec1.calls) == int(r1.evals.sum())
    # no more rounds than the serial search, no round larger than the first
    assert len(recw.calls) <= len(rec1.calls)
    if recw.calls:
        first = recw.calls[0][1].numel()
        assert all(rows.numel() <= first for _, rows, _ in recw.calls)


def _long_backtrack(ls: WeakWolfe, long: list[bool]):
    """Search a batch of 8 quadratics whose steps in ``long`` are 2**20 times too long."""
    g = torch.Generator().manual_seed(3)
    B, n = 8, 3
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, ["quad"] * B, x0)
    rec, prob, d = quiet_setup(toy, x0, torch.ones(B, dtype=torch.bool), torch.full((B,), math.inf, dtype=DT),
                               -math.inf, speculation=8)
    d = d * torch.tensor([2.0**20 if v else 1.0 for v in long], dtype=DT).unsqueeze(1)
    res = ls.search(prob, d, torch.ones(B, dtype=torch.bool), torch.full((B,), math.inf, dtype=DT))
    return res, len(rec.calls), rec


def test_speculation_cuts_the_rounds_of_a_long_backtrack():
    """One problem whose step must be halved many times: at the full width of 8 the rounds drop
    about 8-fold while the accepted step and the evaluation count stay those of the serial search."""
    long = [False] * 7 + [True]
    r1, c1, _ = _long_backtrack(WeakWolfe(speculate=1), long)
    r8, c8, rec = _long_backtrack(WeakWolfe(speculate=8, speculate_min_use=0.0), long)
    assert torch.equal(r1.t, r8.t) and torch.equal(r1.evals, r8.evals)
    assert int(r1.evals[-1]) >= 20
    assert c8 <= c1 // 4
    assert max(int(rows.numel()) for _, rows, _ in rec.calls) <= 8  # never more rows than the first round


def test_speculation_width_follows_the_measured_failure_rate():
    """The default rule adds a trial step only where the serial search would reach it with
    probability >= 1/2: nothing before 16 observed trials, the full width after a history of
    failures, none after a history of first-trial successes."""
    ls = WeakWolfe(speculate=8)
    assert ls._width(8, 8) == 1  # no history yet
    _long_backtrack(ls, [True] * 8)  # every problem fails sufficient decrease ~20 times
    r1, c1, _ = _long_backtrack(WeakWolfe(speculate=1), [False] * 7 + [True])
    assert ls._width(8, 8) >= 4
    r8, c8, _ = _long_backtrack(ls, [False] * 7 + [True])
    assert torch.equal(r1.t, r8.t) and torch.equal(r1.evals, r8.evals)
    assert c8 <= c1 // 2
    quick = WeakWolfe(speculate=8)
    for _ in range(4):
        _long_backtrack(quick, [False] * 8)  # unit steps on convex quadratics: (nearly) all accepted
    assert quick._width(8, 8) == 1


def test_speculation_needs_peek_and_record():
    """A problem without ``peek``/``record`` (or with speculation 1) is searched one trial per round."""
    g = torch.Generator().manual_seed(4)
    B, n = 4, 2
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, ["quad"] * B, x0)
    S = setup(toy, x0, d=-toy.grad(x0, torch.arange(B)) * 1e4)
    res = WeakWolfe(speculate=8).search(S.prob, S.d, S.active, S.budget)
    check_basic(S, res, WeakWolfe())
    check_calls(S, res)  # rows unique in every call, one contiguous run per problem
    rec, prob, d = quiet_setup(toy, x0, S.active, S.budget, -math.inf, speculation=1)
    WeakWolfe(speculate=8).search(prob, d * 1e4, S.active, S.budget)
    assert all(torch.equal(rows, torch.unique(rows)) for _, rows, _ in rec.calls)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_speculation_raises(bad):
    with pytest.raises(ValueError, match="speculate"):
        WeakWolfe(speculate=bad)
    with pytest.raises(ValueError, match="speculate_min_use"):
        WeakWolfe(speculate=2, speculate_min_use=1.0)


# ----------------------------------------------------------------------------------------------
# extrapolation from a per-problem first step (linesearch_previous_step)
def _trial_steps(S: Setup, b: int) -> list[float]:
    """The steps of problem b's trials, in call order."""
    out = []
    for x, rows, _ in S.rec.calls:
        hit = (rows == b).nonzero().flatten()
        if hit.numel():
            dx, dd = x[hit[0]] - S.x0[b], S.d[b]
            out.append(float((dx * dd).sum() / (dd * dd).sum()))
    return out


@given(data=batches(), t0=st.sampled_from([1.0, 0.25, 3.0]))
def test_extrapolation_without_a_first_step_is_the_plain_search(data, t0):
    """From t0 no trial is below t0 before a failure, so extrapolation never applies."""
    B, n, kinds, active, seed = data
    out = []
    for extrapolate in (False, True):
        g = torch.Generator().manual_seed(seed)
        x0 = _x0(g, B, n) * 0.3
        S = setup(make_toy(g, B, n, kinds, x0), x0, active=active)
        out.append(run(WeakWolfe(t0=t0, extrapolate=extrapolate), S))
    assert torch.equal(out[0].t, out[1].t) and torch.equal(out[0].status, out[1].status)
    assert torch.equal(out[0].evals, out[1].evals)


@given(data=batches(), t0=st.sampled_from([1.0, 0.25, 3.0]), shift=st.integers(0, 14))
def test_extrapolation_returns_a_wolfe_step_within_a_factor_2_of_the_largest(data, t0, shift):
    """Started at t0 / 2**k, a successful search returns a weak Wolfe step t (check_basic) that is
    t0 or has a trial in (t, 2t] that failed sufficient decrease: the bisection from t0 gives the
    same guarantee, the plain search from a small first step does not (it accepts that step)."""
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n) * 0.3
    toy = make_toy(g, B, n, kinds, x0)
    S = setup(toy, x0, active=active)
    k = (torch.arange(B) * 7 + shift) % 15
    S.prob.t_init = t0 * 2.0 ** -k.to(DT)
    ls = WeakWolfe(t0=t0, extrapolate=True)
    res = run(ls, S)
    ok = check_basic(S, res, ls)
    check_calls(S, res)
    s0 = _s0(S)
    for b in ok.nonzero().flatten().tolist():
        steps = _trial_steps(S, b)
        assert math.isclose(steps[0], float(S.prob.t_init[b]), rel_tol=1e-12)  # the first trial: the given step
        t = float(res.t[b])
        if t >= t0:
            continue
        failed = []
        for ts in steps:
            if t < ts <= 2 * t * (1 + 1e-12):
                xt = (S.x0[b] + ts * S.d[b]).unsqueeze(0)
                phi = toy.phi(xt, torch.tensor([b]))
                failed.append(not bool(phi < S.prob.start.phi[b] + ls.c1 * ts * s0[b]))
        assert any(failed), (b, t, steps)


def test_extrapolation_takes_fewer_trials_near_the_first_step():
    """A quadratic along d with its minimiser at t = 0.3 (t0 = 1): from 1 the search bisects to
    0.25 in 3 trials (1 and 0.5 fail sufficient decrease); from 0.25 the same step in 2 trials (0.5
    fails sufficient decrease); from 0.01 it doubles to 0.32 and returns 0.32 (0.64 fails)."""
    x0 = torch.zeros(3, 1, dtype=DT)
    toy = make_toy(torch.Generator().manual_seed(0), 3, 1, ["quad"] * 3, x0)
    toy.A[:] = 1.0
    toy.b[:] = -0.3
    toy.aff.zero_()
    S = setup(toy, x0, d=torch.ones(3, 1, dtype=DT))
    S.prob.t_init = torch.tensor([1.0, 0.25, 0.01], dtype=DT)
    res = run(WeakWolfe(c1=0.25, c2=0.9, extrapolate=True), S)
    assert res.t.tolist() == [0.25, 0.25, 0.32]
    assert res.evals.tolist() == [3, 2, 7]
    expected = [[1.0, 0.5, 0.25], [0.25, 0.5], [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]]
    for b in range(3):
        assert _trial_steps(S, b) == pytest.approx(expected[b], rel=1e-12)


def test_extrapolation_needs_the_weak_wolfe_search():
    with pytest.raises(ValueError, match="extrapolate"):
        WeakWolfe(backtracking=True, extrapolate=True)
    with pytest.raises(ValueError, match="extrapolate"):
        WeakWolfe(extrapolate=1)  # type: ignore[arg-type]


def test_first_steps_are_checked_and_sanitised():
    """A first step of the wrong shape or dtype is rejected naming t_init; a non-finite or
    non-positive entry falls back to t0 for that problem only."""
    g = torch.Generator().manual_seed(1)
    x0 = _x0(g, 3, 2) * 0.3
    toy = make_toy(g, 3, 2, ["quad"] * 3, x0)
    for bad in (torch.ones(2, dtype=DT), torch.ones(3, dtype=torch.long), [1.0, 1.0, 1.0]):
        S = setup(toy, x0)
        S.prob.t_init = bad
        with pytest.raises(ValueError, match="t_init"):
            run(WeakWolfe(extrapolate=True), S)
    S = setup(toy, x0)
    S.prob.t_init = torch.tensor([math.nan, -1.0, 0.25], dtype=DT)
    run(WeakWolfe(extrapolate=True), S)
    assert [_trial_steps(S, b)[0] for b in range(3)] == pytest.approx([1.0, 1.0, 0.25], rel=1e-12)


# ----------------------------------------------------------------------------------------------
# armijo_after: a long bracketed search returns its lower bracket end
def _no_wolfe_kink() -> Setup:
    """phi(x) = max(-x, K (x - 1) - 1) with K = 2^52 on x0 = 0, d = 1 (exact in float64): sufficient
    decrease holds up to the kink at 1 (slope -1: the curvature condition fails) and fails at every
    representable step above it, so no step satisfies both weak Wolfe conditions."""
    K = 2.0**52
    toy = Toy(A=torch.zeros(1, 1, 1, dtype=DT), b=torch.zeros(1, 1, dtype=DT),
              w=torch.zeros(1, 1, dtype=DT), c=torch.zeros(1, 1, dtype=DT), lam=torch.ones(1, dtype=DT),
              aff=torch.tensor([[[-1.0], [K]]], dtype=DT), e=torch.tensor([[0.0, -K - 1.0]], dtype=DT),
              center=torch.zeros(1, 1, dtype=DT), radius=torch.full((1,), math.inf, dtype=DT),
              theta=torch.full((1,), -math.inf, dtype=DT), jump=torch.zeros(1, dtype=DT),
              feasible=torch.ones(1, dtype=torch.bool), lie=torch.zeros(1, 1, dtype=DT))
    return setup(toy, torch.zeros(1, 1, dtype=DT), d=torch.ones(1, 1, dtype=DT))


def test_armijo_after_returns_the_lower_bracket_end_of_a_failing_search():
    """GRANSO's search bisects towards the kink until the bracket tolerance and fails; with
    ``armijo_after=5`` it returns the step 1 (sufficient decrease, curvature failed) after the
    trials 1, 2, 1.5, 1.25, 1.125."""
    S = _no_wolfe_kink()
    plain = run(WeakWolfe(), S)
    assert int(plain.status[0]) == LS_BRACKETED and int(plain.evals[0]) > 30
    S = _no_wolfe_kink()
    res = run(WeakWolfe(armijo_after=5), S)
    assert int(res.status[0]) == LS_OK and int(res.evals[0]) == 5
    assert float(res.t[0]) == 1.0 and float(res.trial.phi[0]) == -1.0
    assert [float(x[0, 0]) for x, _, _ in S.rec.calls] == [1.0, 2.0, 1.5, 1.25, 1.125]
    # sufficient decrease at the returned step; the curvature condition fails there
    s0 = float(_s0(S)[0])
    assert float(res.trial.phi[0]) < float(S.prob.start.phi[0]) + 1e-4 * 1.0 * s0
    assert float((res.trial.gphi * S.d).sum()) <= 0.5 * s0


@given(data=batches(kinds=KINDS + ["linear"], min_B=1, max_B=8), t0=st.sampled_from([1.0, 16.0, 1024.0]),
       n_after=st.integers(1, 8))
def test_armijo_after_only_shortens_searches_and_keeps_sufficient_decrease(data, t0, n_after):
    """Searches that end within ``armijo_after`` trials are GRANSO's to the bit; the others end no
    later, and every accepted step satisfies sufficient decrease (weak Wolfe unless it was returned
    after ``armijo_after`` trials)."""
    B, n, kinds, active, seed = data
    g = torch.Generator().manual_seed(seed)
    x0 = _x0(g, B, n)
    toy = make_toy(g, B, n, kinds, x0)
    S1 = setup(toy, x0, active=active)
    plain = run(WeakWolfe(t0=t0), S1)
    S2 = setup(toy, x0, active=active)
    ls = WeakWolfe(t0=t0, armijo_after=n_after)
    res = run(ls, S2)
    check_calls(S2, res)
    same = plain.evals <= n_after
    assert torch.equal(res.t[same], plain.t[same]) and torch.equal(res.status[same], plain.status[same])
    assert torch.equal(res.evals[same], plain.evals[same])
    assert bool((res.evals <= plain.evals).all())
    ok = active & (res.status == LS_OK)
    assert bool((res.t[ok] > 0).all())
    rows = torch.arange(B)
    xt = x0 + res.t.unsqueeze(1) * S2.d
    s0 = _s0(S2)
    armijo = S2.toy.phi(xt, rows) < S2.prob.start.phi + ls.c1 * res.t * s0
    wolfe = (S2.toy.grad(xt, rows) * S2.d).sum(1) > ls.c2 * s0
    assert bool(armijo[ok].all())
    assert bool((wolfe | (res.evals >= n_after))[ok].all())
    # a returned lower bracket end is a step the search took: it is among the recorded trials
    for b in torch.nonzero(ok & ~wolfe).flatten().tolist():
        steps = [x[list(r.tolist()).index(b)] for x, r, _ in S2.rec.calls if b in r.tolist()]
        assert any(torch.equal(p, res.trial.x[b]) for p in steps)


def test_armijo_after_is_validated():
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="armijo_after"):
            WeakWolfe(armijo_after=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="armijo_after"):
        WeakWolfe(backtracking=True, armijo_after=3)
