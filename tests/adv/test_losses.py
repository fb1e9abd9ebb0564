"""Losses: sign conventions on hand-made logits, targeted variants, DLR formula, clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adv.losses import CE_CLIP_PAPER, LOSSES, ce_clip_code, clipped, cross_entropy, dlr, margin


def T(rows):
    return torch.tensor(rows, dtype=torch.float64)


def L(vals):
    return torch.tensor(vals, dtype=torch.int64)


def test_margin_untargeted_sign_and_ties():
    z = T([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    y = L([0, 0, 1, 2])
    m = margin(z, y)
    torch.testing.assert_close(m, T([-2.0, 1.0, 0.0, 0.0]), rtol=0, atol=0)
    assert (m >= 0).tolist() == [False, True, True, True]  # ties count as success


def test_margin_targeted():
    z = T([[3.0, 1.0, 0.0], [1.0, 4.0, 0.5], [2.0, 2.0, 0.0]])
    y = L([0, 0, 0])
    t = L([1, 1, 1])
    m = margin(z, y, t)
    # z_t - max_{j != t} z_j
    torch.testing.assert_close(m, T([1.0 - 3.0, 4.0 - 1.0, 0.0]), rtol=0, atol=0)
    # target second while another wrong class first: untargeted success but targeted failure
    z2 = T([[1.0, 2.0, 3.0]])
    assert margin(z2, L([0])).item() > 0 and margin(z2, L([0]), L([1])).item() < 0


def test_cross_entropy_variants():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = L([0, 1, 2, 3, 0])
    t = L([1, 2, 3, 0, 3])
    want = -torch.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(cross_entropy(z, y), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        cross_entropy(z, y, t), F.cross_entropy(z, t, reduction="none").neg(), rtol=1e-12, atol=0
    )
    assert cross_entropy(z, y).shape == (5,)


def _dlr_formula(z, y, t=None):
    out = []
    for i in range(z.shape[0]):
        zi = z[i].tolist()
        s = sorted(zi, reverse=True)
        zy = zi[y[i]]
        if t is None:
            other = max(v for j, v in enumerate(zi) if j != y[i])
            out.append(-(zy - other) / (s[0] - s[2] + 1e-12))
        else:
            out.append(-(zy - zi[t[i]]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12))
    return torch.tensor(out, dtype=torch.float64)


def test_dlr_matches_formula():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = L([0, 1, 2, 3, 4, 0])
    t = L([1, 2, 3, 4, 0, 2])
    torch.testing.assert_close(dlr(z, y), _dlr_formula(z, y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dlr(z, y, t), _dlr_formula(z, y, t), rtol=1e-12, atol=1e-12)
    # scale invariance and shift invariance of DLR
    torch.testing.assert_close(dlr(7 * z + 3, y), dlr(z, y), rtol=1e-9, atol=1e-12)
    # sign: DLR > 0 exactly when misclassified (untargeted), = 0 on ties
    zz = T([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    d = dlr(zz, L([0, 0, 0]))
    assert d[0] < 0 and d[1] > 0 and d[2] == 0


def test_dlr_needs_classes():
    with pytest.raises(ValueError, match="K >= 3"):
        dlr(torch.zeros(2, 2), L([0, 1]))
    with pytest.raises(ValueError, match="K >= 4"):
        dlr(torch.zeros(2, 3), L([0, 1]), L([1, 2]))


def test_clipped_and_clip_constants():
    v = T([-1.0, 0.005, 0.01, 5.0])
    torch.testing.assert_close(clipped(v, 0.01), T([-1.0, 0.005, 0.01, 0.01]), rtol=0, atol=0)
    x = v.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(clipped(x, 0.01).sum(), x)
    assert g[0] == 1 and g[3] == 0
    assert CE_CLIP_PAPER == 10.0
    assert ce_clip_code(10) == pytest.approx(math.log(10) + 0.1)
    assert ce_clip_code(10) == pytest.approx(2.4, abs=0.01)  # the CIFAR-10 value of the code
    assert ce_clip_code(100) == pytest.approx(4.7, abs=0.01)  # ImageNet-100 / CIFAR-100
    with pytest.raises(ValueError, match="num_classes"):
        ce_clip_code(1)
    assert set(LOSSES) == {"margin", "ce", "dlr"}


def test_nan_row_isolated():
    z = T([[1.0, 2.0, 3.0, 0.0], [float("nan"), 0.0, 0.0, 0.0]])
    y = L([0, 0])
    for fn in LOSSES.values():
        out = fn(z, y)
        assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_shape_errors():
    with pytest.raises(ValueError, match="logits"):
        margin(torch.zeros(3), L([0, 0, 0]))
    with pytest.raises(ValueError, match="y must have shape"):
        margin(torch.zeros(3, 4), L([0, 0]))
