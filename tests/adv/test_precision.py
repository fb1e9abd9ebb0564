"""Solver precision of the PWCF calls: the model's own dtype by default for attacks, float64 for
minimal distortion, and an in-run success check that stays a float64 verdict when the solver's
model is float32 (screened: only points near success are re-run in float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adv
from adv.api import model_dtype
from adv.losses import margin
from adv.runner import CheckContext, _check

D = torch.float64


class Affine(nn.Module):
    """``x W^T + b`` through an ``nn.Linear``, counting the rows it classifies."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(W.shape[1], W.shape[0], dtype=W.dtype)
        with torch.no_grad():
            self.lin.weight.copy_(W)
            self.lin.bias.copy_(b)
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.lin(x.flatten(1))


def _pair(n=6, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, n, generator=g, dtype=D)
    b = torch.randn(K, generator=g, dtype=D)
    return Affine(W, b), Affine(W, b).float()


def test_model_dtype():
    m64, m32 = _pair()
    assert model_dtype(m64) == torch.float64
    assert model_dtype(m32) == torch.float32
    assert model_dtype(nn.ReLU()) == torch.float64  # no parameters
    mixed = nn.Sequential(nn.Linear(2, 2).double(), nn.Linear(2, 2))
    assert model_dtype(mixed) == torch.float64
    assert model_dtype(nn.Linear(2, 2).half()) == torch.float64  # only float32 / float64 are solver dtypes


def test_screened_check_equals_the_float64_check_and_reruns_only_near_points():
    # two classes, y = 0: margin(p) = dw . p + db, zero at the centre of the box
    g = torch.Generator().manual_seed(1)
    n = 6
    W = torch.randn(2, n, generator=g, dtype=D)
    dw = W[1] - W[0]
    b = torch.tensor([0.0, -0.5 * float(dw.sum())], dtype=D)
    m64 = Affine(W, b)
    m32 = Affine(W, b).float()
    k = 40
    y = torch.zeros(k, dtype=torch.long)
    x = torch.full((k, n), 0.5, dtype=D)
    pts = 0.5 + 0.05 * torch.randn(k, n, generator=g, dtype=D)
    # the first 10 points exactly onto margin +-1e-9, where float32 logits cannot tell the sides
    # apart; then far failures and clear successes
    u = dw / dw.pow(2).sum()
    for i in range(10):
        target = 1e-9 if i % 2 else -1e-9
        pts[i] = pts[i] + (target - (pts[i] @ dw + b[1])) * u
    pts[10:25] = pts[10:25] - 0.2 * dw / dw.norm()
    pts[25:] = pts[25:] + 0.2 * dw / dw.norm()
    assert ((pts >= 0) & (pts <= 1)).all()
    rows = torch.arange(k)
    bound = torch.full((k,), math.inf, dtype=D)
    ref = CheckContext(m64, x, y, None, adv.Lp(2.0), bound)
    scr = CheckContext(m64, x, y, None, adv.Lp(2.0), bound, screen=m32)
    a = _check(ref, rows, pts)
    m64.rows = 0
    c = _check(scr, rows, pts)
    rerun = m64.rows
    assert torch.equal(a.success, c.success), "the verdict is the float64 one"
    assert a.success[1:10:2].all() and not a.success[0:10:2].any()
    assert not a.success[10:25].any() and a.success[25:].all()
    with torch.no_grad():
        z = m64(a.x)
    near = margin(z, y) >= -1e-3 * (1 + z.abs().amax(1))
    assert near[:10].all() and not near[10:25].any()
    # near points carry exact float64 margins; the others float32-accurate ones
    assert torch.equal(c.margin[near], a.margin[near])
    torch.testing.assert_close(c.margin, a.margin, rtol=1e-5, atol=1e-5)
    assert rerun == int(near.sum()) == 25, "only points near success are re-run in float64"


def test_screen_reruns_non_finite_margins():
    m64, m32 = _pair()
    x = torch.rand(3, 6, dtype=D)
    y = m64(x).argmax(1)
    m32.lin.bias.data[0] = float("nan")
    ctx = CheckContext(m64, x, y, None, adv.Lp(2.0), torch.full((3,), math.inf, dtype=D), screen=m32)
    m64.rows = 0
    c = _check(ctx, torch.arange(3), x)
    assert m64.rows == 3 and torch.isfinite(c.margin).all()


@pytest.mark.parametrize("model_kind", ["float32", "float64"])
def test_attack_runs_in_the_models_precision(model_kind, monkeypatch):
    m64, m32 = _pair(n=8, K=3, seed=3)
    model = m32 if model_kind == "float32" else m64
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 8, generator=g).to(model_dtype(model))
    y = model(x).argmax(1)
    seen = []
    real = adv.api.MaxLossProblem

    def spy(model_s, xs, *a, **k):
        seen.append((model_dtype(model_s), xs.dtype))
        return real(model_s, xs, *a, **k)

    monkeypatch.setattr(adv.api, "MaxLossProblem", spy)
    res = adv.attack(model, x, y, "l2", eps=0.5, restarts=1, maxit=30, restart_maxit=30)
    want = torch.float32 if model_kind == "float32" else torch.float64
    assert seen == [(want, want)]
    v = adv.judge(model, x, y, res.x_adv, "l2", 0.5)
    assert torch.equal(v.success, res.success) and (v.distance[v.success] <= 0.5 * (1 + 1e-6)).all()
    res64 = adv.attack(model, x, y, "l2", eps=0.5, restarts=1, maxit=30, restart_maxit=30, dtype=torch.float64)
    assert seen[-1] == (torch.float64, torch.float64)
    assert res64.success.sum() == res.success.sum()


