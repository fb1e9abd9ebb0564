"""benchmarks/bench_products.py: its column-layout reference is the same product as
``LBFGS.matmul`` (so the timings compare like with like)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_products  # noqa: E402


def test_column_layout_reference_equals_lbfgs_matmul():
    for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        lb, st = bench_products.filled_state(5, 4, 40, dt, seed=3)
        for c in (1, 3):
            V = torch.randn(5, 40, c, dtype=dt)
            ref = bench_products.lbfgs_matmul_columns(st, V)
            out = lb.matmul(st, V)
            assert out.shape == ref.shape == (5, 40, c)
            assert float((out - ref).abs().max()) <= tol * float(ref.abs().max())


def test_side_by_side_times_both_calls():
    calls = []
    a, b = bench_products.side_by_side(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b"] * 4  # one warm-up each, then alternating
    assert a >= 0 and b >= 0
