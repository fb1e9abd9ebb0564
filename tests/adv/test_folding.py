"""Constraint folding: exact zero sets, values, gradients, the l-infinity hinge reformulation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adv.folding import FOLDINGS, fold, fold_normaliser, fold_value_grad, get_folding

KINDS = ["l2", "l1", "max", "sumsq"]

# zeros, negatives, tiny (subnormal-range) and huge magnitudes, infinities
_special = st.sampled_from([0.0, -0.0, 1e-310, -1e-310, 5e-324, 1e-200, -1e-200, 1e300, -1e300, 1.0, -1.0,
                            math.inf, -math.inf])
_entry = st.one_of(st.floats(allow_nan=False, allow_infinity=True, width=64), _special)
_rows = st.lists(st.lists(_entry, min_size=1, max_size=12), min_size=1, max_size=5).filter(
    lambda rows: len({len(r) for r in rows}) == 1)


@pytest.mark.parametrize("kind", KINDS)
@given(rows=_rows)
def test_zero_exactly_when_all_nonpositive(kind, rows):
    v = torch.tensor(rows, dtype=torch.float64)
    out = fold(v, kind)
    assert out.shape == (v.shape[0],)
    assert not torch.isnan(out).any()
    assert (out >= 0).all()
    feasible = (v <= 0).all(dim=1)
    assert torch.equal(out == 0, feasible)
    assert torch.equal(out <= 0, feasible)


@pytest.mark.parametrize("kind", KINDS)
@given(rows=_rows)
def test_zero_set_float32(kind, rows):
    v = torch.tensor(rows, dtype=torch.float64).to(torch.float32)  # tiny values may flush to 0 here
    out = fold(v, kind)
    assert torch.equal(out == 0, (v <= 0).all(dim=1))


@given(delta=st.lists(st.floats(-2, 2, allow_nan=False, width=64), min_size=1, max_size=20),
       eps=st.floats(0, 1.5, allow_nan=False, width=64), kind=st.sampled_from(KINDS))
def test_linf_hinge_reformulation_equals_the_ball(delta, eps, kind):
    d = torch.tensor([delta], dtype=torch.float64)
    folded = fold(d.abs() - eps, kind)
    inside = bool(d.abs().max() <= eps)
    assert bool(folded[0] == 0) == inside
    assert bool(folded[0] > 0) == (not inside)


def test_values():
    v = torch.tensor([[3.0, -1.0, 4.0, 0.0], [-1.0, -2.0, -3.0, -4.0]], dtype=torch.float64)
    assert torch.allclose(fold(v, "l2"), torch.tensor([5.0, 0.0], dtype=torch.float64))
    assert torch.allclose(fold(v, "l1"), torch.tensor([7.0, 0.0], dtype=torch.float64))
    assert torch.allclose(fold(v, "max"), torch.tensor([4.0, 0.0], dtype=torch.float64))
    assert torch.allclose(fold(v, "sumsq"), torch.tensor([25.0, 0.0], dtype=torch.float64))
    assert fold(v, "linf").tolist() == fold(v, "max").tolist()
    assert set(KINDS) <= set(FOLDINGS)


def test_l2_fold_scaled_against_underflow_and_overflow():
    tiny = torch.tensor([[3e-200, 4e-200]], dtype=torch.float64)
    assert torch.allclose(fold(tiny, "l2"), torch.tensor([5e-200], dtype=torch.float64), rtol=1e-12)
    huge = torch.tensor([[3e200, 4e200]], dtype=torch.float64)
    assert torch.allclose(fold(huge, "l2"), torch.tensor([5e200], dtype=torch.float64), rtol=1e-12)
    assert fold(torch.tensor([[math.inf, 1.0]]), "l2").item() == math.inf


def test_gradients():
    v = torch.tensor([[3e-150, -1.0, 4e-150], [0.5, 2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fold(v, "l2").sum(), v)
    assert torch.allclose(g[0], torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64))
    p = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(g[1], p / p.norm())
    v0 = torch.full((1, 3), -1.0, dtype=torch.float64, requires_grad=True)
    for kind in KINDS:
        (g0,) = torch.autograd.grad(fold(v0, kind).sum(), v0)
        assert torch.equal(g0, torch.zeros_like(g0)), kind


def test_unknown_kind_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'sumsq'"):
        fold(torch.zeros(1, 2), "sumsquare")
    with pytest.raises(ValueError, match="unknown folding kind"):
        get_folding("zzz")
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        fold(torch.zeros(3), "l2")


def test_normaliser_and_callable():
    n = 16
    a = 0.3
    v = torch.full((1, n), a, dtype=torch.float64)
    for kind in ("l2", "l1", "max"):
        assert fold(v, kind).item() / fold_normaliser(kind, n) == pytest.approx(a)
    assert fold(v, "sumsq").item() / fold_normaliser("sumsq", n) == pytest.approx(a * a)
    assert fold(v, lambda t: t.clamp(min=0).sum(1) * 2).item() == pytest.approx(2 * n * a)
    assert fold(torch.zeros(2, 0), "l2").tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kind", KINDS)
@given(rows=_rows)
def test_value_grad_is_fold_and_its_autograd_gradient(kind, rows):
    v = torch.tensor(rows, dtype=torch.float64)
    val, g = fold_value_grad(v, kind)
    assert torch.equal(val, fold(v, kind))  # the value to the bit
    vv = v.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(fold(vv, kind).sum(), vv)
    ok = torch.isfinite(val)  # rows that fold to inf have no meaningful gradient
    torch.testing.assert_close(g[ok], ga[ok], rtol=1e-12, atol=0)
    assert g.shape == v.shape


def test_value_grad_edge_rows_and_callable():
    v = torch.tensor([[-1.0, -2.0, 0.0], [2.0, 2.0, -1.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    val, g = fold_value_grad(v, "max")
    assert val.tolist() == [0.0, 2.0, 4.0]
    # ties of max(v+) split the gradient (row 0: all three positive parts are 0), and the positive
    # part passes it only where v >= 0: autograd's choices
    assert g.tolist() == [[0.0, 0.0, 1 / 3], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    assert fold_value_grad(v, "l1")[1].tolist() == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    val, g = fold_value_grad(v, "l2")
    assert torch.allclose(g[2], torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64))
    assert g[0].tolist() == [0.0, 0.0, 0.0]
    assert fold_value_grad(v, lambda t: t.clamp(min=0).sum(1)) is None
    val, g = fold_value_grad(torch.zeros(2, 0), "l2")
    assert val.shape == (2,) and g.shape == (2, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_entries_fold_to_nan(kind):
    v = torch.tensor([[math.nan, 1.0], [-1.0, math.nan], [-1.0, -2.0]], dtype=torch.float64)
    out = fold(v, kind)
    assert torch.isnan(out[:2]).all(), out  # never 0: a NaN constraint is not satisfied
    assert out[2].item() == 0.0
    assert torch.equal(fold_value_grad(v, kind)[0].isnan(), out.isnan())
