"""Distances: lp norms against NumPy, projections (feasible, idempotent, nearest), perceptual distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adv.distances import (
    Distance,
    Lp,
    Perceptual,
    classifier_features,
    parse_distance,
    project_l1_box,
)

P_VALUES = [1.0, 2.0, math.inf, 1.5, 0.5]

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
batches = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=finite)


# ---------------------------------------------------------------- lp norms


@pytest.mark.parametrize("p", P_VALUES)
@given(a=batches, data=st.data())
@example(a=np.zeros((2, 3)), data=None)
def test_lp_matches_numpy(p, a, data):
    b = (
        np.zeros_like(a)
        if data is None
        else data.draw(arrays(np.float64, a.shape, elements=finite))
    )
    got = Lp(p)(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([np.linalg.norm(a[i] - b[i], ord=p) for i in range(a.shape[0])])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
@given(a=batches)
@example(a=np.zeros((2, 3)))
@example(a=np.array([[0.0, 1.0, -2.0], [1e-200, 0.0, 0.0]]))
def test_norm_grad_matches_autograd(p, a):
    d = torch.from_numpy(a).reshape(a.shape[0], 1, -1)
    g = Lp(p).norm_grad(d)
    dd = d.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(Lp(p).norm(dd).sum(), dd)
    assert g.shape == (a.shape[0], a.shape[1])
    torch.testing.assert_close(g, ga.reshape(g.shape), rtol=1e-10, atol=1e-300)


def test_norm_grad_only_in_closed_form_for_p_at_least_one():
    d = torch.randn(2, 4, dtype=torch.float64)
    assert Lp(0.5).norm_grad(d) is None and Lp(math.inf).norm_grad(d) is None


def test_norm_value_grad_is_norm_and_rejects_non_tensors():
    d = torch.randn(3, 2, 5, dtype=torch.float64)
    for p in (1.0, 1.5, 2.0):
        val, g = Lp(p).norm_value_grad(d)
        assert torch.equal(val, Lp(p).norm(d)) and torch.equal(g, Lp(p).norm_grad(d))
    with pytest.raises(TypeError, match="batched tensor"):
        Lp(2.0).norm_value_grad([[1.0, 2.0]])
    with pytest.raises(ValueError, match="0-d tensor"):
        Lp(2.0).norm_grad(torch.tensor(1.0))


def test_lp_shapes_dtype_and_gradient():
    x = torch.rand(3, 2, 4, 4, dtype=torch.float32, requires_grad=True)
    xr = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    for p in P_VALUES:
        d = Lp(p)(x, xr)
        assert d.shape == (3,) and d.dtype == torch.float32
        (g,) = torch.autograd.grad(d.sum(), x)
        assert torch.isfinite(g).all()
    # the norm of a 4-d perturbation is the norm of its flattening
    delta = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(
        Lp(1.5).norm(delta), Lp(1.5).norm(delta.reshape(2, -1)), rtol=0, atol=0
    )


def test_lp_names_and_dual():
    assert [Lp(p).name for p in (1, 2, math.inf, 1.5, 0.5, 8)] == [
        "l1",
        "l2",
        "linf",
        "l1.5",
        "l0.5",
        "l8",
    ]
    assert Lp(1).dual_exponent() == math.inf
    assert Lp(math.inf).dual_exponent() == 1.0
    assert Lp(2).dual_exponent() == 2.0
    assert Lp(1.5).dual_exponent() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="p >= 1"):
        Lp(0.5).dual_exponent()
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="p"):
            Lp(bad)
    with pytest.raises(NotImplementedError, match="p in"):
        Lp(1.5).project(torch.zeros(1, 3), 1.0)


def test_parse_distance():
    assert parse_distance("l2") == Lp(2)
    assert parse_distance("Linf") == Lp(math.inf)
    assert parse_distance("linf") == Lp(math.inf)
    assert parse_distance("L1") == Lp(1)
    assert parse_distance("l1.5") == Lp(1.5)
    assert parse_distance("lp:1.5") == Lp(1.5)
    assert parse_distance("lp:inf") == Lp(math.inf)
    assert parse_distance(2) == Lp(2)
    assert parse_distance(float("inf")) == Lp(math.inf)
    d = Lp(8)
    assert parse_distance(d) is d
    assert isinstance(parse_distance("l2"), Distance)
    with pytest.raises(ValueError, match="did you mean 'linf'"):
        parse_distance("lnf")
    with pytest.raises(ValueError, match="unknown distance"):
        parse_distance("euclid")
    with pytest.raises(ValueError, match="Perceptual"):
        parse_distance("perceptual")
    with pytest.raises(ValueError, match="p"):
        parse_distance("l0")
    with pytest.raises(TypeError):
        parse_distance(True)


# ---------------------------------------------------------------- projections


def _eps_for(v: torch.Tensor, p: float, data) -> torch.Tensor:
    """Radii (B,) between 0.05x and 2x each sample's norm (so both inside and outside occur)."""
    nrm = Lp(p).norm(v)
    f = torch.tensor(
        [data.draw(st.floats(0.05, 2.0)) for _ in range(v.shape[0])], dtype=torch.float64
    )
    return torch.where(nrm > 0, nrm * f, torch.full_like(nrm, 0.5))


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@given(a=batches, data=st.data())
def test_projection_feasible_idempotent_nearest(p, a, data):
    v = torch.from_numpy(a)
    eps = _eps_for(v, p, data)
    lp = Lp(p)
    w = lp.project(v, eps)
    assert w.shape == v.shape
    assert (lp.norm(w) <= eps * (1 + 1e-12) + 1e-12).all()
    torch.testing.assert_close(lp.project(w, eps), w, rtol=1e-12, atol=1e-12)
    inside = lp.norm(v) <= eps
    torch.testing.assert_close(w[inside], v[inside], rtol=0, atol=0)
    if p == 2.0:
        ref = v * torch.clamp(eps / lp.norm(v).clamp(min=1e-300), max=1.0)[:, None]
        torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)
    elif math.isinf(p):
        torch.testing.assert_close(
            w, torch.maximum(torch.minimum(v, eps[:, None]), -eps[:, None]), rtol=0, atol=0
        )
    else:
        # KKT of min ||w - v||^2 s.t. ||w||_1 <= eps: w = soft(v, theta), theta >= 0,
        # theta > 0 only if ||w||_1 = eps; |v_i| <= theta where w_i = 0
        for i in range(v.shape[0]):
            if inside[i]:
                continue
            nz = w[i] != 0
            assert nz.any()
            theta = (v[i][nz] - w[i][nz]) * torch.sign(w[i][nz])
            assert (theta > -1e-9).all()
            assert torch.allclose(theta, theta.mean().expand_as(theta), atol=1e-9)
            assert (v[i][~nz].abs() <= theta.mean() + 1e-9).all()
            assert lp.norm(w[i : i + 1]).item() == pytest.approx(eps[i].item(), rel=1e-10)
    # variational inequality <v - w, c - w> <= 0 for random feasible c
    c = lp.project(
        torch.randn(16, *v.shape, dtype=torch.float64).reshape(-1, v.shape[1]) * 5, eps.repeat(16)
    )
    c = c.reshape(16, *v.shape)
    ip = ((v - w).unsqueeze(0) * (c - w.unsqueeze(0))).sum(-1)
    assert (ip <= 1e-8 * (1 + v.abs().sum())).all()


