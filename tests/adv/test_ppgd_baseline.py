"""The PPGD baseline of benchmarks/bench_adv.py: feature embedding, CG solve, step, feasibility.

A seeded, untrained :class:`adv.zoo.DigitsCNN` (no training, no cache) on a few digits test images.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import adv
from adv.zoo import DigitsCNN, load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_adv  # noqa: E402

EPS = 0.35


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = load_digits("test")
    x, y = x[:5].contiguous(), y[:5].contiguous()
    dist = adv.Perceptual(adv.classifier_features(copy.deepcopy(model).double().eval()))
    return model, dist, x, y


def _dense(dist, x0):
    """Dense Jacobian ``(m, n)`` of the embedding at one image ``x0`` of shape ``(1, 1, 8, 8)``."""
    return torch.autograd.functional.jacobian(
        lambda z: bench_adv.perceptual_embedding(dist, z.reshape(x0.shape)).reshape(-1), x0.reshape(-1)
    )


def test_embedding_distance_identity(setup):
    _, dist, x, _ = setup
    g = torch.Generator().manual_seed(1)
    x64 = x.double()
    xp = (x64 + 0.1 * torch.randn(x64.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    lhs = (bench_adv.perceptual_embedding(dist, xp) - bench_adv.perceptual_embedding(dist, x64)).norm(dim=1)
    rhs = dist(xp, x64)
    assert bool((rhs > 0).all())
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)


def test_embedding_rejects_squared(setup):
    model, _, x, _ = setup
    sq = adv.Perceptual(adv.classifier_features(copy.deepcopy(model).double()), squared=True)
    with pytest.raises(ValueError, match="unsquared"):
        bench_adv.perceptual_embedding(sq, x.double())


def test_products_match_dense_jacobian_and_rows_do_not_mix(setup):
    _, dist, x, _ = setup
    x64 = x.double()
    lin = bench_adv.PerceptualLinearisation(dist, x64)
    w = torch.randn(x64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    jw, gw = lin.jvp(w), lin.gram(w)
    for b in range(x64.shape[0]):
        J = _dense(dist, x64[b : b + 1])
        torch.testing.assert_close(jw[b], J @ w[b].reshape(-1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gw[b].reshape(-1), J.T @ (J @ w[b].reshape(-1)), rtol=1e-10, atol=1e-12)
    # changing one row's direction changes no other row's product
    w2 = w.clone()
    w2[0] = 0
    torch.testing.assert_close(lin.gram(w2)[1:], gw[1:], rtol=0, atol=0)


@pytest.mark.parametrize("damping_rel", [0.0, 1e-6, 1e-2])
def test_cg_matches_direct_solve(setup, damping_rel):
    _, dist, x, _ = setup
    x0 = x[:2].double()
    lin = bench_adv.PerceptualLinearisation(dist, x0)
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n = x0[0].numel()
    Js = [_dense(dist, x0[b : b + 1]) for b in range(2)]
    lam = torch.tensor([damping_rel * float((J * J).sum()) / n for J in Js], dtype=torch.float64)
    v = bench_adv.cg_solve(lin.gram, g, lam, n)
    for b, J in enumerate(Js):
        A = J.T @ J + lam[b] * torch.eye(n, dtype=torch.float64)
        v_direct = torch.linalg.solve(A, g[b].reshape(-1))
        err = (v[b].reshape(-1) - v_direct).norm() / v_direct.norm()
        assert float(err) < 1e-6, (b, float(err))


def test_damping_estimate_is_relative_mean_diagonal(setup):
    _, dist, x, _ = setup
    x0 = x[:1].double()
    lin = bench_adv.PerceptualLinearisation(dist, x0)
    J = _dense(dist, x0)
    mean_diag = float((J * J).sum()) / J.shape[1]
    gen = torch.Generator().manual_seed(4)
    est = torch.stack([bench_adv.ppgd_damping(lin, x0, 1.0, gen) for _ in range(200)]).mean()
    assert abs(float(est) / mean_diag - 1) < 0.1
    assert float(bench_adv.ppgd_damping(lin, x0, 0.0, gen)[0]) == 0.0


def test_step_maximises_linearised_objective(setup):
    _, dist, x, _ = setup
    x0 = x[:1].double()
    lin = bench_adv.PerceptualLinearisation(dist, x0)
    J = _dense(dist, x0)
    n = J.shape[1]
    G = J.T @ J
    assert float(torch.linalg.eigvalsh(G)[0]) > 0  # nonsingular here: zero damping is exact
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    eta = 0.02
    v = torch.linalg.solve(G, g.reshape(-1)).reshape(x0.shape)
    delta = bench_adv.ppgd_delta(lin, v, eta)
    gd = float((g * delta).sum())
    assert abs(float((J @ delta.reshape(-1)).norm()) - eta) < 1e-12
    W = torch.randn(500, n, generator=gen, dtype=torch.float64)
    W = W * (eta * torch.rand(500, 1, generator=gen, dtype=torch.float64)) / (W @ J.T).norm(dim=1, keepdim=True)
    assert bool(((W @ J.T).norm(dim=1) <= eta * (1 + 1e-12)).all())
    assert float((W @ g.reshape(-1)).max()) <= gd + 1e-9
    # the CG solution (many iterations, no damping) gives the same step
    v_cg = bench_adv.cg_solve(lin.gram, g, torch.zeros(1, dtype=torch.float64), 2 * n)
    torch.testing.assert_close(bench_adv.ppgd_delta(lin, v_cg, eta), delta, rtol=1e-6, atol=1e-10)


def test_projection_feasible_and_inside_rows_untouched(setup):
    _, dist, x, _ = setup
    x64 = x.double()
    g = torch.Generator().manual_seed(6)
    far = (x64 + 0.5 * torch.randn(x64.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    near = (x64 + 1e-3 * torch.randn(x64.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    pts = torch.cat([far[:3], near[3:]])
    d0 = dist(pts, x64)
    assert bool((d0[:3] > EPS).all()) and bool((d0[3:] <= EPS).all())
    for out_dtype in (torch.float64, torch.float32):
        proj, d = bench_adv.ppgd_project(dist, x64, pts, EPS, iters=10, out_dtype=out_dtype)
        assert bool((d <= EPS).all())
        torch.testing.assert_close(d, dist(proj, x64), rtol=1e-12, atol=0)
        assert bool(((proj >= 0) & (proj <= 1)).all())
        if out_dtype == torch.float64:
            torch.testing.assert_close(proj[3:], pts[3:], rtol=0, atol=0)
    # no Newton steps: the bisection alone still returns feasible points
    proj, d = bench_adv.ppgd_project(dist, x64, pts, EPS, iters=0)
    assert bool((d <= EPS).all()) and bool((d[:3] > 0.9 * EPS).all())


def test_ppgd_iterates_feasible(setup):
    model, dist, x, y = setup
    final, best = bench_adv.ppgd(model, dist, x, y, EPS, steps=5, cg_iters=3, seed=0)
    assert final.dtype == x.dtype and best.dtype == x.dtype
    for pts in (final, best):
        assert bool(((pts >= 0) & (pts <= 1)).all())
        d = dist(pts.double(), x.double())
        assert bool((d <= EPS * (1 + 1e-6)).all()), d
        v = adv.judge(model, x, y, pts, dist, EPS)
        assert not bool((v.misclassified & ~v.within).any())
    # it moves: the final iterate is far from the start x + N(0, 0.01^2)
    assert bool((dist(final.double(), x.double()) > 0.5 * EPS).all())


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--ppgd-steps", "0", "positive integer"),
        ("--ppgd-cg", "-1", "positive integer"),
        ("--ppgd-proj-iters", "0", "positive integer"),
        ("--ppgd-step-scale", "0", "> 0"),
        ("--ppgd-step-scale", "nan", "> 0"),
    ],
)
def test_flag_validation(monkeypatch, capsys, flag, value, expected):
    monkeypatch.setattr(sys, "argv", ["bench_adv.py", flag, value])
    with pytest.raises(SystemExit):
        bench_adv.main()
    err = capsys.readouterr().err
    assert flag in err and expected in err and f"got {value}" in err
