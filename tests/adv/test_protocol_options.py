"""Protocol options: the l1 epigraph of the max-loss problem, rival classes and class restarts,
the default line-search cap, and in-run checks on points rounded to the caller's dtype."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import adv
from adv.losses import margin
from adv.problems import MaxLossProblem, MinDistortionProblem
from adv.runner import CheckContext, _check, default_solver_options

D = torch.float64


class Affine(nn.Module):
    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


def _three_class(dtype=D):
    """Class 0 at x = 0.5; class 1 has the smallest logit gap (rank 0 runner-up) but a far
    boundary, class 2 a larger gap but a boundary three times closer (l2):
    radius_j = gap_j / ||w_j - w_0||."""
    n = 8
    W = torch.zeros(3, n, dtype=D)
    W[1, 0] = 1.0           # ||w1 - w0|| = 1,  gap 0.3 -> radius 0.3
    W[2, 1] = 10.0          # ||w2 - w0|| = 10, gap 1.0 -> radius 0.1
    x = torch.full((2, n), 0.5, dtype=D)
    b = torch.tensor([0.0, -0.3 - 0.5, -1.0 - 5.0], dtype=D)
    model = Affine(W, b).eval().to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    y = torch.zeros(2, dtype=torch.long)
    return model, x.to(dtype), y


def test_three_class_setup_has_the_intended_radii():
    model, x, y = _three_class()
    z = model(x)
    assert torch.equal(z.argmax(1), y)
    # class 1 is the runner-up at the clean point, class 2 the nearest boundary
    assert (z[:, 1] > z[:, 2]).all()
    assert torch.allclose(z[:, 0] - z[:, 1], torch.full((2,), 0.3, dtype=D))
    assert torch.allclose(z[:, 0] - z[:, 2], torch.full((2,), 1.0, dtype=D))


def test_rival_class_replaces_the_max_over_classes():
    model, x, y = _three_class()
    p = MinDistortionProblem(model, x, y, "l2", box="none", margin_offset=0.0)
    z = x.clone()
    idx = torch.arange(2)
    _, ci, _ = p(z, idx)
    assert torch.allclose(ci[:, 0], -margin(model(x), y))
    p.rival[1] = 2
    _, ci, _ = p(z, idx)
    logits = model(x)
    assert ci[0, 0].item() == pytest.approx(-margin(logits, y)[0].item())
    assert ci[1, 0].item() == pytest.approx((logits[1, 0] - logits[1, 2]).item())
    # a targeted problem ignores rivals
    t = torch.full((2,), 2, dtype=torch.long)
    pt = MinDistortionProblem(model, x, y, "l2", target=t, box="none", margin_offset=0.0)
    pt.rival[:] = 1
    _, ci_t, _ = pt(z, idx)
    assert torch.allclose(ci_t[:, 0], -margin(logits, y, t))
    # max-loss: the margin objective uses the rival, CE does not
    eps = torch.full((2,), 0.1, dtype=D)
    pm = MaxLossProblem(model, x, y, "l2", eps, loss="margin", margin_clip=None)
    pm.rival[0] = 2
    f, _, _ = pm(z, idx)
    assert f[0].item() == pytest.approx(-(logits[0, 2] - logits[0, 0]).item())
    assert f[1].item() == pytest.approx(-margin(logits, y)[1].item())


def test_class_restarts_find_the_nearer_boundary_of_a_lower_ranked_class():
    model, x, y = _three_class()
    # PWCF alone (apgd_steps=0): the APGD bisection would move the plain radius below 0.3
    plain = adv.min_distortion(model, x, y, "l2", restarts=1, class_restarts=0, maxit=100, restart_maxit=100,
                               apgd_steps=0)
    with_cls = adv.min_distortion(model, x, y, "l2", restarts=2, class_restarts=1, maxit=100, restart_maxit=100,
                                  apgd_steps=0)
    assert with_cls.success.all(), with_cls.verdict.reason
    torch.testing.assert_close(with_cls.radius, torch.full((2,), 0.1, dtype=D), rtol=1e-2, atol=0,
                               msg="class restart should reach the class-2 boundary at 0.1")
    # the plain run follows the runner-up (class 1) to its boundary at 0.3
    assert plain.success.all()
    assert (plain.radius > 0.25).all(), plain.radius
    # the returned points are misclassified as class 2 (verified by the judge)
    assert torch.equal(model(with_cls.x_adv).argmax(1), torch.full((2,), 2))


def test_class_restarts_in_max_loss_and_logging(caplog):
    model, x, y = _three_class()
    with caplog.at_level(logging.INFO, logger="adv"):
        res = adv.attack(model, x, y, "l2", 0.15, restarts=2, class_restarts=1, maxit=60, restart_maxit=60)
    assert res.success.all(), res.verdict.reason
    assert (res.distance <= 0.15 * (1 + 1e-6)).all()
    assert any("rival class 1 of the mixed order" in r.message for r in caplog.records)
    # without the class restart the runner-up class 1 (radius 0.3) is out of reach at 0.15
    plain = adv.attack(model, x, y, "l2", 0.15, restarts=1, maxit=60, restart_maxit=60)
    assert not plain.success.any()
    with pytest.raises(ValueError, match="class_restarts"):
        adv.attack(model, x, y, "l2", 0.15, class_restarts=-1)


def _record_keyword(monkeypatch, name: str, key: str) -> list:
    """Wrap ``adv.api.<name>`` so that every call appends its keyword argument ``key`` to the
    returned list (the call itself goes through)."""
    import adv.api

    seen: list = []
    real = getattr(adv.api, name)

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        seen.append(k[key])
        return real(*a, **k)

    monkeypatch.setattr(adv.api, name, spy)
    return seen


def test_attack_aims_restarts_at_runner_up_classes_by_default(monkeypatch):
    """``class_restarts=2`` by default (capped at K - 2 classes): restarts 1 and 2 of a margin
    attack aim at the runner-up classes of rank 1 and 2; the cross-entropy loss has none."""
    seen = _record_keyword(monkeypatch, "run_max_loss", "class_restarts")
    model, x, y = _three_class()
    adv.attack(model, x, y, "l2", 0.05, restarts=2, maxit=5, restart_maxit=5)
    adv.attack(model, x, y, "l2", 0.05, loss="ce", restarts=2, maxit=5, restart_maxit=5)
    assert seen == [2, 0]
    # with the default, restart 1 of the three-class model reaches the class-2 boundary (radius 0.1)
    res = adv.attack(model, x, y, "l2", 0.15, restarts=2, maxit=60, restart_maxit=60)
    assert res.success.all(), res.verdict.reason


def test_max_loss_l1_slack_layout_and_constraints():
    model, x, y = _three_class()
    eps = torch.full((2,), 0.2, dtype=D)
    p = MaxLossProblem(model, x, y, "l1", eps, l1_slack=True, box="fold")
    assert p.n_var == 16 and p.constraint_names == ["distance", "slack", "box"]
    xs = x.clone()
    xs[:, 0] += 0.05
    xs[:, 1] -= 0.03
    z = p.x0(xs, torch.arange(2))
    assert torch.allclose(z[:, 8:], (xs - x).abs())
    assert torch.allclose(p.to_image(z), xs)
    _, ci, _ = p(z, torch.arange(2))
    assert torch.allclose(ci[:, 0], torch.full((2,), 0.08 - 0.2, dtype=D))
    assert torch.equal(ci[:, 1:], torch.zeros(2, 2, dtype=D))
    # a slack below |delta| violates the folded hinge group
    z2 = z.clone()
    z2[0, 8] = 0.0
    _, ci2, _ = p(z2, torch.arange(2))
    assert ci2[0, 1].item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="l1_slack"):
        MaxLossProblem(model, x, y, "l2", eps, l1_slack=True)


def test_attack_l1_slack_respects_the_budget():
    model, x, y = _three_class()
    # l1 radius of class 2: gap / ||w2 - w0||_inf = 1.0 / 10 = 0.1
    # (the untargeted restart heads for the runner-up class 1, whose l1 radius is 0.3)
    above = adv.attack(model, x, y, "l1", 0.11, l1_slack=True, restarts=2, class_restarts=1, maxit=80,
                       restart_maxit=80)
    below = adv.attack(model, x, y, "l1", 0.09, l1_slack=True, restarts=3, class_restarts=1, maxit=80,
                       restart_maxit=80)
    assert above.success.all(), above.verdict.reason
    assert (above.distance <= 0.11 * (1 + 1e-6)).all()
    assert not below.success.any()


def test_attack_uses_the_l1_epigraph_by_default_for_l1_only(monkeypatch):
    """``l1_slack=None`` (default) builds the per-pixel epigraph for the l1 distance only; an
    explicit value wins."""
    seen = _record_keyword(monkeypatch, "MaxLossProblem", "l1_slack")
    model, x, y = _three_class()
    for dist, explicit, want in (("l1", None, True), (adv.Lp(1.0), None, True), ("l2", None, False),
                                 ("linf", None, False), ("l1.5", None, False), ("l1", False, False)):
        seen.clear()
        adv.attack(model, x, y, dist, 0.05, l1_slack=explicit, restarts=1, maxit=5, restart_maxit=5)
        assert seen == [want], (dist, explicit, seen)


def test_default_line_search_cap():
    for kind in ("max", "min"):
        assert math.isfinite(default_solver_options(kind)["linesearch_maxit"])


def test_in_run_check_rounds_to_the_output_dtype():
    model, x, y = _three_class()
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), torch.full((2,), math.inf, dtype=D), out_dtype=torch.float32)
    pts = x + 1e-9 * torch.arange(8, dtype=D)  # not representable in float32
    c = _check(ctx, torch.arange(2), pts)
    assert torch.equal(c.x, pts.to(torch.float32).to(D))
    assert not torch.equal(c.x, pts)


def test_sparse_l1_start_is_sparse_in_the_ball_and_the_box():
    from adv.runner import sparse_l1_start

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=D)
    x[:, :, :4] = 0.0  # background pixels, as in digits
    eps = torch.tensor([0.3, 0.7, 1.5, 2.0, 4.0], dtype=D)
    s = sparse_l1_start(x, eps, torch.Generator().manual_seed(1))
    assert s.shape == x.shape and s.dtype == x.dtype
    assert (s >= 0).all() and (s <= 1).all()
    d = (s - x).reshape(5, -1)
    torch.testing.assert_close(d.abs().sum(1), 0.5 * eps, rtol=1e-12, atol=1e-12, msg="half the budget")
    # every moved pixel but the last one of each row goes to the far side of the box
    moved = d.abs() > 0
    assert (moved.sum(1) <= (0.5 * eps / 0.5).ceil().long()).all()
    far = torch.where(x.reshape(5, -1) < 0.5, 1.0, 0.0)
    full = (s.reshape(5, -1) == far) & moved
    assert ((moved.sum(1) - full.sum(1)) <= 1).all()
    # deterministic for a seeded generator
    assert torch.equal(s, sparse_l1_start(x, eps, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("parallel", [1, 2])
def test_runner_passes_rivals_per_row_and_never_mutates_the_problem(parallel):
    from adv.runner import run_min_distortion

    model, x, y = _three_class()
    p = MinDistortionProblem(model, x, y, "l2", box="none")
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), torch.full((2,), math.inf, dtype=D))
    seen: list[torch.Tensor] = []
    real_rows = p.rows  # the runner solves p.rows(rows, rival): record the rival each solver row sees

    def rows(r, rival=None, gradients=False):
        inner = real_rows(r, rival, gradients=gradients)

        def fn(z, idx):
            seen.append(torch.full_like(idx, -1) if rival is None else rival[idx].clone())
            return inner(z, idx)

        return fn

    p.rows = rows
    out = run_min_distortion(p, ctx, torch.ones(2, dtype=torch.bool), restarts=2, restart_maxit=40, maxit=200,
                             class_restarts=1, parallel_restarts=parallel)
    assert out.success.all()
    assert torch.equal(p.rival, torch.full((2,), -1))  # the per-sample rivals are never written
    assert p._row_rival is None  # the per-call override is cleared
    vals = {int(v) for t in seen for v in t.tolist()}
    assert vals == {-1, 2}  # restart 0 untargeted, restart 1 against the rank-1 runner-up (class 2)


def test_vertex_linf_start_is_a_clipped_vertex():
    from adv.runner import vertex_linf_start

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=D)
    x[0, 0, 0] = 0.0
    eps = torch.tensor([0.05, 0.1, 0.3], dtype=D)
    s = vertex_linf_start(x, eps, torch.Generator().manual_seed(2))
    assert (s >= 0).all() and (s <= 1).all()
    d = (s - x).reshape(3, -1)
    e = eps.reshape(3, 1)
    at_vertex = (d.abs() - e).abs() < 1e-12
    at_box = (s.reshape(3, -1) == 0) | (s.reshape(3, -1) == 1)
    assert (at_vertex | at_box).all()
    assert (d.abs() <= e + 1e-12).all()
    # both signs occur
    assert (d > 0).any() and (d < 0).any()


def test_parallel_restarts_groups_and_sibling_stop(caplog):
    from adv.runner import _Protocol

    model, x, y = _three_class()
    # restart 0 alone, then restarts 1 (class-2 rival, reachable at 0.15) and 2 side by side
    with caplog.at_level(logging.INFO, logger="adv"):
        res = adv.attack(model, x, y, "l2", 0.15, restarts=3, class_restarts=1, parallel_restarts=2, maxit=60,
                         restart_maxit=60)
    assert res.success.all(), res.verdict.reason
    assert (res.distance <= 0.15 * (1 + 1e-6)).all()
    assert torch.equal(model(res.x_adv).argmax(1), torch.full((2,), 2))
    assert torch.equal(res.restarts_used, torch.full((2,), 3))
    assert any("restarts 1 (rival class 1 of the mixed order), 2" in r.message for r in caplog.records)
    # the same answer one restart after the other
    seq = adv.attack(model, x, y, "l2", 0.15, restarts=3, class_restarts=1, parallel_restarts=1, maxit=60,
                     restart_maxit=60)
    assert seq.success.all()
    assert torch.equal(seq.restarts_used, torch.full((2,), 2))  # restart 2 never ran
    with pytest.raises(ValueError, match="parallel_restarts"):
        adv.attack(model, x, y, "l2", 0.15, parallel_restarts=0)

    def groups(kind, restarts, parallel):
        p = _Protocol.__new__(_Protocol)
        p.kind, p.restarts, p.parallel = kind, restarts, parallel
        return p._groups()

    assert groups("max", 5, 4) == [[0], [1, 2, 3, 4]]
    assert groups("max", 5, 1) == [[0], [1], [2], [3], [4]]
    assert groups("min", 3, 4) == [[0, 1, 2]]
    assert groups("min", 5, 2) == [[0, 1], [2, 3], [4]]


def test_halt_stops_the_sibling_rows_of_a_solved_sample():
    from types import SimpleNamespace

    from adv.runner import _Halt

    model, x, y = _three_class()
    p = MaxLossProblem(model, x, y, "l2", torch.full((2,), 0.5, dtype=D), box="none")
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), torch.full((2,), 0.5, dtype=D))
    rows = torch.tensor([0, 1, 0, 1])  # two runs of each sample side by side
    halt = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True)
    adv_pt = x.clone()
    adv_pt[:, 1] += 0.15  # past the class-2 boundary (radius 0.1)
    pts = torch.stack([adv_pt[0], x[1], x[0], x[1]])
    info = SimpleNamespace(updated=torch.tensor([True, True, False, False]), status=torch.full((4,), -1),
                           x=pts, iteration=torch.ones(4, dtype=torch.long))
    stop = halt(info)
    assert stop.tolist() == [True, False, False, False]
    info.updated = torch.tensor([False, False, True, True])  # row 2 (sample 0) updates later, not adversarial
    stop = halt(info)
    assert stop.tolist() == [False, False, True, False]  # stopped: its sample is already solved


def test_halt_defers_the_checks_of_rows_far_from_success():
    """Rows whose objective is the clipped margin and whose iterate's margin is below -0.01 are
    checked every 4th iteration only; other rows, and every row at such iterations, are checked."""
    from types import SimpleNamespace

    from adv.runner import CHECK_FAR_EVERY, CHECK_FAR_MARGIN, _Halt

    assert (CHECK_FAR_MARGIN, CHECK_FAR_EVERY) == (0.01, 4)
    model, x, y = _three_class()
    p = MaxLossProblem(model, x, y, "l2", torch.full((2,), 0.5, dtype=D), box="none")
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), torch.full((2,), 0.5, dtype=D))
    rows = torch.tensor([0, 1, 0, 1])
    adv_pt = x.clone()
    adv_pt[:, 1] += 0.15  # past the class-2 boundary (radius 0.1): a success wherever it is checked
    pts = torch.stack([adv_pt[0], adv_pt[1], x[0], x[1]])
    # solver margins at the iterates: rows 0 and 1 far (-1.0), row 2 near (-0.005), row 3 far
    f = torch.tensor([1.0, 1.0, 0.005, 1.0], dtype=D)
    margin_rows = torch.tensor([True, False, True, True])  # row 1: a rival / cross-entropy row
    halt = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True, margin_rows=margin_rows)
    info = SimpleNamespace(updated=torch.ones(4, dtype=torch.bool), status=torch.full((4,), -1), x=pts, f=f,
                           iteration=torch.full((4,), 5, dtype=torch.long))
    stop = halt(info)
    # checked: row 1 (not a margin row) and row 2 (near); row 0 deferred although it is adversarial;
    # row 3 (deferred) stops because row 1 solved its sample
    assert halt.checked == 2 and int(halt.deferred) == 2
    assert stop.tolist() == [False, True, False, True]
    # at iteration 8 every row is checked: rows 0 and 1 succeed, rows 2 and 3 are their siblings
    halt2 = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True, margin_rows=margin_rows)
    info.iteration = torch.full((4,), 8, dtype=torch.long)
    assert halt2(info).tolist() == [True, True, True, True]
    assert halt2.checked == 4 and int(halt2.deferred) == 0
    # without margin rows nothing is deferred
    halt3 = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True)
    info.iteration = torch.full((4,), 5, dtype=torch.long)
    halt3(info)
    assert halt3.checked == 4


def test_halt_stops_rows_whose_margin_has_stalled_far_from_success():
    """A row stops once its best margin has not risen by more than STALL_GAIN * max(1, |best|)
    for STALL_ITERS iterations while below -CHECK_FAR_MARGIN: margin rows by the solver's margin,
    the other rows (class and cross-entropy restarts) by the checked margin at their point; a row
    still rising and a row near success run on; a rise restarts the count."""
    from types import SimpleNamespace

    from adv.runner import CHECK_FAR_MARGIN, STALL_GAIN, STALL_ITERS, _Halt

    assert (STALL_ITERS, STALL_GAIN) == (25, 1e-3)
    model, x, y = _three_class()
    p = MaxLossProblem(model, x, y, "l2", torch.full((2,), 0.5, dtype=D), box="none")
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), torch.full((2,), 0.5, dtype=D))
    rows = torch.tensor([0, 1, 0, 1, 0, 1])
    margin_rows = torch.tensor([True, True, True, False, True, False])
    halt = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True, margin_rows=margin_rows)
    assert float(margin(model(x), y)[1]) < -CHECK_FAR_MARGIN  # row 3 sits at the clean point, far from success
    stops = []
    for it in range(1, 51):
        # row 0: flat at -1 (gains below the threshold); row 1: rises by 0.01 each iteration;
        # row 2: flat just above -CHECK_FAR_MARGIN; row 3: not a margin row, at the clean point
        # (its checked margin is flat; its solver value is ignored); row 4: flat at -2, then one
        # rise at iteration 20; row 5: not a margin row, moving towards class 1 (checked margin
        # -0.3 + 0.002 it)
        m = torch.tensor([-1.0 + 1e-4 * (it % 2), -2.0 + 0.01 * it, -0.5 * CHECK_FAR_MARGIN, 5.0,
                          -2.0 + (0.5 if it >= 20 else 0.0), -5.0], dtype=D)
        moved = x[1].clone()
        moved[0] += 0.002 * it
        pts = torch.stack([x[0], x[1], x[0], x[1], x[0], moved])  # rows 0-4 at the clean points: never a success
        info = SimpleNamespace(updated=torch.ones(6, dtype=torch.bool), status=torch.full((6,), -1), x=pts,
                               f=-m, iteration=torch.full((6,), it, dtype=torch.long))
        stops.append(halt(info))
    first = [next((i + 1 for i, s in enumerate(stops) if bool(s[r])), None) for r in range(6)]
    # rows 0 and 3 last rose at iteration 1 (their first margin), so they stop at 1 + STALL_ITERS
    assert first == [1 + STALL_ITERS, None, None, 1 + STALL_ITERS, 20 + STALL_ITERS, None]
    assert halt.stalled.tolist() == [True, False, False, True, True, False]
    # with the rule off nothing stops
    import adv.runner as runner

    old = runner.STALL_ITERS
    try:
        runner.STALL_ITERS = 0
        halt0 = _Halt(ctx, p, rows, stop_on_success=True, budget=None, repair=True, margin_rows=margin_rows)
        for it in range(1, 41):
            info.iteration = torch.full((6,), it, dtype=torch.long)
            assert not bool(halt0(info).any())
    finally:
        runner.STALL_ITERS = old


def test_default_stationarity_samples():
    from adv.runner import DEFAULT_NGRAD

    assert DEFAULT_NGRAD == {"max": 0, "min": 1}
    for kind in ("max", "min"):
        assert default_solver_options(kind)["ngrad"] == DEFAULT_NGRAD[kind]


def test_line_search_starts_from_the_previous_step_for_max_loss_only():
    assert default_solver_options("max")["linesearch_previous_step"] is True
    assert default_solver_options("min")["linesearch_previous_step"] is False


def test_max_loss_line_searches_return_their_lower_bracket_end_after_12_trials():
    """Max-loss solves end a bracketed search after 12 trials at its lower bracket end
    (``linesearch_armijo_after``); minimal distortion keeps GRANSO's search."""
    from ncvx_core import SolverOptions
    assert default_solver_options("max")["linesearch_armijo_after"] == 12
    assert default_solver_options("min")["linesearch_armijo_after"] is None
    for kind in ("max", "min"):
        SolverOptions(**default_solver_options(kind))  # valid options