def test_projection_batched_eps_and_nan_isolation():
    v = torch.randn(3, 10, dtype=torch.float64)
    v[1, 4] = float("nan")
    for p in (1.0, 2.0, math.inf):
        w = Lp(p).project(v, torch.tensor([0.5, 0.5, 0.25], dtype=torch.float64))
        assert torch.isfinite(w[[0, 2]]).all()
        assert (
            Lp(p).norm(w[[0, 2]]) <= torch.tensor([0.5, 0.25], dtype=torch.float64) * (1 + 1e-12)
        ).all()


def _l1_box_reference(w, eps, lo, hi):
    """Bisection on the soft threshold (float64), the naive reference."""
    a, sgn = w.abs(), torch.sign(w)
    cap = torch.where(w >= 0, hi, -lo)

    def at(lam):
        return sgn * torch.minimum(torch.clamp(a - lam, min=0), cap)

    if at(0.0).abs().sum() <= eps:
        return at(0.0)
    lo_l, hi_l = 0.0, float(a.max())
    for _ in range(200):
        mid = 0.5 * (lo_l + hi_l)
        if at(mid).abs().sum() > eps:
            lo_l = mid
        else:
            hi_l = mid
    return at(hi_l)


@given(
    a=arrays(
        np.float64, st.tuples(st.integers(1, 3), st.integers(1, 15)), elements=st.floats(-1, 1)
    ),
    data=st.data(),
)
def test_l1_box_projection_matches_reference_and_kkt(a, data):
    w = torch.from_numpy(a)
    x = torch.from_numpy(data.draw(arrays(np.float64, a.shape, elements=st.floats(0, 1))))
    lo, hi = -x, 1 - x
    eps = torch.tensor(
        [data.draw(st.floats(0.01, 3.0)) for _ in range(w.shape[0])], dtype=torch.float64
    )
    d = project_l1_box(w, eps, lo, hi)
    assert (d >= lo - 1e-12).all() and (d <= hi + 1e-12).all()
    assert (d.abs().sum(1) <= eps * (1 + 1e-10) + 1e-12).all()
    for i in range(w.shape[0]):
        ref = _l1_box_reference(w[i], float(eps[i]), lo[i], hi[i])
        torch.testing.assert_close(d[i], ref, rtol=1e-8, atol=1e-8)
    # idempotent
    torch.testing.assert_close(project_l1_box(d, eps, lo, hi), d, rtol=1e-10, atol=1e-10)
    # variational inequality against random feasible points of the intersection
    c = project_l1_box(
        torch.randn(32, *w.shape, dtype=torch.float64).reshape(-1, w.shape[1]),
        eps.repeat(32),
        lo.repeat(32, 1),
        hi.repeat(32, 1),
    ).reshape(32, *w.shape)
    ip = ((w - d).unsqueeze(0) * (c - d.unsqueeze(0))).sum(-1)
    assert (ip <= 1e-9).all()


