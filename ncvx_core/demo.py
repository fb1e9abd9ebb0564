"""``python -m ncvx_core.demo``: solve built-in nonsmooth constrained problems in batches.

1. GRANSO's nonsmooth Rosenbrock demo (``min 8|x1^2 - x2| + (1 - x1)^2`` s.t. ``sqrt(2) x1 <= 1``,
   ``2 x2 <= 1``) from 8 start points in one call, with the per-problem iteration table.
2. 64 Rayleigh-quotient problems on the unit sphere (``min -x'Ax`` s.t. ``x'x = 1``, n = 20),
   each with its own random symmetric A, compared against ``-lambda_max(A)``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from . import SolverOptions, solve


def rosenbrock(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """x (B, 2) -> f (B,), ci (B, 2)."""
    f = 8 * (x[:, 0] ** 2 - x[:, 1]).abs() + (1 - x[:, 0]) ** 2
    ci = torch.stack([math.sqrt(2) * x[:, 0] - 1, 2 * x[:, 1] - 1], dim=1)
    return f, ci, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no iteration table")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x0 = torch.cat([torch.ones(1, 2), torch.randn(7, 2)]).double()
    opts = SolverOptions(maxit=200, print_level=0 if args.quiet else 1, print_frequency=5)
    res = solve(rosenbrock, x0, opts)
    f_star = 8 * abs(0.5 - 0.5) + (1 - 1 / math.sqrt(2)) ** 2
    print("\nnonsmooth Rosenbrock, 8 start points in one batch")
    print(f"  known optimum f* = {f_star:.10f} at (1/sqrt(2), 1/2)")
    for b in range(x0.shape[0]):
        print(f"  #{b}: status {int(res.status[b])}, iters {int(res.iters[b]):3d}, best f = {float(res.best.f[b]):.10f}, "
              f"violation {float(res.best.violation[b]):.1e}, rel. error {abs(float(res.best.f[b]) - f_star) / f_star:.1e}")

    n, B = 20, 64
    g = torch.Generator().manual_seed(1)
    A = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    A = 0.5 * (A + A.transpose(1, 2))

    def rayleigh(x: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        f = -torch.einsum("bi,bij,bj->b", x, A, x)
        ce = (x * x).sum(1, keepdim=True) - 1
        return f, None, ce

    x0 = torch.randn(B, n, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    res = solve(rayleigh, x0, SolverOptions(maxit=500, opt_tol=1e-8, print_level=0))
    dt = time.perf_counter() - t0
    lam = torch.linalg.eigvalsh(A)[:, -1]
    err = ((res.best.f + lam).abs() / lam.abs())
    print(f"\nRayleigh quotient on the sphere, {B} problems (n = {n}) in one call: {dt:.2f} s")
    print(f"  success {int(res.success.sum())}/{B}; relative error vs -lambda_max: median {float(err.median()):.1e}, "
          f"max {float(err.max()):.1e}; max violation {float(res.best.violation.max()):.1e}")
    print("\n" + res.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
