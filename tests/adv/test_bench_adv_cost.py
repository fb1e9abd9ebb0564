"""benchmarks/bench_adv_cost.py: the CIFAR-sized CNN, the upsampled digits, the timing helper and
the flag checks (no training, no attack)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_adv_cost  # noqa: E402


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = bench_adv_cost.CifarCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_cifar_cnn_shape_and_rows_independent():
    model = _cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        z = model(x)
        assert z.shape == (4, 10)
        assert bool(torch.isfinite(z).all())
        x2 = x.clone()
        x2[2] = torch.rand(3, 32, 32, generator=g)
        z2 = model(x2)
    others = [0, 1, 3]
    torch.testing.assert_close(z2[others], z[others], rtol=0, atol=0)
    assert not torch.equal(z2[2], z[2])


def test_upsampled_digits_shape_and_range():
    x, y = bench_adv_cost.upsampled_digits("test")
    assert x.dtype == torch.float32 and x.shape == (y.shape[0], 3, 32, 32) and y.shape[0] > 0
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_timing_helper_positive_finite():
    tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    for dt in (torch.float32, torch.float64):
        ms = bench_adv_cost.fwd_bwd_ms(tiny.to(dt), torch.rand(5, 3, 2, 2, dtype=dt), repeats=3, warmup=1)
        assert isinstance(ms, float) and math.isfinite(ms) and ms > 0


@pytest.mark.parametrize("argv, flag, value", [
    (["--n", "0"], "--n", "0"),
    (["--eps", "-0.1"], "--eps", "-0.1"),
    (["--eps", "nan"], "--eps", "nan"),
    (["--sections", "cost,bogus"], "--sections", "bogus"),
    (["--cost-repeats", "0"], "--cost-repeats", "0"),
    (["--cost-warmup", "-1"], "--cost-warmup", "-1"),
    (["--aa-steps", "0"], "--aa-steps", "0"),
    (["--dtype", "float32"], "--dtype", "float32"),
])
def test_bad_flag_exits_naming_it(capsys, argv, flag, value):
    with pytest.raises(SystemExit) as e:
        bench_adv_cost.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err


def test_defaults_parse():
    args = bench_adv_cost.parse_args([])
    assert args.section_list == ["cost", "attack"]
    assert args.n >= 10 and 0 < args.eps < 1
