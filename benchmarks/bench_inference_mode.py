"""The solver in ``torch.inference_mode`` against ``torch.no_grad``, side by side.

``ncvx_core`` runs its own arithmetic (and the native QP solvers theirs) inside
``torch.inference_mode()``, which drops the autograd bookkeeping (version counters, view tracking)
every operation otherwise carries; the problem function runs outside it
(docs/batching.md, "Inference mode"). Setting ``ncvx_core.utils.INFERENCE_MODE = False`` runs the
same code under ``torch.no_grad()`` instead. This script solves each workload both ways, in
alternating order after one warm-up each, and reports the median times, their ratio and whether
the two solves agree bit for bit (iterations, status codes, best objective, stationarity).

Workloads (float64, ``opt_tol`` = ``viol_ineq_tol`` = 1e-6, the problems of ``bench_reference.py``
and ``bench_overhead.py``):

* digits MLP, max-loss l2 attack (eps 0.75), full BFGS, ``maxit`` 100, B = 32 and 256;
* digits MLP, minimal l2 distortion, full BFGS, ``maxit`` 100, B = 256;
* random-weight CNN on 3 x 32 x 32 inputs (n = 3072), l2 attack (eps 0.05), L-BFGS 10,
  ``maxit`` 20, B = 64.

Run from the repository root::

    .venv/bin/python benchmarks/bench_inference_mode.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    AttackProblem,
    MinDistortionProblem,
    add_common_args,
    cnn_inputs,
    correctly_classified,
    log,
    make_cnn,
    md_table,
    out_path,
    setup,
    side_by_side,
    status_counts,
    train_digits_mlp,
    write_results,
)

import ncvx_core.utils as U  # noqa: E402
from ncvx_core import SolveResult, SolverOptions, solve  # noqa: E402


def solve_in(mode: bool, problem: Any, x0: torch.Tensor, opts: SolverOptions) -> SolveResult:
    """One solve with ``INFERENCE_MODE`` set to ``mode`` (restored afterwards)."""
    old = U.INFERENCE_MODE
    U.INFERENCE_MODE = mode
    try:
        return solve(problem, x0, opts)
    finally:
        U.INFERENCE_MODE = old


def same_solve(a: SolveResult, b: SolveResult) -> bool:
    """Bit-for-bit agreement of iterations, status, best objective and stationarity."""
    return all(torch.equal(x, y) for x, y in ((a.iters, b.iters), (a.status, b.status), (a.best.f, b.best.f),
                                              (a.stationarity, b.stationarity)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="inference_mode")
    ap.add_argument("--repeats", type=int, default=3, help="timed solves per mode and workload (default 3)")
    ap.add_argument("--batches", default="32,256", help="digits attack batch sizes (default 32,256)")
    ap.add_argument("--mindist-batch", type=int, default=256)
    ap.add_argument("--cnn-batch", type=int, default=64)
    args = ap.parse_args()
    device, dtype = setup(args)
    t_script = time.perf_counter()
    mlp, Xte, yte, info = train_digits_mlp(device, dtype, seed=args.seed)
    full = dict(maxit=100, opt_tol=1e-6, viol_ineq_tol=1e-6, limited_mem_size=0, print_level=0)
    work: list[tuple[str, int, Any, torch.Tensor, SolverOptions]] = []
    for B in (int(b) for b in args.batches.split(",") if b):
        x, y = correctly_classified(mlp, Xte, yte, B)
        P = AttackProblem(mlp, x, y, 0.75)
        work.append(("digits MLP attack, full BFGS", B, P, P.x0(args.seed), SolverOptions(**full)))
    if args.mindist_batch > 0:
        x, y = correctly_classified(mlp, Xte, yte, args.mindist_batch)
        M = MinDistortionProblem(mlp, x, y)
        work.append(("digits MLP minimal distortion, full BFGS", args.mindist_batch, M, M.x0(args.seed),
                     SolverOptions(**full)))
    if args.cnn_batch > 0:
        cnn = make_cnn(device, dtype, seed=args.seed)
        x, y = cnn_inputs(cnn, args.cnn_batch, seed=args.seed)
        C = AttackProblem(cnn, x, y, 0.05)
        work.append(("CNN attack (n = 3072), L-BFGS 10", args.cnn_batch, C, C.x0(args.seed),
                     SolverOptions(**{**full, "maxit": 20, "limited_mem_size": 10})))
    rows = []
    for name, B, P, x0, opts in work:
        log(f"{name}, B = {B}")
        res: dict[bool, SolveResult] = {}

        def run(mode: bool, P: Any = P, x0: torch.Tensor = x0, opts: SolverOptions = opts,
                res: dict[bool, SolveResult] = res) -> None:
            res[mode] = solve_in(mode, P, x0, opts)

        off_ms, on_ms = side_by_side(partial(run, False), partial(run, True), args.repeats)
        off, on, r_off, r_on = off_ms / 1e3, on_ms / 1e3, res[False], res[True]
        rows.append([name, B, f"{off:.3f}", f"{on:.3f}", f"{off / on:.3f}", f"{100 * (1 - on / off):.1f} %",
                     "yes" if same_solve(r_off, r_on) else "NO",
                     f"{status_counts(r_on.status)}; iters {float(r_on.iters.double().mean()):.1f}"])
    body = [
        "Digits MLP: " + ", ".join(f"{k}: {v}" for k, v in info.items()) + ". CNN: conv3x3(16)-pool-conv3x3(32)-"
        "pool-linear(10), random weights, random inputs labelled with its own prediction.",
        "",
        f"Times: median of {args.repeats} solves per mode, in alternating order after one "
        "warm-up each, in one process. 'no_grad' = `ncvx_core.utils.INFERENCE_MODE = False` (the solver's "
        "arithmetic under `torch.no_grad()`); 'inference' = the default. 'same solve' = iterations, status "
        "codes, best objective and stationarity equal bit for bit.",
        "",
        md_table(["workload", "B", "no_grad s", "inference s", "ratio", "time saved", "same solve",
                  "status; mean iters"], rows),
        "",
        f"Script wall time: {time.perf_counter() - t_script:.0f} s.",
    ]
    path = out_path(args, "inference_mode", device)
    write_results(path, "The solver in inference mode against no_grad", device, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