def test_solves_take_closed_form_constraint_gradients_unless_asked_for_autograd(monkeypatch):
    """The runner's solves call ``problem.with_gradients`` (``globalAD=False``, the default);
    ``solver_options={'globalAD': True}`` goes back to one autograd pass per column, with the
    same verdicts on a linear classifier."""
    import adv
    from adv.problems import MaxLossProblem as MLP

    assert default_solver_options("max")["globalAD"] is False
    assert default_solver_options("min")["globalAD"] is False
    model, x, y = _three_class()
    calls = {"with": 0, "plain": 0}
    w0, c0 = MLP.with_gradients, MLP.__call__

    def counted_with(self, z, idx):
        calls["with"] += 1
        return w0(self, z, idx)

    def counted_call(self, z, idx):
        calls["plain"] += 1
        return c0(self, z, idx)

    monkeypatch.setattr(MLP, "with_gradients", counted_with)
    monkeypatch.setattr(MLP, "__call__", counted_call)
    a = adv.attack(model, x, y, "l2", eps=0.3, restarts=2, maxit=30, restart_maxit=15)
    assert calls["with"] > 0 and calls["plain"] == 0
    calls.update({"with": 0, "plain": 0})
    b = adv.attack(model, x, y, "l2", eps=0.3, restarts=2, maxit=30, restart_maxit=15,
                   solver_options={"globalAD": True})
    assert calls["with"] == 0 and calls["plain"] > 0
    assert torch.equal(a.success, b.success)


