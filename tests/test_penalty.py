"""Tests of the l1 penalty and the violation measures in ``ncvx_core/penalty.py`` (spec section 1)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ncvx_core.penalty import penalty_grad, penalty_value, violation
from ncvx_core.problem import Evaluation

DT = torch.float64

# values with many exact zeros so the tie rules are exercised
vals = st.one_of(st.just(0.0), st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64))


@st.composite
def evaluations(draw, with_grad=True):
    k = draw(st.integers(1, 5))
    n = draw(st.integers(1, 4))
    p = draw(st.integers(0, 4))
    q = draw(st.integers(0, 4))
    ci = draw(arrays(np.float64, (k, p), elements=vals))
    ce = draw(arrays(np.float64, (k, q), elements=vals))
    f = draw(arrays(np.float64, (k,), elements=vals))
    ev = dict(f=f, ci=ci, ce=ce)
    if with_grad:
        el = st.floats(-5, 5, allow_nan=False, width=64)
        ev["g"] = draw(arrays(np.float64, (k, n), elements=el))
        ev["Ji"] = draw(arrays(np.float64, (k, p, n), elements=el))
        ev["Je"] = draw(arrays(np.float64, (k, q, n), elements=el))
    return ev


def to_eval(ev: dict) -> Evaluation:
    return Evaluation(*(torch.from_numpy(np.ascontiguousarray(ev[name])) if name in ev else None
                        for name in ("f", "ci", "ce", "g", "Ji", "Je")))


tols = st.sampled_from([0.0, 1e-6, 0.5, 3.0])


@given(ev=evaluations(), ti=tols, te=tols)
def test_violation_matches_numpy(ev, ti, te):
    E = to_eval(ev)
    V = violation(E, ti, te)
    ci, ce = ev["ci"], ev["ce"]
    k = ci.shape[0]
    vi, ve = np.maximum(ci, 0), np.abs(ce)
    v1 = vi.sum(1) + ve.sum(1)
    tvi = vi.max(1) if ci.shape[1] else np.zeros(k)
    tve = ve.max(1) if ce.shape[1] else np.zeros(k)
    np.testing.assert_allclose(V.v1.numpy(), v1, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(V.tvi.numpy(), tvi)
    np.testing.assert_array_equal(V.tve.numpy(), tve)
    np.testing.assert_array_equal(V.tv.numpy(), np.maximum(tvi, tve))
    np.testing.assert_array_equal(V.feasible.numpy(), (tvi <= ti) & (tve <= te))
    for t in (V.v1, V.tvi, V.tve, V.tv):
        assert t.shape == (k,) and bool((t >= 0).all())
    # subgradient of v1 with the tie rules: ci >= 0 active, sign(ce = 0) = +1
    gv1 = np.zeros_like(ev["g"])
    for j in range(ci.shape[1]):
        gv1 += (ci[:, j] >= 0)[:, None] * ev["Ji"][:, j]
    for j in range(ce.shape[1]):
        gv1 += np.where(ce[:, j] >= 0, 1.0, -1.0)[:, None] * ev["Je"][:, j]
    np.testing.assert_allclose(V.gv1.numpy(), gv1, rtol=1e-13, atol=1e-13)
    # penalty
    for mu in (0.0, 0.3, 1.0):
        m = torch.full((k,), mu, dtype=DT)
        np.testing.assert_allclose(penalty_value(E.f, V, m).numpy(), mu * ev["f"] + v1, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(penalty_grad(E.g, V, m).numpy(), mu * ev["g"] + gv1, rtol=1e-13, atol=1e-13)


@given(ev=evaluations())
def test_feasible_points_have_zero_violation(ev):
    ev["ci"] = -np.abs(ev["ci"])  # ci <= 0 (including exact zeros)
    ev["ce"] = np.zeros_like(ev["ce"])
    V = violation(to_eval(ev), 0.0, 0.0)
    for t in (V.v1, V.tvi, V.tve, V.tv):
        assert bool((t == 0).all())
    assert bool(V.feasible.all())  # zero tolerances allowed (non-strict)


@given(ev=evaluations(with_grad=False))
def test_value_only_evaluation_has_no_subgradient(ev):
    V = violation(to_eval(ev), 1e-6, 1e-6)
    assert V.gv1 is None


def test_feasibility_is_non_strict_at_the_tolerance():
    E = Evaluation(torch.zeros(4, dtype=DT),
                   torch.tensor([[0.5], [0.5 + 2**-20], [-1.0], [0.25]], dtype=DT),
                   torch.tensor([[0.0], [0.0], [-0.25], [0.25 + 2**-20]], dtype=DT))
    V = violation(E, 0.5, 0.25)
    assert V.feasible.tolist() == [True, False, True, False]
    assert V.tvi.tolist() == [0.5, 0.5 + 2**-20, 0.0, 0.25]
    assert V.tve.tolist() == [0.0, 0.0, 0.25, 0.25 + 2**-20]


def test_tie_rules_in_subgradient():
    n = 2
    Ji = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=DT)  # (1, 2, 2)
    Je = torch.tensor([[[3.0, 5.0], [7.0, 11.0]]], dtype=DT)
    E = Evaluation(torch.zeros(1, dtype=DT), torch.tensor([[0.0, -1e-300]], dtype=DT),
                   torch.tensor([[0.0, -0.0]], dtype=DT), torch.zeros(1, n, dtype=DT), Ji, Je)
    V = violation(E, 1e-6, 1e-6)
    # ci = 0 counted active (row 0 of Ji), ci < 0 not; ce = 0 and ce = -0.0 get sign +1
    assert V.gv1.tolist() == [[1.0 + 3.0 + 7.0, 5.0 + 11.0]]
    assert V.v1.tolist() == [0.0]
    assert bool(V.feasible.all())


def test_nan_constraints_are_not_feasible():
    nan = math.nan
    E = Evaluation(torch.zeros(4, dtype=DT),
                   torch.tensor([[nan, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, math.inf]], dtype=DT),
                   torch.tensor([[0.0], [nan], [0.0], [0.0]], dtype=DT))
    V = violation(E, 1e-6, 1e-6)
    assert V.feasible.tolist() == [False, False, True, False]
    assert not math.isfinite(float(V.v1[0])) and not math.isfinite(float(V.v1[1]))
    # huge tolerances do not make NaN feasible either
    assert violation(E, math.inf, math.inf).feasible.tolist() == [False, False, True, True]


def test_unconstrained_measures_are_zero():
    E = Evaluation(torch.tensor([1.0, -2.0], dtype=DT), torch.zeros(2, 0, dtype=DT), torch.zeros(2, 0, dtype=DT),
                   torch.ones(2, 3, dtype=DT), torch.zeros(2, 0, 3, dtype=DT), torch.zeros(2, 0, 3, dtype=DT))
    V = violation(E, 0.0, 0.0)
    assert V.v1.tolist() == [0.0, 0.0] and V.tv.tolist() == [0.0, 0.0]
    assert V.feasible.tolist() == [True, True]
    assert torch.equal(V.gv1, torch.zeros(2, 3, dtype=DT))
    mu = torch.tensor([1.0, 0.5], dtype=DT)
    assert penalty_value(E.f, V, mu).tolist() == [1.0, -1.0]
    assert penalty_grad(E.g, V, mu).tolist() == [[1.0] * 3, [0.5] * 3]
