"""Problem builders: objective, grouped and folded constraints, box handling, slack layouts, idx."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adv.distances import Lp
from adv.losses import cross_entropy, margin
from adv.problems import MaxLossProblem, MinDistortionProblem, resolve_ce_clip
from ncvx_core import SolverOptions, solve

D = torch.float64


class Affine(nn.Module):
    def __init__(self, n: int, K: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(K, n, generator=g, dtype=D) * 0.5)
        self.b = nn.Parameter(torch.zeros(K, dtype=D))

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = (0.5 + 0.1 * torch.randn(4, 2, 3, generator=g, dtype=D)).clamp(0, 1)
    model = Affine(6).eval()
    y = model(x).argmax(1)
    return model, x, y


def test_max_loss_objective_and_constraint_groups(data):
    model, x, y = data
    eps = torch.full((4,), 0.05, dtype=D)
    p = MaxLossProblem(model, x, y, "linf", eps, loss="margin", box="both")
    assert p.constraint_names == ["distance", "box"]
    z = p.x0(x)
    assert z.shape == (4, 6) and p.n_var == 6
    idx = torch.arange(4)
    f, ci, ce = p(z, idx)
    assert ce is None and ci.shape == (4, 2) and f.shape == (4,)
    assert torch.allclose(f, -margin(model(x), y).clamp(max=0.01))
    assert torch.equal(ci, torch.zeros_like(ci))  # the clean point: inside the ball and the box
    # one pixel 0.08 beyond the ball and 0.03 beyond the box (l2 fold, box divided by sqrt(n))
    z2 = z.clone()
    z2[0, 0] = 1.03 if x[0].flatten()[0] > 0.5 else -0.03
    d0 = (z2[0, 0] - x[0].flatten()[0]).abs()
    f2, ci2, _ = p(z2, idx)
    assert ci2[0, 0].item() == pytest.approx((d0 - 0.05).item())
    assert ci2[0, 1].item() == pytest.approx(0.03 / math.sqrt(6))
    assert torch.equal(ci2[1:], torch.zeros_like(ci2[1:]))


def test_linf_folded_hinge_zero_iff_inside_ball(data):
    model, x, y = data
    eps = torch.full((4,), 0.05, dtype=D)
    p = MaxLossProblem(model, x, y, "linf", eps, box="clamp")
    assert p.constraint_names == ["distance"]
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        delta = (torch.rand(4, 6, generator=g, dtype=D) * 2 - 1) * 0.06
        _, ci, _ = p(x.reshape(4, -1) + delta, torch.arange(4))
        inside = delta.abs().amax(1) <= 0.05
        assert torch.equal(ci[:, 0] == 0, inside)
    p_orig = MaxLossProblem(model, x, y, "linf", eps, box="none", linf_form="original")
    _, ci, _ = p_orig(x.reshape(4, -1) + 0.07, torch.arange(4))
    assert torch.allclose(ci[:, 0], torch.full((4,), 0.02, dtype=D))


@pytest.mark.parametrize("dist", ["l1", "l2", "l1.5", Lp(3)])
def test_single_distance_constraint(data, dist):
    model, x, y = data
    eps = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
    p = MaxLossProblem(model, x, y, dist, eps, box="fold")
    z = x.reshape(4, -1) + 0.1
    _, ci, _ = p(z, torch.arange(4))
    d = Lp(p.distance.p)(z.reshape(x.shape), x)
    assert torch.allclose(ci[:, 0], d - eps)


def test_idx_indexes_per_sample_data(data):
    model, x, y = data
    eps = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
    p = MaxLossProblem(model, x, y, "l2", eps, loss="ce", ce_clip=None, num_classes=3)
    z = x.reshape(4, -1) + 0.05
    f_all, ci_all, _ = p(z, torch.arange(4))
    rows = torch.tensor([3, 1])
    f_sub, ci_sub, _ = p(z[rows], rows)
    assert torch.allclose(f_sub, f_all[rows]) and torch.allclose(ci_sub, ci_all[rows])
    # restricted problem: the solver's idx are positions within the subset
    sub = p.rows(rows)
    f_r, ci_r, _ = sub(z[rows][[1]], torch.tensor([1]))
    assert torch.allclose(f_r, f_all[[1]]) and torch.allclose(ci_r, ci_all[[1]])
    assert torch.allclose(f_all, -cross_entropy(model(z.reshape(x.shape)), y))


def test_ce_clip_choices(data):
    model, x, y = data
    assert resolve_ce_clip("paper", 10) == 10.0
    assert resolve_ce_clip("code", 10) == pytest.approx(math.log(10) + 0.1)
    assert resolve_ce_clip(3.5, 10) == 3.5
    assert resolve_ce_clip(None, 10) is None
    with pytest.raises(ValueError, match="ce_clip"):
        resolve_ce_clip("papr", 10)
    with pytest.raises(ValueError, match="ce_clip"):
        resolve_ce_clip(-1.0, 10)
    p = MaxLossProblem(model, x, y, "l2", 0.1, loss="ce", ce_clip="code", num_classes=3)
    assert p.clip == pytest.approx(math.log(3) + 0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        MaxLossProblem(model, x, y, "l2", 0.1, loss="cw")
    with pytest.raises(ValueError, match="box"):
        MaxLossProblem(model, x, y, "l2", 0.1, box="clip")
    with pytest.raises(ValueError, match="folding"):
        MaxLossProblem(model, x, y, "linf", 0.1, folding="l3")


def test_clamp_gradients(data):
    model, x, y = data
    z = x.reshape(4, -1).clone()
    z[:, 0] = 1.2  # outside the box
    for grad, expect_zero in (("ste", False), ("plain", True)):
        p = MaxLossProblem(model, x, y, "l2", 10.0, box="clamp", clamp_grad=grad, margin_clip=None)
        zz = z.clone().requires_grad_(True)
        f, _, _ = p(zz, torch.arange(4))
        (g,) = torch.autograd.grad(f.sum(), zz)
        assert bool((g[:, 0] == 0).all()) == expect_zero
        # the model saw the clamped point
        assert torch.allclose(f, -margin(model(z.clamp(0, 1).reshape(x.shape)), y))


def test_min_distortion_layouts(data):
    model, x, y = data
    n = 6
    p = MinDistortionProblem(model, x, y, "linf", box="both")
    assert p.n_var == n + 1 and p.constraint_names == ["misclassification", "distance", "box"]
    xs = x + 0.02 * torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 1.0], dtype=D).reshape(1, 2, 3)
    z = p.x0(xs, torch.arange(4))
    assert torch.allclose(z[:, -1], torch.full((4,), 0.04, dtype=D))
    f, ci, _ = p(z, torch.arange(4))
    assert torch.allclose(f, 0.04 * math.sqrt(n) * torch.ones(4, dtype=D))
    assert torch.allclose(ci[:, 0], -margin(model(xs), y) + 1e-6)
    assert torch.equal(ci[:, 1], torch.zeros(4, dtype=D))  # t = max |delta|: on the boundary
    assert torch.equal(p.to_image(z), xs)
    z[:, -1] = 0.03
    _, ci, _ = p(z, torch.arange(4))
    assert (ci[:, 1] > 0).all()
    p1 = MinDistortionProblem(model, x, y, "l1", l1_slack=True, box="clamp")
    assert p1.n_var == 2 * n and p1.constraint_names == ["misclassification", "distance"]
    z1 = p1.x0(xs, torch.arange(4))
    f1, ci1, _ = p1(z1, torch.arange(4))
    assert torch.allclose(f1, (xs - x).abs().flatten(1).sum(1))
    assert torch.equal(ci1[:, 1], torch.zeros(4, dtype=D))
    p2 = MinDistortionProblem(model, x, y, "l2", box="none", linf_scale=2.0)
    f2, ci2, _ = p2(p2.x0(xs), torch.arange(4))
    assert ci2.shape == (4, 1) and torch.allclose(f2, (xs - x).flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="l1_slack"):
        MinDistortionProblem(model, x, y, "l2", l1_slack=True)
    pscale = MinDistortionProblem(model, x, y, "linf", linf_scale=2.0)
    fs, _, _ = pscale(pscale.x0(xs), torch.arange(4))
    assert torch.allclose(fs, torch.full((4,), 0.08, dtype=D))


def test_targeted_constraint(data):
    model, x, y = data
    target = (y + 1) % 3
    p = MinDistortionProblem(model, x, y, "l2", target=target, margin_offset=0.0)
    _, ci, _ = p(p.x0(x), torch.arange(4))
    assert torch.allclose(ci[:, 0], -margin(model(x), y, target))


def test_min_distortion_problem_solves_with_ncvx(data):
    """The problem object plugs straight into ncvx_core.solve (subset form, on a compacted subset)."""
    torch.manual_seed(0)
    n = 5
    w = torch.tensor([0.3, -0.2, 0.25, 0.1, -0.15], dtype=D)

    class Lin(nn.Module):
        def forward(self, x):
            g = x.flatten(1) @ w - 0.5 * w.sum() - 0.05
            return torch.stack([torch.zeros_like(g), g], 1)

    model = Lin()
    x = torch.full((3, n), 0.5, dtype=D) + torch.tensor([[0.0], [0.01], [-0.01]], dtype=D)
    y = torch.zeros(3, dtype=torch.long)
    p = MinDistortionProblem(model, x, y, "l2", box="none", margin_offset=0.0)
    rows = torch.tensor([0, 2])
    res = solve(p.rows(rows), p.x0(x[rows] + 0.01, rows),
                SolverOptions(print_level=0, maxit=200, opt_tol=1e-10, viol_ineq_tol=1e-10))
    g = x[rows] @ w - 0.5 * w.sum() - 0.05
    ref = g.abs() / w.norm()
    assert torch.allclose(res.best.f, ref, rtol=1e-4)


# ---------------------------------------------------------------- gradients without autograd
def _features(x):
    return [x, torch.relu(x - 0.5)]


def _custom_fold(v):
    return v.clamp(min=0).pow(3).sum(1)


_MAX_CASES = [
    dict(distance="linf"),
    dict(distance="linf", folding="l1", box="fold"),
    dict(distance="linf", folding="max", box="clamp"),
    dict(distance="linf", folding="sumsq", box="both", box_normalise=False),
    dict(distance="linf", folding=_custom_fold),
    dict(distance="linf", linf_form="original", box="none"),
    dict(distance="l2"),
    dict(distance="l1", clamp_grad="plain"),
    dict(distance="l1", l1_slack=True),
    dict(distance="l1", l1_slack=True, folding="max"),
    dict(distance=Lp(1.5), loss="ce", num_classes=3),
    dict(distance=Lp(0.5), box="fold"),
    dict(distance="perceptual"),
]
_MIN_CASES = [
    dict(distance="linf"),
    dict(distance="linf", folding="l1", box="clamp"),
    dict(distance="linf", folding=_custom_fold),
    dict(distance="linf", linf_form="original"),
    dict(distance="l2", box="fold"),
    dict(distance="l1"),
    dict(distance="l1", l1_slack=True, folding="sumsq"),
    dict(distance=Lp(3.0), box="none"),
    dict(distance=Lp(0.5)),
    dict(distance="perceptual"),
]


def _autograd_columns(p, z, idx):
    """(f, ci) and their gradients by autograd, one backward per column."""
    zl = z.clone().requires_grad_(True)
    f, ci, _ = p(zl, idx)
    cols = [f] + [ci[:, j] for j in range(ci.shape[1])]
    grads = []
    for j, c in enumerate(cols):
        (g,) = torch.autograd.grad(c.sum(), zl, retain_graph=j < len(cols) - 1, allow_unused=True)
        grads.append(torch.zeros_like(z) if g is None else g)
    return f.detach(), ci.detach(), grads[0], torch.stack(grads[1:], dim=1)


@pytest.mark.parametrize("kind,case", [("max", c) for c in _MAX_CASES] + [("min", c) for c in _MIN_CASES])
def test_with_gradients_matches_autograd(kind, case):
    from adv.distances import Perceptual

    g = torch.Generator().manual_seed(3)
    x = (0.5 + 0.2 * torch.randn(4, 1, 2, 3, generator=g, dtype=D)).clamp(0, 1)
    model = Affine(6, K=4).eval()
    y = model(x).argmax(1)
    kw = dict(case)
    if kw["distance"] == "perceptual":
        kw["distance"] = Perceptual(_features)
    if kind == "max":
        p = MaxLossProblem(model, x, y, kw.pop("distance"), torch.full((4,), 0.1, dtype=D), **kw)
    else:
        p = MinDistortionProblem(model, x, y, kw.pop("distance"), **kw)
    idx = torch.tensor([2, 0, 3, 3, 1])
    # points off the kinks: some pixels beyond the ball and outside the box, slacks above and below |delta|
    z = p.x0(x[idx] + 0.15 * torch.randn(5, 1, 2, 3, generator=g, dtype=D), idx)
    if p.n_var > p.n:
        z[:, p.n:] += 0.05 * torch.randn(5, p.n_var - p.n, generator=g, dtype=D)
    f0, ci0, _ = p(z, idx)
    f, gf, ci, Ji, ce, Je = p.with_gradients(z, idx)
    assert ce is None and Je is None
    assert torch.equal(f, f0) and torch.equal(ci, ci0)  # the values of __call__, to the bit
    fa, cia, gfa, Jia = _autograd_columns(p, z, idx)
    assert gf.shape == (5, p.n_var) and Ji.shape == (5, len(p.constraint_names), p.n_var)
    torch.testing.assert_close(gf, gfa, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Ji, Jia, rtol=1e-12, atol=1e-14)
    assert (Ji != 0).any()  # the points do violate some constraints


def test_rows_with_gradients_is_the_solver_form(data):
    model, x, y = data
    p = MaxLossProblem(model, x, y, "linf", torch.full((4,), 0.05, dtype=D))
    rows = torch.tensor([1, 3])
    fn = p.rows(rows, gradients=True)
    z = p.x0(x[rows])
    out = fn(z, torch.tensor([1, 0]))
    assert len(out) == 6 and out[1].shape == (2, 6)
    ref = p.with_gradients(z, torch.tensor([3, 1]))
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    opts = SolverOptions(globalAD=False, maxit=5, print_level=0)
    res = solve(fn, z, opts)
    res_ad = solve(p.rows(rows), z, SolverOptions(maxit=5, print_level=0))
    torch.testing.assert_close(res.final.x, res_ad.final.x, rtol=1e-9, atol=1e-12)
