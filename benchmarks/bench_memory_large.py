"""Peak memory of a run at n = 150 528 (ImageNet-sized), B = 32 on the CPU.

The solver's memory planner picks limited memory, a smaller gradient cache and a chunked
stationarity QP so that the run fits the machine; this script prints the plan, the wall time and
the process's peak resident set.

    python benchmarks/bench_memory_large.py [--B 32] [--n 150528] [--maxit 5]
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import time

import torch

from ncvx_core import SolverOptions, solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--n", type=int, default=150528)
    ap.add_argument("--maxit", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    B, n = args.B, args.n
    g = torch.Generator().manual_seed(0)
    c = torch.randn(B, n, generator=g, dtype=torch.float64)

    def fn(x: torch.Tensor, idx: torch.Tensor):
        f = (x - c[idx]).abs().sum(1) / n
        ci = ((x * x).sum(1) - 0.25 * n).unsqueeze(1)
        return f, ci, None

    t0 = time.perf_counter()
    res = solve(fn, torch.zeros(B, n, dtype=torch.float64), SolverOptions(print_level=0, maxit=args.maxit))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"B = {B}, n = {n}, maxit = {args.maxit}: {dt:.1f} s, peak RSS {peak:.2f} GiB")
    p = res.memory_plan
    print(f"plan: limited_mem_size = {p.limited_mem_size}, ngrad = {p.ngrad}, chunk = {p.chunk}, "
          f"estimate {p.estimate / 2**30:.2f} GiB of budget {p.budget / 2**30:.2f} GiB")
    print("status counts:", torch.bincount(res.status.clamp(min=0)).tolist())


if __name__ == "__main__":
    main()