def test_rows_view_rejects_bad_rows_and_rivals():
    model, x, y = _three_class()
    p = MinDistortionProblem(model, x, y, "l2", box="none")
    rows = torch.tensor([0, 1, 0])
    with pytest.raises(TypeError, match="rows must be a 1-D int64 tensor"):
        p.rows(rows.double())
    with pytest.raises(ValueError, match=r"rival must be an int64 tensor of shape \(3,\)"):
        p.rows(rows, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="rival must be"):
        p.rows(rows, torch.tensor([-1.0, 2.0, 1.0]))
    f = p.rows(rows, torch.tensor([-1, 2, 2]))  # repeated positions with their own rivals
    z = x[rows].reshape(3, -1)
    _, ci, _ = f(z, torch.arange(3))
    assert ci[0, 0] != ci[2, 0]  # same sample, different rival: different misclassification constraint


def test_ce_rows_maximise_the_clipped_cross_entropy():
    from adv.losses import cross_entropy
    from adv.problems import CE_ROW

    model, x, y = _three_class()
    eps = torch.full((2,), 0.5, dtype=D)
    p = MaxLossProblem(model, x, y, "l2", eps, box="none", num_classes=3)
    z = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    f_margin, ci, _ = p.rows(torch.arange(2))(z, torch.arange(2))
    f_mixed, ci2, _ = p.rows(torch.arange(2), torch.tensor([-1, CE_ROW]))(z, torch.arange(2))
    logits = model(z)
    clip = math.log(3) + 0.1
    assert f_mixed[0] == f_margin[0]
    torch.testing.assert_close(f_mixed[1], -cross_entropy(logits, y)[1].clamp(max=clip), rtol=0, atol=0)
    assert torch.equal(ci, ci2)  # only the objective changes
    # a margin-only problem (no rows override) is untouched, and the row override is cleared
    assert p._row_rival is None and torch.equal(p.rival, torch.full((2,), -1))


