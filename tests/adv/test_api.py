"""End-to-end: attack / min_distortion on linear classifiers with known answers, the judge, bad
inputs, results I/O, and a small evaluate run on a trained MLP."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import adv
import adv.runner as runner
from adv import AttackResult, Lp, MinDistortionResult, Report

D = torch.float64
N_FEAT = 8


def _linear_setup(B: int = 3, seed: int = 0):
    """Two-class affine classifier ``z = (0, w.x + b)``; points near 0.5 and a boundary close enough
    that the minimal perturbation of every lp (p >= 1) stays inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N_FEAT, generator=g, dtype=D) * 0.5
    x = (0.5 + 0.02 * torch.randn(B, N_FEAT, generator=g, dtype=D)).clamp(0, 1)
    b = float(-(w * 0.5).sum() - 0.1 * w.norm())

    lin = nn.Linear(N_FEAT, 2).to(D)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[1] = w
        lin.bias.zero_()
        lin.bias[1] = b
    model = nn.Sequential(nn.Flatten(), lin).eval()
    gval = x @ w + b
    y = (gval >= 0).long()
    return model, x, y, w, gval


def _dual(p: float) -> float:
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)


def _reference_radius(w, gval, p):
    return gval.abs() / torch.linalg.vector_norm(w, ord=_dual(p))


@pytest.mark.parametrize("p", [2.0, 1.5, 1.0, math.inf])
def test_min_distortion_linear_reaches_the_analytic_radius(p):
    model, x, y, w, gval = _linear_setup()
    ref = _reference_radius(w, gval, p)
    # PWCF alone (apgd_steps=0): the APGD bisection has its own tests (test_bisect.py)
    res = adv.min_distortion(model, x, y, Lp(p), restarts=1, maxit=250, restart_maxit=250, refine_steps=0,
                             l1_slack=False, apgd_steps=0)
    assert isinstance(res, MinDistortionResult)
    assert res.success.all(), res.verdict.reason
    assert torch.allclose(res.radius, ref, rtol=1e-2), (res.radius, ref)
    assert (res.radius >= ref * (1 - 1e-9)).all()  # nothing below the true minimum can be verified
    # the radius is the judged distance of the returned (clipped) point
    v = adv.judge(model, x, y, res.x_adv, Lp(p), res.radius)
    assert v.success.all() and torch.equal(v.distance, res.radius)


def test_min_distortion_l1_slack_and_clamp_box():
    model, x, y, w, gval = _linear_setup(B=1, seed=1)
    res = adv.min_distortion(model, x, y, "l1", l1_slack=True, restarts=1, maxit=300, restart_maxit=300)
    assert torch.allclose(res.radius, _reference_radius(w, gval, 1.0), rtol=1e-2)
    res = adv.min_distortion(model, x, y, "l2", box="clamp", restarts=1, maxit=200, restart_maxit=200)
    assert torch.allclose(res.radius, _reference_radius(w, gval, 2.0), rtol=1e-2)


@pytest.mark.parametrize("p", [2.0, 1.5, 1.0, math.inf])
def test_attack_succeeds_exactly_above_the_radius(p):
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, p)
    above = adv.attack(model, x, y, Lp(p), eps=1.05 * d, restarts=1, maxit=80, restart_maxit=80)
    assert isinstance(above, AttackResult)
    assert above.success.all(), above.verdict.reason
    assert (above.distance <= 1.05 * d * (1 + 1e-6)).all()
    below = adv.attack(model, x, y, Lp(p), eps=0.95 * d, restarts=2, maxit=40, restart_maxit=20)
    assert not below.success.any()
    assert (below.distance <= 0.95 * d * (1 + 1e-6)).all()
    assert (below.margin < 0).all()
    # both restarts ran on the unsolved samples, each success stopped after its first restart
    assert (below.restarts_used == 2).all() and (above.restarts_used == 1).all()
    # an independent judge agrees with what is reported
    for r, e in ((above, 1.05 * d), (below, 0.95 * d)):
        v = adv.judge(model, x, y, r.x_adv, Lp(p), e)
        assert torch.equal(v.success, r.success)


def test_attack_ce_loss_targeted_and_per_sample_eps():
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, 2.0)
    eps = d * torch.tensor([1.1, 0.9, 1.1], dtype=D)
    res = adv.attack(model, x, y, "l2", eps=eps, loss="ce", ce_clip="paper", restarts=1, maxit=60,
                     restart_maxit=60)
    assert res.success.tolist() == [True, False, True]
    res = adv.attack(model, x, y, "l2", eps=eps, target=1 - y, restarts=1, maxit=60, restart_maxit=60)
    assert res.success.tolist() == [True, False, True]


