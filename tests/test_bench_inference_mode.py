"""benchmarks/bench_inference_mode.py: its switch really changes the mode the solver computes in,
restores it, and both modes give the same solve (so the timings compare like with like)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_inference_mode as bim  # noqa: E402

import ncvx_core.utils as U  # noqa: E402
from ncvx_core import SolverOptions  # noqa: E402


def _fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    return (x - 1).abs().sum(1) + 0.1 * (x * x).sum(1), ((x * x).sum(1) - 1).unsqueeze(1), None


def test_switch_selects_the_mode_and_both_modes_solve_the_same():
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []

    def halt(info):  # H is handed over as the solver made it: an inference tensor only in inference mode
        seen.append(info.H.H.is_inference())

    res = {}
    for mode in (False, True):
        seen.clear()
        res[mode] = bim.solve_in(mode, _fn, x0, SolverOptions(maxit=10, print_level=0, halt_log_fn=halt))
        assert seen and all(s == mode for s in seen[1:]), (mode, seen)  # seen[0]: H0, made outside
        assert U.INFERENCE_MODE is True  # restored
    assert bim.same_solve(res[False], res[True])