@pytest.mark.parametrize("parallel", [1, 4])
def test_ce_restarts_are_the_last_ones(parallel):
    from adv.problems import CE_ROW
    from adv.runner import run_max_loss

    model, x, y = _three_class()
    eps = torch.full((2,), 0.05, dtype=D)  # below both radii: no success, every restart runs
    p = MaxLossProblem(model, x, y, "l2", eps, box="none", num_classes=3)
    ctx = CheckContext(model, x, y, None, adv.Lp(2.0), eps)
    seen: list[set[int]] = []
    real_rows = p.rows

    def rows(r, rival=None, gradients=False):
        inner = real_rows(r, rival, gradients=gradients)

        def fn(z, idx):
            seen.append({-1} if rival is None else set(rival[idx].tolist()))
            return inner(z, idx)

        return fn

    p.rows = rows
    out = run_max_loss(p, ctx, torch.ones(2, dtype=torch.bool), restarts=4, restart_maxit=5, maxit=12,
                       parallel_restarts=parallel, ce_restarts=2)
    assert not out.success.any()
    vals = set().union(*seen)
    assert vals == {-1, CE_ROW}
    # restart 0 alone first: margin rows only
    assert seen[0] == {-1}
    # with 4 restarts and 2 CE ones, restarts 1 is margin and 2, 3 are CE: with one restart per
    # solve, some call sees only CE rows
    if parallel == 1:
        assert {CE_ROW} in seen
    # ce_restarts=0 never produces a CE row
    seen.clear()
    run_max_loss(p, ctx, torch.ones(2, dtype=torch.bool), restarts=3, restart_maxit=5, maxit=8,
                 parallel_restarts=parallel, ce_restarts=0)
    assert set().union(*seen) == {-1}