def test_already_misclassified_inputs_are_not_attacked():
    model, x, y, w, gval = _linear_setup()
    y = y.clone()
    y[1] = 1 - y[1]  # the model already gets sample 1 wrong
    res = adv.attack(model, x, y, "l2", eps=1e-3, restarts=1, maxit=10, restart_maxit=10)
    assert res.success[1] and res.distance[1] == 0 and res.status[1] == -1 and res.restarts_used[1] == 0
    assert torch.equal(res.x_adv[1], x[1])
    m = adv.min_distortion(model, x, y, "l2", restarts=1, maxit=100, restart_maxit=100)
    assert m.radius[1] == 0 and m.success[1] and m.iterations[1] == 0
    assert m.success.all()


def test_warm_continuation_and_budgets():
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, math.inf)
    res = adv.attack(model, x, y, "linf", eps=0.95 * d, restarts=1, restart_maxit=3, maxit=12)
    assert not res.success.any()
    assert res.continued.all()
    assert (res.iterations <= 12).all() and (res.iterations > 3).all()
    with pytest.raises(ValueError, match="maxit"):
        adv.attack(model, x, y, "linf", eps=0.1, solver_options={"maxit": 5})
    with pytest.raises(ValueError, match="halt_log_fn"):
        adv.attack(model, x, y, "linf", eps=0.1, solver_options={"halt_log_fn": None})
    with pytest.raises(Exception, match="opt_tol"):
        adv.attack(model, x, y, "linf", eps=0.1, solver_options={"opt_toll": 1e-3})


def test_full_memory_continuation():
    """Full BFGS (``limited_mem_size=0``): the best restart's H is stored row by row and the
    continuation starts from it (the state also carries non-tensor flags)."""
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, math.inf)
    res = adv.attack(model, x, y, "linf", eps=0.95 * d, restarts=1, restart_maxit=3, maxit=12,
                     solver_options={"limited_mem_size": 0})
    assert not res.success.any()
    assert res.continued.all()
    assert (res.iterations <= 12).all() and (res.iterations > 3).all()
    ok = adv.attack(model, x, y, "linf", eps=1.05 * d, restarts=2, solver_options={"limited_mem_size": 0})
    assert ok.success.all()


def test_time_limit_is_respected():
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, math.inf)
    res = adv.attack(model, x, y, "linf", eps=0.95 * d, restarts=3, maxit=1000, restart_maxit=1000,
                     time_limit=0.5)
    assert res.seconds < 5.0
    assert not res.success.any()


def _forge(monkeypatch, forged_fn):
    """Replace the solver's returned points by forged ones and make the in-run check accept anything."""
    real_solve = runner.solve

    def fake_solve(problem, z0, options):
        res = real_solve(problem, z0, options.replace(maxit=1, halt_log_fn=None))
        zf = forged_fn(z0)
        return dataclasses.replace(res, final=res.final._replace(x=zf), best=res.best._replace(x=zf))

    def fake_check(ctx, rows, xa):
        c = real_check(ctx, rows, xa)
        return runner.Candidate(c.x, torch.ones_like(c.success), torch.zeros_like(c.distance),
                                torch.full_like(c.margin, 1.0))

    real_check = runner._check
    monkeypatch.setattr(runner, "solve", fake_solve)
    monkeypatch.setattr(runner, "_check", fake_check)
    monkeypatch.setattr(runner, "_repair", lambda ctx, rows, xa: xa.to(torch.float64).clamp(0, 1))


def test_judge_always_decides(monkeypatch):
    model, x, y, w, gval = _linear_setup()
    d = _reference_radius(w, gval, 2.0)
    wn = (w / w.norm()).reshape(1, -1)
    sign = torch.where(gval < 0, 1.0, -1.0).to(D).reshape(-1, 1)
    # forged max-loss answer: misclassified but three times outside the ball
    _forge(monkeypatch, lambda z0: x + sign * wn * (3 * d).reshape(-1, 1))
    res = adv.attack(model, x, y, "l2", eps=1.05 * d, restarts=1, maxit=5, restart_maxit=5)
    assert not res.success.any()
    assert all("outside the ball" in r for r in res.verdict.reason)
    # forged min-distortion answer: inside, but not misclassified -> no radius
    monkeypatch.undo()
    _forge(monkeypatch, lambda z0: torch.cat([x - 0.1 * sign * wn, z0[:, N_FEAT:]], 1) if z0.shape[1] > N_FEAT
           else x - 0.1 * sign * wn)
    res = adv.min_distortion(model, x, y, "l2", restarts=1, maxit=5, restart_maxit=5, refine_steps=0)
    assert not res.success.any() and torch.isinf(res.radius).all()


class _BN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.lin(x.flatten(1)))


