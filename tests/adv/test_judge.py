"""The judge rejects forged results and accepts genuine ones; it never mutates the model."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from adv.distances import Lp
from adv.judge import judge

N = 6


def make_model(dtype=torch.float32):
    """Linear 3-class model: z0 = 0, z1 = sum(x) - 3, z2 = -10. Class 1 wins iff sum(x) >= 3."""
    m = torch.nn.Sequential(torch.nn.Linear(N, 3), torch.nn.Dropout(0.5))
    with torch.no_grad():
        m[0].weight.zero_()
        m[0].weight[1].fill_(1.0)
        m[0].bias.copy_(torch.tensor([0.0, -3.0, -10.0]))
    return m.to(dtype).eval()


def setup():
    x = torch.full((1, N), 0.4, dtype=torch.float64)  # sum 2.4: class 0, margin -0.6
    y = torch.tensor([0])
    return x, y


def l2_point(x, dist):
    """x + dist * (1,...,1)/sqrt(N): margin = -0.6 + dist * sqrt(N)."""
    return x + dist / math.sqrt(N)


def test_accepts_genuine_success():
    model = make_model()
    x, y = setup()
    dmin = 0.6 / math.sqrt(N)  # l2 distance to the boundary
    xa = l2_point(x, dmin * 1.01)
    v = judge(model, x, y, xa, Lp(2), dmin * 1.02)
    assert v.success.tolist() == [True] and v.reason == ["ok"]
    assert v.distance.dtype == torch.float64 and v.margin.dtype == torch.float64
    assert v.margin.item() == pytest.approx(0.01 * 0.6, rel=1e-6)
    assert v.distance.item() == pytest.approx(dmin * 1.01, rel=1e-12)
    assert v.model_dtype == torch.float64
    assert v.x.dtype == xa.dtype


def test_rejects_point_outside_ball_by_1e5_relative():
    model = make_model()
    x, y = setup()
    eps = 0.3
    xa = l2_point(x, eps * (1 + 1e-5))  # misclassified (margin > 0) but outside
    v = judge(model, x, y, xa, "l2", eps)
    assert v.misclassified.item() and not v.within.item() and not v.success.item()
    assert "outside the ball" in v.reason[0]
    # right at the budget (inside the relative tolerance) it is accepted
    v2 = judge(model, x, y, l2_point(x, eps * (1 + 1e-7)), "l2", eps)
    assert v2.success.item()


def test_rejects_correctly_classified_point():
    model = make_model()
    x, y = setup()
    v = judge(model, x, y, l2_point(x, 0.1), Lp(2), 0.3)
    assert v.within.item() and not v.misclassified.item() and not v.success.item()
    assert v.reason[0].startswith("not misclassified")


def test_tie_counts_as_success():
    model = make_model(torch.float64)
    x, y = setup()
    # entries with exact binary sums in any order (0.4 has none: 1 + 5 * 0.4 rounds to 3 -+ 4e-16
    # depending on the order the linear layer's kernel adds in): sum = 3.0, z1 = z0 = 0; each
    # entry within 0.6 of 0.4
    xa = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.25, 0.25]], dtype=torch.float64)
    v = judge(model, x, y, xa, Lp(math.inf), 0.6)
    assert v.margin.item() == 0.0 and v.success.item()


def test_nan_point_is_a_failure_not_an_exception():
    model = make_model()
    x = torch.full((3, N), 0.4, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    xa = torch.stack([l2_point(x[0], 0.3), x[1].clone(), l2_point(x[2], 0.3)])
    xa[1, 2] = float("nan")
    v = judge(model, x, y, xa, Lp(2), 0.31)
    assert v.finite.tolist() == [True, False, True]
    assert v.success.tolist() == [True, False, True]
    assert v.reason[1] == "non-finite"
    assert torch.isnan(v.margin[1]) and torch.isnan(v.distance[1])
    inf_pt = xa.clone()
    inf_pt[1, 2] = float("inf")  # clipping would make it finite; still a failure
    assert judge(model, x, y, inf_pt, Lp(2), 0.31).success.tolist() == [True, False, True]


def test_rejects_point_that_only_succeeds_before_clipping():
    model = make_model()
    x = torch.full((1, N), 0.9, dtype=torch.float64)
    x[0, 1:] = 0.3  # sum = 0.9 + 1.5 = 2.4
    y = torch.tensor([0])
    xa = x.clone()
    xa[0, 0] = 1.6  # unclipped sum 3.1 (misclassified); clipped sum 2.5 (correct)
    with torch.no_grad():
        assert model(xa.float()).argmax(1).item() == 1
    v = judge(model, x, y, xa, Lp(math.inf), 1.0)
    assert not v.success.item() and "not misclassified" in v.reason[0]
    assert v.x.max().item() <= 1.0 and v.x[0, 0].item() == 1.0
    assert v.distance.item() == pytest.approx(0.1)  # measured on the clipped point


def test_infinite_or_nan_bound_never_succeeds():
    model = make_model()
    x, y = setup()
    xa = l2_point(x, 0.3)
    v = judge(model, x, y, xa, Lp(2), float("inf"))
    assert not v.success.item() and "no finite bound" in v.reason[0]
    v = judge(
        model,
        x.repeat(2, 1),
        y.repeat(2),
        xa.repeat(2, 1),
        Lp(2),
        torch.tensor([0.31, float("nan")]),
    )
    assert v.success.tolist() == [True, False]


def test_targeted_judge():
    model = make_model()
    x, y = setup()
    xa = l2_point(x, 0.3)  # class 1 wins
    assert judge(model, x, y, xa, Lp(2), 0.31, target=torch.tensor([1])).success.item()
    assert not judge(model, x, y, xa, Lp(2), 0.31, target=torch.tensor([2])).success.item()


def test_model_state_unchanged_and_eval_semantics():
    model = make_model()
    model.train()  # dropout active in the caller's model: the judge must not use it nor change it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = setup()
    xa = l2_point(x, 0.3)
    for _ in range(3):  # deterministic (dropout off in the judged copy)
        assert judge(model, x, y, xa, Lp(2), 0.31).success.item()
    assert model.training and model[1].training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


class Float32Only(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, x):
        if x.dtype != torch.float32:
            raise RuntimeError("this model only runs in float32")
        return self.inner(x)


def test_fallback_to_model_dtype(caplog):
    model = Float32Only()
    model.train()
    x, y = setup()
    with caplog.at_level(logging.WARNING, logger="adv"):
        v = judge(model, x, y, l2_point(x, 0.3), Lp(2), 0.31)
    assert v.success.item() and v.model_dtype == torch.float32
    assert "falling back" in caplog.text
    assert model.training and model.inner[1].training  # restored after the eval-mode call
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_argument_errors():
    model = make_model()
    x, y = setup()
    with pytest.raises(ValueError, match="x_adv must have the shape"):
        judge(model, x, y, x[:, :3], Lp(2), 0.3)
    with pytest.raises(ValueError, match="bound"):
        judge(model, x, y, x, Lp(2), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="y must be"):
        judge(model, x, y.float(), x, Lp(2), 0.3)


def test_ready_float64_evaluator_is_used():
    model = make_model()
    x, y = setup()
    xa = l2_point(x, 0.3)
    m64 = make_model(torch.float64)
    assert judge(model, x, y, xa, Lp(2), 0.31, model64=m64).success.item()
    with torch.no_grad():
        m64[0].bias[1] = -100.0  # the given evaluator, not the model, decides
    assert not judge(model, x, y, xa, Lp(2), 0.31, model64=m64).success.item()


def test_perceptual_distance_with_float32_features():
    from adv.distances import Perceptual, classifier_features

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(48, 3),
    ).eval()
    dist = Perceptual(classifier_features(net))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    xa = (x + 0.05 * torch.randn(2, 1, 4, 4, generator=g)).clamp(0, 1)
    v = judge(net, x, y, xa, dist, 10.0)
    torch.testing.assert_close(v.distance, dist(xa, x).double(), rtol=1e-5, atol=1e-7)
    assert v.within.all()
