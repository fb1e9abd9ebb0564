"""``python -m ncvx_core.demo``: solve built-in nonsmooth constrained problems in batches.

1. GRANSO's nonsmooth Rosenbrock demo (``min 8|x1^2 - x2| + (1 - x1)^2`` s.t. ``sqrt(2) x1 <= 1``,
   ``2 x2 <= 1``) from 8 start points in one call, with the per-problem iteration table.
2. 64 projections onto the unit l1 ball (``min ||x - a_b||^2`` s.t. ``||x||_1 <= 1``, n = 10), each
   problem with its own data, compared against the exact (sort-based) projection.
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


def _project_l1(v: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """Exact Euclidean projection of the rows of v (B, n) onto the l1 ball (sort-based)."""
    u = v.abs().sort(dim=1, descending=True).values
    css = u.cumsum(1) - radius
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = ((u - css / k) > 0).long().cumsum(1).argmax(1)
    theta = (css.gather(1, rho[:, None]) / (rho[:, None] + 1).to(v.dtype)).clamp(min=0)
    return torch.sign(v) * (v.abs() - theta).clamp(min=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no iteration table")
    args = ap.parse_args(argv)
    # the demo's problems are tiny: one thread avoids OpenMP start-up and oversubscription costs,
    # which on a small shared machine can make such runs ten times slower
    torch.set_num_threads(1)
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

    n, B = 10, 64
    g = torch.Generator().manual_seed(1)
    a = 2 * torch.randn(B, n, generator=g, dtype=torch.float64)

    def l1_ball(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Projection of a_b onto the unit l1 ball: a nonsmooth constraint per problem."""
        return ((x - a[idx]) ** 2).sum(1), (x.abs().sum(1) - 1).unsqueeze(1), None

    t0 = time.perf_counter()
    res = solve(l1_ball, torch.zeros(B, n, dtype=torch.float64), SolverOptions(maxit=300, print_level=0))
    dt = time.perf_counter() - t0
    f_star = ((_project_l1(a) - a) ** 2).sum(1)
    err = (res.best.f - f_star).abs() / f_star
    print(f"\nprojection onto the l1 ball, {B} problems (n = {n}) with their own data in one call: {dt:.2f} s")
    print(f"  success {int(res.success.sum())}/{B}; relative error vs the exact projection: median "
          f"{float(err.median()):.1e}, max {float(err.max()):.1e}; max violation {float(res.best.violation.max()):.1e}")
    print("\n" + res.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