def test_bad_inputs_raise_clear_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 4)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adv.attack(model, x + 1.5, y, "l2", eps=0.1)
    for bad_eps in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="eps"):
            adv.attack(model, x, y, "l2", eps=bad_eps)
    with pytest.raises(ValueError, match="p"):
        adv.attack(model, x, y, Lp(0), eps=0.1)
    with pytest.raises(ValueError, match="p"):
        adv.min_distortion(model, x, y, "l0")
    with pytest.raises(ValueError, match="shape"):
        adv.attack(model, x, torch.tensor([0, 1, 2]), "l2", eps=0.1)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        adv.min_distortion(model, x, torch.tensor([0, 7]), "l2")
    with pytest.raises(ValueError, match="shape"):
        adv.attack(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Flatten(0)).eval(), x, y, "l2", eps=0.1)
    with pytest.raises(ValueError, match="training mode"):
        adv.attack(_BN().train(), x, y, "l2", eps=0.1)
    with pytest.raises(ValueError, match="training mode"):
        adv.evaluate(_BN().train(), x, y, "l2", eps=0.1)
    with pytest.raises(ValueError, match="did you mean 'pwcf-margin'"):
        adv.evaluate(model, x, y, "l2", eps=0.1, attacks=("pwcf-margn",))
    with pytest.raises(ValueError, match="APGD supports only"):
        adv.evaluate(model, x, y, "l1.5", eps=0.1, attacks=("apgd-ce",))
    with pytest.raises(ValueError, match="restarts"):
        adv.attack(model, x, y, "l2", eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="box"):
        adv.attack(model, x, y, "l2", eps=0.1, box="clip")


def test_results_save_load_and_to(tmp_path):
    model, x, y, w, gval = _linear_setup(B=2)
    d = _reference_radius(w, gval, 2.0)
    res = adv.attack(model, x, y, "l2", eps=1.05 * d, restarts=1, maxit=20, restart_maxit=20)
    res.save(tmp_path / "a.pt")
    back = AttackResult.load(tmp_path / "a.pt")
    assert torch.equal(back.x_adv, res.x_adv) and torch.equal(back.success, res.success)
    assert back.verdict.reason == res.verdict.reason and back.loss == "margin"
    raw = torch.load(tmp_path / "a.pt", weights_only=False)
    assert isinstance(raw, dict) and "x_adv" in raw
    assert torch.equal(res.to("cpu").margin, res.margin)
    with pytest.raises(ValueError, match="AttackResult"):
        MinDistortionResult.load(tmp_path / "a.pt")
    mres = adv.min_distortion(model, x, y, "l2", restarts=1, maxit=100, restart_maxit=100)
    mres.save(tmp_path / "m.pt")
    back_m = MinDistortionResult.load(tmp_path / "m.pt")
    assert torch.equal(back_m.radius, mres.radius) and torch.equal(back_m.pwcf_radius, mres.pwcf_radius)


def _tiny_mlp():
    torch.manual_seed(0)
    n, K, N = 10, 3, 400
    centers = torch.rand(K, n)
    yt = torch.randint(0, K, (N,))
    xt = (centers[yt] + 0.15 * torch.randn(N, n)).clamp(0, 1)
    model = nn.Sequential(nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, K))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), xt, yt


def test_evaluate_end_to_end(tmp_path):
    model, xt, yt = _tiny_mlp()
    x, y = xt[:12], yt[:12]
    attacks = ("apgd-ce", "apgd-margin", "pwcf-margin")
    rep = adv.evaluate(model, x, y, "linf", 0.12, attacks=attacks,
                       pwcf=dict(restarts=1, maxit=30, restart_maxit=30))
    assert isinstance(rep, Report)
    ra = rep.robust_accuracy
    assert set(ra) == {"clean", "union", *attacks}
    for a in attacks:
        assert ra["union"] <= ra[a] <= ra["clean"]
        assert rep.ran[a].sum() == rep.clean_correct.sum()  # per-attack numbers on all clean-correct samples
        # every success is the judge's verdict on the stored point
        v = adv.judge(model, x, y, rep.x_adv[a], "linf", 0.12)
        assert torch.equal(v.success & rep.ran[a], rep.success[a])
    assert torch.equal(rep.union_success, torch.stack([rep.success[a] for a in attacks]).any(0) & rep.clean_correct)
    assert rep.cascade[attacks[-1]] == pytest.approx(ra["union"])
    assert 0 < ra["union"] < ra["clean"]  # the budget breaks some samples, not all
    rep.save(tmp_path / "r.pt")
    assert Report.load(tmp_path / "r.pt").robust_accuracy == ra
    # the pure cascade: later attacks only see the samples still robust, same union
    cas = adv.evaluate(model, x, y, "linf", 0.12, attacks=attacks, per_attack=False,
                       pwcf=dict(restarts=1, maxit=30, restart_maxit=30))
    assert not (cas.ran["apgd-margin"] & cas.success["apgd-ce"]).any()
    assert cas.robust_accuracy["union"] <= ra["clean"]