def test_ce_restart_starts_near_the_clean_input():
    from adv.runner import _start_max

    model, x, y = _three_class()
    eps = torch.full((2,), 0.3, dtype=D)
    ctx = CheckContext(model, x, y, None, adv.Lp(math.inf), eps)
    rows = torch.arange(2)
    far = _start_max(ctx, rows, 3, 0, "blend")
    near = _start_max(ctx, rows, 3, 0, "blend", near=True)
    dfar = (far - x).abs().amax(1)
    dnear = (near - x).abs().amax(1)
    assert (dnear <= 0.5 * eps).all() and (dfar > 0.5 * eps).all()
    assert not torch.equal(near, _start_max(ctx, rows, 0, 0, "blend"))  # its own random draw


def test_default_restarts_are_13_for_l1_and_7_otherwise(monkeypatch):
    """``restarts=None`` (the default) runs 13 restarts for the l1 distance and 7 for the others;
    an explicit value wins."""
    import adv.api as api

    assert adv.default_restarts("l1") == adv.default_restarts(adv.Lp(1)) == 13
    for d in ("l2", "linf", "l1.5", adv.Lp(0.5)):
        assert adv.default_restarts(d) == 7
    seen = []
    real = api.run_max_loss

    def spy(*a, **k):
        seen.append(k["restarts"])
        return real(*a, **k)

    monkeypatch.setattr(api, "run_max_loss", spy)
    model, x, y = _three_class()
    for dist, want in (("l1", 13), ("l2", 7), ("linf", 7)):
        adv.attack(model, x, y, dist, 1e-3, maxit=2, restart_maxit=1)
        assert seen[-1] == want
    adv.attack(model, x, y, "l1", 1e-3, restarts=2, maxit=2, restart_maxit=1)
    assert seen[-1] == 2


