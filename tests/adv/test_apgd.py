"""APGD: exact thresholds on linear classifiers, behaviour on a small trained MLP, batch isolation."""

from __future__ import annotations

import math

import pytest
import torch

from adv.apgd import apgd, checkpoints
from adv.distances import Lp
from adv.judge import judge

NORMS = {"linf": math.inf, "l2": 2.0, "l1": 1.0}


# ---------------------------------------------------------------- helpers: exact minimal distortion


def min_distortion_halfspace(x, a, need, p):
    """min ||d||_p s.t. a.d >= need, 0 <= x + d <= 1, per sample (float64).

    ``x`` (B, n), ``a`` (B, n) the margin's gradient, ``need`` (B,) > 0. inf if infeasible.
    l1: fractional knapsack (greedy by |a_i|); l2: d_i = clip(lam a_i) with bisection on lam;
    linf: d_i = sign(a_i) min(t, room_i) with bisection on t.
    """
    room = torch.where(a > 0, 1 - x, x)
    absa = a.abs()
    cap_gain = (absa * room).sum(1)
    out = torch.full_like(need, math.inf)
    feasible = cap_gain >= need
    if p == 1:
        order = torch.argsort(absa, dim=1, descending=True)
        a_s, r_s = absa.gather(1, order), room.gather(1, order)
        for i in range(x.shape[0]):
            if not feasible[i]:
                continue
            rem, tot = float(need[i]), 0.0
            if rem <= 0:
                out[i] = 0.0
                continue
            for j in range(x.shape[1]):
                gain = float(a_s[i, j] * r_s[i, j])
                if gain >= rem:
                    tot += rem / float(a_s[i, j])
                    break
                tot += float(r_s[i, j])
                rem -= gain
            out[i] = tot
        return out
    lo = torch.zeros_like(need)
    hi = torch.full_like(need, 1e4)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.isinf(p):
            g = (absa * torch.minimum(mid[:, None].expand_as(absa), room)).sum(1)
        else:
            g = (absa * torch.minimum(mid[:, None] * absa, room)).sum(1)
        ok = g >= need
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    if math.isinf(p):
        val = hi
    else:
        val = torch.linalg.vector_norm(torch.minimum(hi[:, None] * absa, room), dim=1)
    return torch.where(feasible, val, out)


def linear_min_distortion(W, b, x, y, p, target=None):
    """Exact minimal lp distortion (box-aware) to misclassify a linear model z = W x + b."""
    W, b, x = W.double(), b.double(), x.double()
    z = x @ W.T + b
    K = W.shape[0]
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for j in range(K):
        # half-space z_j - z_y >= 0 (untargeted: min over j != y; targeted: only j = target)
        a = W[j][None, :] - W[y]
        m = z[:, j] - z.gather(1, y[:, None]).squeeze(1)
        d = torch.where(y == j, torch.full_like(m, math.inf), torch.zeros_like(m))
        other = y != j
        if other.any():
            d[other] = min_distortion_halfspace(x[other], a[other], -m[other], p)
        allowed = (y != j) if target is None else (target == j)
        best = torch.where(allowed, torch.minimum(best, d), best)
    return best