def test_min_distortion_defaults_to_float64(monkeypatch):
    _, m32 = _pair(n=8, K=3, seed=4)
    x = torch.rand(3, 8, generator=torch.Generator().manual_seed(5))
    y = m32(x).argmax(1)
    seen = []
    real = adv.api.MinDistortionProblem

    def spy(model_s, xs, *a, **k):
        seen.append(xs.dtype)
        return real(model_s, xs, *a, **k)

    monkeypatch.setattr(adv.api, "MinDistortionProblem", spy)
    adv.min_distortion(m32, x, y, "l2", restarts=1, maxit=20, restart_maxit=20, apgd_steps=0)
    adv.min_distortion(m32, x, y, "l2", restarts=1, maxit=20, restart_maxit=20, apgd_steps=0, dtype=None)
    assert seen == [torch.float64, torch.float32]


def test_bad_dtype_message():
    _, m32 = _pair()
    x = torch.rand(2, 6)
    with pytest.raises(ValueError, match=r"dtype must be torch.float64, torch.float32 or None, got torch.float16"):
        adv.attack(m32, x, torch.zeros(2, dtype=torch.long), "l2", 0.5, dtype=torch.float16)


@pytest.mark.parametrize("feat_dtype", [torch.float64, torch.float32])
def test_perceptual_attack_with_features_of_either_precision(feat_dtype):
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    feats = copy.deepcopy(model).to(feat_dtype)
    dist = adv.Perceptual(adv.classifier_features(feats))
    res = adv.attack(model, x, y, dist, 0.5, restarts=2, maxit=30, restart_maxit=30)  # float32 solve
    v = adv.judge(model, x, y, res.x_adv, dist, 0.5)
    assert torch.equal(v.success, res.success)
    assert (v.distance <= 0.5 * (1 + 1e-6)).all()
    res64 = adv.attack(model, x, y, dist, 0.5, restarts=2, maxit=30, restart_maxit=30, dtype=torch.float64)
    assert (adv.judge(model, x, y, res64.x_adv, dist, 0.5).distance <= 0.5 * (1 + 1e-6)).all()


def test_adapt_distance_forms():
    from adv.runner import CastDistance, adapt_distance

    x = torch.rand(2, 1, 4, 4)
    lin = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    d64 = adv.Perceptual(adv.classifier_features(lin.double()))
    a = adapt_distance(d64, x, torch.float32)
    assert isinstance(a, CastDistance) and a.dtype == torch.float64
    assert a(x, x + 0.1).dtype == torch.float32
    lin32 = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    d32 = adv.Perceptual(adv.classifier_features(lin32))
    a = adapt_distance(d32, x, torch.float64)
    assert isinstance(a, CastDistance) and a.dtype == torch.float32
    assert isinstance(adapt_distance(adv.Lp(2.0), x, torch.float32), adv.Lp)

    def anydtype(a, b):
        return (a - b).flatten(1).norm(dim=1)

    assert adapt_distance(anydtype, x, torch.float32) is anydtype


def test_new_entry_points_reject_bad_input():
    from adv.runner import adapt_distance
    from adv.zoo import fit_classifier

    _, m32 = _pair()
    x = torch.rand(2, 6)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ce_restarts must be an integer >= 0, got -1"):
        adv.attack(m32, x, y, "l2", 0.5, ce_restarts=-1)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got function"):
        model_dtype(lambda t: t)
    with pytest.raises(ValueError, match=r"dtype must be torch.float32 or torch.float64, got torch.float16"):
        adapt_distance(adv.Lp(2.0), x, torch.float16)
    rec = {"seed": 0, "lr": 1e-3, "batch_size": 2}
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \(2,\)"):
        fit_classifier(lambda: nn.Linear(6, 3), x, y.float(), rec, epochs=1, adv_from=1)
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0, got -1"):
        fit_classifier(lambda: nn.Linear(6, 3), x, y, rec, epochs=-1, adv_from=0)
    with pytest.raises(ValueError, match=r"rec is missing the recipe keys \['clean_weight', 'eps'"):
        fit_classifier(lambda: nn.Linear(6, 3), x, y, rec, epochs=1, adv_from=0)
    with pytest.raises(TypeError, match=r"make_model must be a callable"):
        fit_classifier(nn.Linear(6, 3).weight, x, y, rec, epochs=1, adv_from=1)
    # a valid plain run trains and returns a frozen eval-mode model
    m = fit_classifier(lambda: nn.Linear(6, 3), x, y, rec, epochs=1, adv_from=1)
    assert not m.training and not any(p.requires_grad for p in m.parameters())