# -- the order of the rival classes -------------------------------------------------------------
def _linear_k(K=6, n=8, B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, n, generator=g, dtype=D)
    b = torch.randn(K, generator=g, dtype=D)
    x = torch.rand(B, n, generator=g, dtype=D)
    model = Affine(W, b).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    y = model(x).argmax(1)
    return model, x, y, W, b


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 1.5, 0.5])
def test_linearised_order_is_the_exact_boundary_distance_of_a_linear_model(p):
    """For a linear classifier the first-order estimate is exact: the lp distance from x to the
    hyperplane z_c = z_y is (z_y - z_c) / ||w_c - w_y||_q (q the dual exponent; q = inf for p <= 1)."""
    from adv.distances import Lp
    from adv.runner import rival_order

    model, x, y, W, b = _linear_k()
    z = model(x)
    q = math.inf if p <= 1 else (1.0 if math.isinf(p) else p / (p - 1))
    d = torch.empty_like(z)
    for c in range(z.shape[1]):
        d[:, c] = (z[torch.arange(5), y] - z[:, c]) / torch.linalg.vector_norm(W[c] - W[y], ord=q, dim=1)
    d[torch.arange(5), y] = math.inf
    want = d.argsort(1)[:, :-1]
    got = rival_order(model, x, y, Lp(p), how="linearised")
    assert torch.equal(got, want)
    logit = rival_order(model, x, y, Lp(p), how="logit")
    assert torch.equal(logit, z.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)[:, :-1])
    # only the `candidates` classes of largest logit are reordered; the rest keep the logit order
    two = rival_order(model, x, y, Lp(p), how="linearised", candidates=2)
    assert torch.equal(two[:, 2:], logit[:, 2:])
    assert torch.equal(two[:, :2].sort(1).values, logit[:, :2].sort(1).values)
    assert (d.gather(1, two[:, :1]) <= d.gather(1, two[:, 1:2])).all()


