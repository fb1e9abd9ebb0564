"""Input checks: every bad input raises with a message naming the argument."""

from __future__ import annotations

import pytest
import torch

from adv.checks import check_eps, check_inputs


def model_k(k=4, extra=None):
    layers = [torch.nn.Flatten(), torch.nn.Linear(12, k)]
    if extra is not None:
        layers.append(extra)
    return torch.nn.Sequential(*layers).eval()


def good():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 2, 2, generator=g), torch.tensor([0, 1, 3])


def test_valid_inputs_return_k():
    x, y = good()
    assert check_inputs(model_k(), x, y) == 4
    assert check_inputs(model_k(), x, y, target=torch.tensor([1, 2, 0]), num_classes=4) == 4


def test_x_type_dtype_range_finite():
    _, y = good()
    m = model_k()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        check_inputs(m, [[0.0]], y)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        check_inputs(m, torch.zeros(3, 3, 2, 2, dtype=torch.int64), y)
    x, _ = good()
    x[1, 0, 0, 0] = 1.5
    x[2, 0, 0, 0] = -0.25
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\], got min -0.25 and max 1.5"):
        check_inputs(m, x, y)
    x, _ = good()
    x[2, 0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite.*\[2\]"):
        check_inputs(m, x, y)
    assert check_inputs(m, x, y, allow_nonfinite=True) == 4
    with pytest.raises(ValueError, match="x must have shape"):
        check_inputs(m, torch.rand(3), y)


def test_y_checks():
    x, _ = good()
    m = model_k()
    with pytest.raises(TypeError, match="y must have dtype torch.int64"):
        check_inputs(m, x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\).*\(3, 1\)"):
        check_inputs(m, x, torch.tensor([[0], [1], [2]]))
    with pytest.raises(ValueError, match=r"y must be in \[0, 4\).*\[4\]"):
        check_inputs(m, x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"y must be in \[0, 4\)"):
        check_inputs(m, x, torch.tensor([-1, 1, 2]))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        check_inputs(m, x, [0, 1, 2])


def test_target_checks():
    x, y = good()
    m = model_k()
    with pytest.raises(ValueError, match=r"target must differ from y.*\[1\]"):
        check_inputs(m, x, y, target=torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match=r"target must be in \[0, 4\)"):
        check_inputs(m, x, y, target=torch.tensor([1, 2, 7]))
    with pytest.raises(TypeError, match="target must have dtype"):
        check_inputs(m, x, y, target=torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        check_inputs(m, x, y, target=torch.tensor([1, 2]))


def test_model_output_and_num_classes():
    x, y = good()
    with pytest.raises(ValueError, match=r"model output must have shape \(B, K\)"):
        check_inputs(torch.nn.Flatten(0), x, y)
    with pytest.raises(ValueError, match="num_classes=10 but the model outputs K=4"):
        check_inputs(model_k(), x, y, num_classes=10)
    with pytest.raises(ValueError, match="model\\(x\\) failed"):
        check_inputs(torch.nn.Linear(5, 2), x, y)
    with pytest.raises(ValueError, match="K >= 2"):
        check_inputs(model_k(1), x, torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("extra", [torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.1)])
def test_training_mode_with_bn_or_dropout(extra):
    x, y = good()
    m = model_k(extra=extra)
    m.train()
    bn_before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        check_inputs(m, x, y)
    for k, v in m.state_dict().items():  # nothing ran in training mode
        torch.testing.assert_close(v, bn_before[k], rtol=0, atol=0)
    m.eval()
    assert check_inputs(m, x, y) == 4
    # a plain model in training mode (no BN/Dropout) is fine
    plain = model_k().train()
    assert check_inputs(plain, x, y) == 4


def test_check_eps():
    assert check_eps(0.5).item() == 0.5
    t = check_eps(torch.tensor([0.1, 0.2]), batch_size=2)
    assert t.shape == (2,)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be > 0 and finite"):
            check_eps(bad)
    with pytest.raises(ValueError, match="eps must be > 0 and finite.*indices \\[1\\]"):
        check_eps(torch.tensor([0.1, 0.0]))
    with pytest.raises(ValueError, match=r"eps must have shape \(3,\)"):
        check_eps(torch.tensor([0.1, 0.2]), batch_size=3)
    with pytest.raises(ValueError, match="eps must be a float or a \\(B,\\) tensor"):
        check_eps(torch.ones(2, 2))
    with pytest.raises(TypeError, match="eps"):
        check_eps("0.5")
    with pytest.raises(TypeError, match="eps"):
        check_eps(True)
