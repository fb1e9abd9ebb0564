"""APGD bisection of minimal-distortion radii (adv.bisect) on affine classifiers, where the
minimal lp distortion is known in closed form: it must approach that radius from above, never
cross it, never return a worse point, and leave the samples it cannot help untouched."""

from __future__ import annotations

import math
import time

import pytest
import torch
from test_api import _linear_setup, _reference_radius

import adv
from adv import Lp
from adv.bisect import apgd_bisection, supports_apgd_bisection


def _boundary_point(x, w, gval, p, factor):
    """A point at ``factor`` times the minimal lp distance, beyond the decision boundary of the
    affine classifier ``sign(w.x + b)`` (the minimiser of the lp norm, scaled)."""
    r = _reference_radius(w, gval, p) * factor
    s = -torch.sign(gval).unsqueeze(-1)
    if p == 2:
        d = w / w.norm()
    elif math.isinf(p):
        d = torch.sign(w)
    else:  # p = 1: the coordinate of largest |w|
        d = torch.zeros_like(w)
        j = int(w.abs().argmax())
        d[j] = torch.sign(w[j])
    return x + s * r.unsqueeze(-1) * d.unsqueeze(0), r


def _affine_start(p, factor):
    """Four affine problems, their analytic radii and a verified start at ``factor`` times them."""
    model, x, y, w, gval = _linear_setup(B=4)
    ref = _reference_radius(w, gval, p)
    xa, r0 = _boundary_point(x, w, gval, p, factor)
    v0 = adv.judge(model, x, y, xa, Lp(p), r0 * (1 + 1e-9))
    assert v0.success.all()
    return model, x, y, ref, xa, v0.distance


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_bisection_approaches_the_analytic_radius_from_above(p):
    model, x, y, ref, xa, d0 = _affine_start(p, 1.2)
    out = apgd_bisection(model, x, y, Lp(p), xa, d0, steps=10, span=0.5)
    # the interval [0.6 r0, r0] = [0.72 ref, 1.2 ref] halves 10 times: 0.48 ref / 1024 < 5e-4 ref,
    # and APGD finds an adversarial point at any eps above the radius of an affine classifier
    assert out.improved.all()
    assert (out.radius <= ref * (1 + 1e-3)).all(), (out.radius / ref)
    assert (out.radius >= ref * (1 - 1e-9)).all()  # nothing closer than the true minimum exists
    v = adv.judge(model, x, y, out.x_adv, Lp(p), out.radius)
    assert v.success.all() and torch.equal(v.distance, out.radius)


def test_bisection_never_returns_a_worse_point_and_skips_what_it_cannot_help():
    model, x, y, w, gval = _linear_setup(B=4)
    ref = _reference_radius(w, gval, 2.0)
    xa, _ = _boundary_point(x, w, gval, 2.0, 1.0 + 1e-7)
    v0 = adv.judge(model, x, y, xa, "l2", math.inf)
    assert v0.misclassified.all()
    radius = v0.distance.clone()
    radius[2] = math.inf  # nothing found: must be skipped
    xa[3] = x[3]
    radius[3] = 0.0  # already misclassified / radius 0: skipped
    # every bisection midpoint lies below the true radius: APGD cannot succeed anywhere
    out = apgd_bisection(model, x, y, Lp(2.0), xa, radius, steps=4, span=0.5)
    assert not out.improved.any()
    assert torch.equal(out.radius, radius.to(torch.float64))
    assert torch.equal(out.x_adv, xa)
    assert (ref[:2] <= radius[:2]).all()


def test_bisection_rejects_bad_arguments():
    model, x, y, w, gval = _linear_setup(B=2)
    r = torch.ones(2, dtype=torch.float64)
    assert not supports_apgd_bisection(Lp(1.5)) and supports_apgd_bisection(Lp(math.inf))
    with pytest.raises(ValueError, match="dist"):
        apgd_bisection(model, x, y, Lp(1.5), x, r)
    with pytest.raises(ValueError, match="steps"):
        apgd_bisection(model, x, y, Lp(2.0), x, r, steps=-1)
    with pytest.raises(ValueError, match="span"):
        apgd_bisection(model, x, y, Lp(2.0), x, r, span=0.0)
    with pytest.raises(ValueError, match="x_adv"):
        apgd_bisection(model, x, y, Lp(2.0), x[:1], r)
    with pytest.raises(ValueError, match="radius"):
        apgd_bisection(model, x, y, Lp(2.0), x, r[:1])
    with pytest.raises(ValueError, match="radius"):
        apgd_bisection(model, x, y, Lp(2.0), x, torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="apgd_span"):
        adv.min_distortion(model, x, y, "l2", apgd_span=1.5)
    with pytest.raises(ValueError, match="apgd_steps"):
        adv.min_distortion(model, x, y, "l2", apgd_steps=-2)