def test_mixed_order_interleaves_without_repeats_and_other_distances_use_logits():
    from adv.distances import Lp
    from adv.runner import rival_order

    model, x, y, _, _ = _linear_k(K=7, B=12, seed=3)
    lin = rival_order(model, x, y, Lp(2.0), how="linearised")
    logit = rival_order(model, x, y, Lp(2.0), how="logit")
    mixed = rival_order(model, x, y, Lp(2.0), how="mixed")
    assert mixed.shape == (12, 6)
    for i in range(12):
        assert sorted(mixed[i].tolist()) == sorted(c for c in range(7) if c != y[i])
        top = int(logit[i, 0])  # where restart 0 usually ends: last
        want: list[int] = []
        for a, b in zip(lin[i, :5].tolist(), logit[i, 1:].tolist()):
            for c in (a, b):
                if c not in want and c != top:
                    want.append(c)
        want += [c for c in lin[i].tolist() if c not in want and c != top] + [top]
        assert mixed[i].tolist() == want
    # a perceptual distance has no dual norm here: the logit order
    per = adv.Perceptual(lambda t: [t.reshape(t.shape[0], 1, 2, 4)])
    assert torch.equal(rival_order(model, x, y, per, how="mixed"), logit)
    with pytest.raises(ValueError, match="class_order"):
        rival_order(model, x, y, Lp(2.0), how="nearest")
    m3, x3, y3 = _three_class()
    with pytest.raises(ValueError, match="class_order"):
        adv.attack(m3, x3, y3, "l2", 0.15, class_order="nearest")
    with pytest.raises(ValueError, match="class_order"):
        adv.min_distortion(m3, x3, y3, "l2", class_order=None)