# ---------------------------------------------------------------- perceptual


class TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(5 * 4 * 4, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.r1 = torch.nn.ReLU()
        self.r2 = torch.nn.ReLU()

    def maps(self, x):
        h1 = self.r1(self.c1(x))
        h2 = self.r2(self.c2(h1))
        return [h1, h2]

    def forward(self, x):
        h1, h2 = self.maps(x)
        return self.fc(h2.flatten(1))


def _naive_perceptual(maps_a, maps_b):
    """Per-sample, per-position loop."""
    B = maps_a[0].shape[0]
    out = []
    for i in range(B):
        total = 0.0
        for fa, fb in zip(maps_a, maps_b, strict=True):
            C, H, W = fa.shape[1:]
            acc = 0.0
            for h in range(H):
                for w in range(W):
                    u = fa[i, :, h, w]
                    v = fb[i, :, h, w]
                    u = u / (torch.sqrt((u * u).sum()) + 1e-10)
                    v = v / (torch.sqrt((v * v).sum()) + 1e-10)
                    acc += float(((u - v) ** 2).sum())
            total += acc / (H * W)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_perceptual_matches_naive_loop_and_properties():
    net = TinyFeatures().double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    xr = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    d = Perceptual(net.maps)
    dsq = Perceptual(net.maps, squared=True)
    got = d(x, xr)
    with torch.no_grad():
        want = _naive_perceptual(net.maps(x), net.maps(xr))
    torch.testing.assert_close(dsq(x, xr), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got**2, dsq(x, xr), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d(xr, x), got, rtol=1e-10, atol=1e-12)  # symmetric
    torch.testing.assert_close(d(x, x), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert d.name == "perceptual" and got.shape == (3,) and got.dtype == torch.float64
    xg = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(dsq(xg, xr).sum(), xg)
    assert torch.isfinite(gr).all() and gr.abs().sum() > 0


def test_classifier_features_default_and_named_layers():
    net = TinyFeatures().double()
    feats = classifier_features(net)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    maps = feats(x)
    ref = net.maps(x)
    assert len(maps) == 2
    for a, b in zip(maps, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # rank-2 activations become (B, C, 1, 1); unknown names are rejected
    named = classifier_features(net, ["c1", "fc"])
    m2 = named(x)
    assert m2[0].shape == (2, 4, 8, 8) and m2[1].shape == (2, 6, 1, 1)
    with pytest.raises(ValueError, match="no submodule named 'c3'"):
        classifier_features(net, ["c3"])
    # hooks record only inside the features call
    net(x)
    assert len(feats(x)) == 2
    # Perceptual on the classifier's own features
    d = Perceptual(feats)(x, torch.rand(2, 3, 8, 8, dtype=torch.float64))
    assert d.shape == (2,) and (d > 0).all()
    feats.remove()
    named.remove()
    assert not net.c1._forward_hooks and not net.r1._forward_hooks


def test_classifier_features_functional_activations_fall_back_to_convs():
    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.relu(self.c(x)).flatten(1)

    net = F()
    maps = classifier_features(net)(torch.rand(2, 1, 5, 5))
    assert len(maps) == 1 and maps[0].shape == (2, 2, 3, 3)