def test_min_distortion_keeps_the_pwcf_radius_and_never_reports_a_larger_one():
    model, x, y, w, gval = _linear_setup(B=3)
    ref = _reference_radius(w, gval, math.inf)
    kw = dict(restarts=1, maxit=60, restart_maxit=60, refine_steps=0)
    off = adv.min_distortion(model, x, y, "linf", apgd_steps=0, **kw)
    assert torch.equal(off.radius, off.pwcf_radius)
    on = adv.min_distortion(model, x, y, "linf", **kw)
    assert torch.equal(on.pwcf_radius, off.radius)  # same PWCF run (same seed)
    assert (on.radius <= on.pwcf_radius).all() and (on.radius >= ref * (1 - 1e-9)).all()
    v = adv.judge(model, x, y, on.x_adv, "linf", on.radius)
    assert v.success.all() and torch.equal(v.distance, on.radius)
    # no APGD for other distances: the PWCF radius is the answer
    p15 = adv.min_distortion(model, x, y, Lp(1.5), restarts=1, maxit=40, restart_maxit=40)
    assert torch.equal(p15.radius, p15.pwcf_radius)


def test_targeted_bisection_and_deadline():
    model, x, y, w, gval = _linear_setup(B=3)
    ref = _reference_radius(w, gval, 2.0)
    xa, r0 = _boundary_point(x, w, gval, 2.0, 1.2)
    t = 1 - y  # two classes: the target is the other class
    v0 = adv.judge(model, x, y, xa, "l2", r0 * (1 + 1e-9), target=t)
    assert v0.success.all()
    out = apgd_bisection(model, x, y, Lp(2.0), xa, v0.distance, target=t, steps=10, span=0.5)
    assert (out.radius <= ref * (1 + 1e-3)).all() and (out.radius >= ref * (1 - 1e-9)).all()
    assert adv.judge(model, x, y, out.x_adv, "l2", out.radius, target=t).success.all()
    # a deadline in the past: no step is taken, nothing changes
    late = apgd_bisection(model, x, y, Lp(2.0), xa, v0.distance, steps=10, deadline=time.monotonic() - 1.0)
    assert late.attacks == 0 and not late.improved.any() and torch.equal(late.x_adv, xa)


def _far_logit_near_boundary():
    """Four classes at x = 0.5 (class 0). Class 1 has the largest runner-up logit (gap 0.3) and an
    l2 / l1 boundary at 0.3; class 3 a large gap (8) but a steep logit, its boundary at 0.1.
    Untargeted losses follow class 1 from the start."""
    from torch import nn

    n = 8
    W = torch.zeros(4, n, dtype=torch.float64)
    W[1, 0], W[2, 1], W[3, 2] = 1.0, 1.5, 80.0
    b = torch.tensor([0.0, -0.8, -1.35, -48.0], dtype=torch.float64)
    model = nn.Linear(n, 4).double().eval()
    with torch.no_grad():
        model.weight.copy_(W)
        model.bias.copy_(b)
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = torch.full((2, n), 0.5, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    return model, x, y


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_targeted_rivals_reach_a_boundary_the_untargeted_losses_miss(p):
    model, x, y = _far_logit_near_boundary()
    xa = x.clone()
    xa[:, 0] += 0.3 + 1e-6  # class 1's boundary point
    dist = Lp(p)
    r0 = dist.norm(xa - x)
    plain = apgd_bisection(model, x, y, dist, xa, r0, steps=8, span=0.9)
    assert (plain.radius > 0.2).all(), plain.radius  # the untargeted losses stay with class 1
    # a rival equal to the label (sample 1's first) is skipped; sample 1 then uses class 3
    out = apgd_bisection(model, x, y, dist, xa, r0, steps=8, span=0.9, rivals=torch.tensor([[3, 1], [0, 3]]))
    assert out.improved.all()
    assert ((out.radius >= 0.1 * (1 - 1e-9)) & (out.radius <= 0.1 * 1.02)).all(), out.radius
    v = adv.judge(model, x, y, out.x_adv, dist, out.radius * (1 + 1e-9))
    assert v.success.all(), v.reason
    assert torch.equal(model(out.x_adv).argmax(1), torch.full((2,), 3))
    with pytest.raises(ValueError, match="rivals"):
        apgd_bisection(model, x, y, dist, xa, r0, rivals=torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="rivals"):
        apgd_bisection(model, x, y, dist, xa, r0, rivals=torch.tensor([[3], [3]]), target=torch.tensor([3, 3]))


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_bisection_window_moves_down_until_a_first_failure(p, monkeypatch):
    """Started at 1.6 times the minimal radius with the default span 0.25, the first window
    [1.2 ref, 1.6 ref] lies above the minimum: until its first failure the search moves the window
    down with each success, then bisects, and ends within 1 % above the analytic radius. Without
    the moving window (adv.bisect.DESCEND = False) it cannot go below 0.75 of the start."""
    import adv.bisect

    model, x, y, ref, xa, d0 = _affine_start(p, 1.6)
    out = apgd_bisection(model, x, y, Lp(p), xa, d0, steps=8, span=0.25)
    assert (out.radius <= ref * 1.01).all(), out.radius / ref
    assert (out.radius >= ref * (1 - 1e-9)).all()
    v = adv.judge(model, x, y, out.x_adv, Lp(p), out.radius)
    assert v.success.all()
    monkeypatch.setattr(adv.bisect, "DESCEND", False)
    fixed = apgd_bisection(model, x, y, Lp(p), xa, d0, steps=8, span=0.25)
    assert (fixed.radius >= 0.75 * d0 * (1 - 1e-9)).all()
    assert (fixed.radius > ref * 1.1).all()