def test_linearised_class_restart_reaches_a_boundary_the_logit_order_misses():
    """Four classes at x = 0.5 (class 0): runner-ups by logit gap 1 (gap 0.3, l2 radius 0.3),
    2 (gap 0.6, radius 0.4), 3 (gap 1.0, radius 0.1). One class restart with the logit order aims at
    rank 1 (class 2); with the linearised or mixed order it aims at the nearest boundary, class 3,
    and reaches 0.1 on every sample."""
    from adv.distances import Lp
    from adv.runner import rival_order

    n = 8
    W = torch.zeros(4, n, dtype=D)
    W[1, 0], W[2, 1], W[3, 2] = 1.0, 1.5, 10.0
    b = torch.tensor([0.0, -0.3 - 0.5, -0.6 - 0.75, -1.0 - 5.0], dtype=D)
    model = Affine(W, b).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = torch.full((2, n), 0.5, dtype=D)
    y = torch.zeros(2, dtype=torch.long)
    assert rival_order(model, x, y, Lp(2.0), how="logit")[0].tolist() == [1, 2, 3]
    assert rival_order(model, x, y, Lp(2.0), how="linearised")[0].tolist() == [3, 1, 2]
    kw = dict(restarts=2, class_restarts=1, maxit=100, restart_maxit=100, apgd_steps=0)
    res = {o: adv.min_distortion(model, x, y, "l2", class_order=o, **kw) for o in ("logit", "linearised", "mixed")}
    for o in ("linearised", "mixed"):
        torch.testing.assert_close(res[o].radius, torch.full((2,), 0.1, dtype=D), rtol=1e-2, atol=0)
        assert torch.equal(model(res[o].x_adv).argmax(1), torch.full((2,), 3))
    # the logit order's restart 1 aims at class 2; its points end wherever the local solves lead
    # (class 1 at 0.3, or class 3 from some starts), never below the nearest boundary
    assert (res["logit"].radius >= 0.1 * (1 - 1e-2)).all(), res["logit"].radius


def test_perceptual_class_restarts_keep_the_logit_ranks(caplog):
    """Distances without a dual norm use the logit order, and restart r aims at logit rank r (not
    r - 1, the shift of the orders that start with the nearest class); lp distances name the order."""
    model, x, y = _three_class()
    per = adv.Perceptual(lambda t: [t.reshape(t.shape[0], 2, 2, 2)])
    with caplog.at_level(logging.INFO, logger="adv"):
        adv.attack(model, x, y, per, 1e-3, restarts=2, class_restarts=1, maxit=5, restart_maxit=5)
    assert any("runner-up class of rank 1" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adv"):
        adv.attack(model, x, y, "l2", 0.05, restarts=2, class_restarts=1, maxit=5, restart_maxit=5)
    assert any("rival class 1 of the mixed order" in r.message for r in caplog.records)


def test_rival_order_edge_cases_flat_classes_and_misclassified_inputs():
    """A class whose logit moves exactly like the label's (zero gradient of the gap: no boundary
    within reach) is ranked last among the candidates; an input already classified as a rival has
    that rival first (distance 0); the result is always a permutation of the other classes."""
    from adv.distances import Lp
    from adv.runner import rival_order

    n = 4
    W = torch.zeros(5, n, dtype=D)
    W[1, 0], W[2, 1], W[3, 2] = 1.0, 2.0, 3.0  # class 4 has the label's (zero) weights
    b = torch.tensor([0.0, -0.5, -0.7, -1.0, -0.1], dtype=D)
    model = Affine(W, b).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    x = torch.zeros(2, n, dtype=D)
    x[1, 2] = 1.0  # z_3 = 2 > z_0 = 0: sample 1 is already misclassified as class 3
    y = torch.zeros(2, dtype=torch.long)
    for how in ("linearised", "mixed"):
        got = rival_order(model, x, y, Lp(2.0), how=how)
        for i in range(2):
            assert sorted(got[i].tolist()) == [1, 2, 3, 4]
    lin = rival_order(model, x, y, Lp(2.0), how="linearised")
    assert lin[0, -1].item() == 4  # flat: never reached
    assert lin[1, 0].item() == 3   # already across its boundary


def test_rival_order_rejects_bad_input():
    from adv.distances import Lp
    from adv.runner import rival_order

    model, x, y = _three_class()
    l2 = Lp(2.0)
    with pytest.raises(ValueError, match="candidates"):
        rival_order(model, x, y, l2, candidates=0)
    with pytest.raises(ValueError, match="candidates"):
        rival_order(model, x, y, l2, candidates=2.5)
    with pytest.raises(ValueError, match="x64"):
        rival_order(model, x.long(), y, l2)
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        rival_order(model, x, y[:1], l2)
    with pytest.raises(TypeError, match="y must have dtype torch.int64"):
        rival_order(model, x, y.float(), l2)
    with pytest.raises(ValueError, match=r"y must be in \[0, 3\)"):
        rival_order(model, x, torch.tensor([0, 3]), l2)
    with pytest.raises(ValueError, match="model64 must return"):
        rival_order(lambda t: t[:, :1], x, y, l2)