def linear_model(K, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(n, K)
    with torch.no_grad():
        model.weight.copy_(torch.randn(K, n, generator=g))
        model.bias.copy_(torch.randn(K, generator=g) * 0.1)
    return model.to(dtype).eval()


def linear_data(model, B, seed):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(B, model.in_features, generator=g, dtype=model.weight.dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def test_binary_closed_form_and_apgd_threshold():
    """|w.x + b| / ||w||_q (box not binding): the exact helper reproduces it, and APGD succeeds at
    1.05x of it and never below it."""
    model = linear_model(2, 10, 0, torch.float64)
    with torch.no_grad():  # boundary through the centre of the box
        model.bias[1] = model.bias[0] - 0.5 * (model.weight[1] - model.weight[0]).sum()
    W, b = model.weight.detach(), model.bias.detach()
    w, c = W[1] - W[0], b[1] - b[0]
    g = torch.Generator().manual_seed(1)
    x0 = 0.4 + 0.2 * torch.rand(6, 10, generator=g, dtype=torch.float64)
    # slide each point along w to a small margin in [-0.3, -0.1] (class 0 wins, close to the boundary)
    m_target = -0.1 - 0.2 * torch.rand(6, generator=g, dtype=torch.float64)
    x = x0 - ((x0 @ w + c - m_target) / (w @ w))[:, None] * w
    assert x.min() > 0.05 and x.max() < 0.95
    y = torch.zeros(6, dtype=torch.int64)
    with torch.no_grad():
        assert (model(x).argmax(1) == 0).all()
    absm = (x @ w + c).abs()
    for p in (math.inf, 2.0, 1.0):
        closed = absm / torch.linalg.vector_norm(w, ord=Lp(p).dual_exponent())
        # box not binding: the unconstrained optimal perturbation stays in the box
        if math.isinf(p):
            delta = closed[:, None] * torch.sign(w)
        elif p == 2.0:
            delta = absm[:, None] * w / (w @ w)
        else:
            delta = torch.zeros_like(x)
            j = w.abs().argmax()
            delta[:, j] = closed * torch.sign(w[j])
        assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
        assert ((x + delta) @ w + c).abs().max() < 1e-9  # ... and lands on the boundary
        torch.testing.assert_close(
            linear_min_distortion(W, b, x, y, p), closed, rtol=1e-9, atol=1e-12
        )
        for loss in ("ce", "margin"):
            r = apgd(model, x, y, Lp(p), closed * 1.05, loss=loss, n_iter=100)
            assert r.success.all(), (p, loss, r.success.tolist())
            r = apgd(model, x, y, Lp(p), closed * 0.995, loss=loss, n_iter=30)
            assert not r.success.any()


def binary_like_model(n, seed, K):
    """A linear model that is binary in effect: classes 0 and 1 compete; classes 2.. have logit -50.

    Every loss is then monotone in (or has the sign of) the binary margin, so maximising it within
    the ball succeeds exactly when the ball reaches the decision boundary.
    """
    model = linear_model(K, n, seed)
    with torch.no_grad():
        model.weight[2:].zero_()
        model.bias[2:] = -50.0
    return model


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("loss,K", [("ce", 2), ("margin", 2), ("ce", 3), ("margin", 3), ("dlr", 3)])
def test_linear_exact_threshold(norm, loss, K):
    p = NORMS[norm]
    model = binary_like_model(12, 2, K)
    x, y = linear_data(model, 10, 3)
    W, b = model.weight.detach(), model.bias.detach()
    dmin = linear_min_distortion(W, b, x, y, p)
    assert torch.isfinite(dmin).all()
    above = apgd(model, x, y, norm, dmin * 1.05, loss=loss, n_iter=100, seed=0)
    assert above.success.all(), (
        f"{norm}/{loss}: failed above the minimal distortion: {above.success.tolist()}"
    )
    assert (above.distance <= dmin * 1.05).all()
    with torch.no_grad():
        assert (model(above.x_adv).argmax(1) != y).all()
    assert judge(model, x, y, above.x_adv, Lp(p), dmin * 1.05).success.all()  # independent call
    below = apgd(model, x, y, norm, dmin * 0.995, loss=loss, n_iter=30, seed=0)
    assert not below.success.any()
    assert (below.distance <= dmin * 0.995).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_linear_multiclass_margin(norm):
    """Genuinely multi-class: the nearest boundary is one of K - 1; margin/DLR ascent may pick
    another piece, so we require most (not all) samples above and none below the threshold."""
    p = NORMS[norm]
    model = linear_model(4, 12, 2)
    x, y = linear_data(model, 10, 3)
    dmin = linear_min_distortion(model.weight.detach(), model.bias.detach(), x, y, p)
    for loss in ("margin", "dlr"):
        above = apgd(model, x, y, norm, dmin * 1.05, loss=loss, n_iter=100, seed=0)
        assert above.success.float().mean() >= 0.8, (norm, loss, above.success.tolist())
        below = apgd(model, x, y, norm, dmin * 0.995, loss=loss, n_iter=30, seed=0)
        assert not below.success.any()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_linear_targeted(norm):
    """Targeted: on the binary-like model (two dummy classes, so targeted DLR is defined) the target
    1 - y wins exactly past the binary boundary."""
    p = NORMS[norm]
    model = binary_like_model(12, 5, 4)
    x, y = linear_data(model, 8, 6)
    target = 1 - y
    dmin = linear_min_distortion(model.weight.detach(), model.bias.detach(), x, y, p, target=target)
    assert torch.isfinite(dmin).all()
    for loss in ("ce", "margin", "dlr"):
        r = apgd(model, x, y, norm, dmin * 1.05, loss=loss, target=target, n_iter=100)
        assert r.success.all(), (norm, loss, r.success.tolist())
        with torch.no_grad():
            assert (model(r.x_adv).argmax(1) == target).all()
        r = apgd(model, x, y, norm, dmin * 0.995, loss=loss, target=target, n_iter=20)
        assert not r.success.any()
    # a genuinely multi-class model: reaching z_t >= z_y is necessary, so below that bound never
    multi = linear_model(4, 12, 5)
    xm, ym = linear_data(multi, 8, 6)
    tm = (ym + 1) % 4
    bound = linear_min_distortion(multi.weight.detach(), multi.bias.detach(), xm, ym, p, target=tm)
    ok = torch.isfinite(bound)
    r = apgd(
        multi, xm[ok], ym[ok], norm, bound[ok] * 0.995, loss="margin", target=tm[ok], n_iter=30
    )
    assert not r.success.any()


# ---------------------------------------------------------------- small trained MLP


@pytest.fixture(scope="module")
def mlp_problem():
    g = torch.Generator().manual_seed(0)
    n, K, N = 8, 3, 600
    centers = 0.25 + 0.5 * torch.rand(K, n, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    x = (centers[y] + 0.12 * torch.randn(N, n, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(n, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, K),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    xt = (centers[y[:64]] + 0.12 * torch.randn(64, n, generator=g)).clamp(0, 1)
    yt = y[:64]
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8
    return model, xt, yt


EPS_GRID = {
    "linf": [0.01, 0.03, 0.08, 0.2],
    "l2": [0.02, 0.08, 0.2, 0.5],
    "l1": [0.03, 0.15, 0.4, 1.0],
}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_mlp_success_increases_with_eps_points_feasible(mlp_problem, norm):
    model, x, y = mlp_problem
    p = NORMS[norm]
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    for loss in ("ce", "margin", "dlr"):
        rates = []
        for eps in EPS_GRID[norm]:
            r = apgd(model, x, y, norm, eps, loss=loss, n_iter=40, seed=1)
            d = Lp(p)(r.x_adv.double(), x.double())
            assert (d <= eps).all(), f"{norm}/{loss}/{eps}: max distance {d.max().item()}"
            assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
            assert r.x_adv.dtype == x.dtype and r.success.dtype == torch.bool
            assert r.distance.dtype == torch.float64 and r.iterations.dtype == torch.int64
            # success re-established independently: float32 argmax on the returned points
            with torch.no_grad():
                wrong = model(r.x_adv).argmax(1) != y
            assert (wrong == r.success).float().mean() >= 0.98
            assert (r.success >= clean_wrong).all()  # clean errors stay errors
            assert (r.iterations[clean_wrong] == 0).all()
            assert (r.iterations <= 40).all()
            rates.append(r.success.float().mean().item())
        assert all(b >= a - 0.05 for a, b in zip(rates, rates[1:], strict=False)), (
            norm,
            loss,
            rates,
        )
        assert rates[-1] > rates[0] + 0.3, (norm, loss, rates)
        assert rates[-1] >= 0.9, (norm, loss, rates)


def test_mlp_restarts_only_attack_robust_samples(mlp_problem):
    model, x, y = mlp_problem
    r1 = apgd(model, x, y, "l2", 0.08, loss="ce", n_iter=20, n_restarts=1, seed=3)
    r3 = apgd(model, x, y, "l2", 0.08, loss="ce", n_iter=20, n_restarts=3, seed=3)
    s = r1.success
    # samples broken by the first restart are not attacked again: same point, same iteration count
    torch.testing.assert_close(r3.iterations[s], r1.iterations[s], rtol=0, atol=0)
    torch.testing.assert_close(r3.x_adv[s], r1.x_adv[s], rtol=0, atol=0)
    assert (r3.success >= r1.success).all()
    assert (r3.iterations[~r3.success] == 60).all()


def test_early_stop_keeps_first_success_and_no_early_stop_runs_all(mlp_problem):
    model, x, y = mlp_problem
    r = apgd(model, x, y, "linf", 0.08, loss="margin", n_iter=30, early_stop=True)
    full = apgd(model, x, y, "linf", 0.08, loss="margin", n_iter=30, early_stop=False)
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
    broken = r.success & ~clean_wrong
    assert broken.any()
    assert (r.iterations[broken] < 30).any()
    assert (full.iterations[~clean_wrong] == 30).all()
    # early-stopped successes sit at the first successful iterate: a small non-negative margin is
    # typical, and without early stop the kept successful point has at least as large a loss
    assert (full.loss[broken & full.success] >= r.loss[broken & full.success] - 1e-6).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_batch_isolation_nan_sample(mlp_problem, norm):
    model, x, y = mlp_problem
    xb = x[:12].clone()
    yb = y[:12]
    eps = EPS_GRID[norm][1]
    ref = apgd(model, xb, yb, norm, eps, loss="ce", n_iter=25, n_restarts=2, seed=7)
    bad = xb.clone()
    bad[4] = float("nan")
    out = apgd(model, bad, yb, norm, eps, loss="ce", n_iter=25, n_restarts=2, seed=7)
    keep = torch.arange(12) != 4
    assert not out.success[4] and out.verdict.reason[4] == "non-finite"
    assert torch.equal(out.success[keep], ref.success[keep])
    torch.testing.assert_close(out.x_adv[keep], ref.x_adv[keep], rtol=0, atol=0)
    torch.testing.assert_close(out.iterations[keep], ref.iterations[keep], rtol=0, atol=0)
    assert torch.isfinite(out.distance[keep]).all()


def test_seed_reproducible_and_per_sample_eps(mlp_problem):
    model, x, y = mlp_problem
    eps = torch.linspace(0.01, 0.2, x.shape[0])
    a = apgd(model, x, y, "linf", eps, n_iter=15, seed=11)
    b = apgd(model, x, y, "linf", eps, n_iter=15, seed=11)
    torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=0)
    assert (Lp(math.inf)(a.x_adv.double(), x.double()) <= eps.double()).all()


# ---------------------------------------------------------------- schedule and errors


def test_checkpoints_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert checkpoints(1) == []


def test_argument_errors():
    model = linear_model(3, 4, 0)
    x, y = linear_data(model, 2, 0)
    with pytest.raises(ValueError, match="norm"):
        apgd(model, x, y, "l1.5", 0.1)
    with pytest.raises(ValueError, match="loss must be one of"):
        apgd(model, x, y, "l2", 0.1, loss="hinge")
    with pytest.raises(ValueError, match="eps"):
        apgd(model, x, y, "l2", -0.1)
    with pytest.raises(ValueError, match="n_iter"):
        apgd(model, x, y, "l2", 0.1, n_iter=0)
    with pytest.raises(ValueError, match="rho"):
        apgd(model, x, y, "l2", 0.1, rho=1.5)
    two = linear_model(2, 4, 0)
    with pytest.raises(ValueError, match="K >= 3"):
        apgd(two, x, torch.zeros(2, dtype=torch.int64), "l2", 0.1, loss="dlr")
    with pytest.raises(ValueError, match="K >= 4"):
        apgd(model, x, y, "l2", 0.1, loss="dlr", target=(y + 1) % 3)
