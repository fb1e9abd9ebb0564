"""Where a batched solve spends its time: the solver's phases and its QP calls, on the CPU.

For each configuration the script times one solve with the solver's phase methods wrapped
(inclusive wall times, one row per configuration):

* ``directions``: the search direction (steering QPs and the products with H);
* ``line search``; ``function``: the problem function's forward and backward passes (timed as
  ``bench_overhead.py`` does), all of them within the line search but those at the start point;
* ``stationarity``: the gradient cache and the termination QPs, and in it ``termination QPs``
  (their matrices, the products with H and the QP solves);
* ``H update``: the (L-)BFGS update (with the products that ride along with it);
* ``other``: the rest of the iteration (records, termination tests, halt callback, bookkeeping).

and counts the QP calls per solver (``ipm``, ``enum``): calls, problems per call and, for the
interior-point solver, iterations per problem and per call (the largest of a call's problems, the
count its loop ran). Times are for the CPU, where every operation finishes before the next one
starts; on a GPU the wrapped times would only measure kernel launches.

Configurations (the options of ``bench_reference.py`` / ``bench_overhead.py``): the digits MLP
max-loss attack and minimal-distortion problem (n = 64, full BFGS, maxit 100) at each of
``--batches``, and the CNN attack (n = 3072, L-BFGS 10, maxit 20) at each of ``--cnn-batches``.

Run from the repository root::

    .venv/bin/python benchmarks/diag_phases.py [--batches 32,256] [--cnn-batches 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_overhead import TimedProblem  # noqa: E402
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
    status_counts,
    train_digits_mlp,
    write_results,
)

import ncvx_core.solver as solver_mod  # noqa: E402
from ncvx_core import SolverOptions, solve  # noqa: E402
from ncvx_core.hessian import BFGS, LBFGS  # noqa: E402
from ncvx_core.linesearch import WeakWolfe  # noqa: E402
from ncvx_core.qp import EnumQPSolver, IPMQPSolver  # noqa: E402

PHASES = ("directions", "line search", "function", "stationarity", "termination QPs", "H update")


class Recorder:
    """Inclusive wall time per phase and per-QP-solver call statistics of one solve."""

    def __init__(self) -> None:
        self.time: dict[str, float] = defaultdict(float)
        self.qp: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.depth: dict[str, int] = defaultdict(int)

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed under ``phase`` (only its outermost call counts: no double counting of
        nested calls of the same phase)."""

        def wrapper(*a: Any, **k: Any) -> Any:
            self.depth[phase] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.depth[phase] -= 1
                if self.depth[phase] == 0:
                    self.time[phase] += time.perf_counter() - t

        return wrapper

    def qp_call(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(solver: Any, qp: Any, *a: Any, **k: Any) -> Any:
            res = fn(solver, qp, *a, **k)
            act = k.get("active")
            n = int(qp.B if act is None else act.sum())
            s = self.qp[name]
            s["calls"] += 1
            s["problems"] += n
            if name == "ipm" and n:
                it = res.iters if act is None else res.iters[act]
                s["iters"] += float(it.sum())
                s["call_iters"] += float(it.max())
            return res

        return wrapper


@contextmanager
def instrumented(rec: Recorder, problem: Any) -> Iterator[Any]:
    """Wrap the solver's phase methods, the QP solvers and ``problem`` for one solve; restored on
    exit. Yields the wrapped problem."""
    patches = [
        (solver_mod._Solver, "_directions", rec.timed("directions", solver_mod._Solver._directions)),
        (solver_mod._Solver, "_stationarity", rec.timed("stationarity", solver_mod._Solver._stationarity)),
        (WeakWolfe, "search", rec.timed("line search", WeakWolfe.search)),
        (BFGS, "update_apply", rec.timed("H update", BFGS.update_apply)),
        (BFGS, "update", rec.timed("H update", BFGS.update)),
        (LBFGS, "update", rec.timed("H update", LBFGS.update)),
        (IPMQPSolver, "solve", rec.qp_call("ipm", IPMQPSolver.solve)),
        (EnumQPSolver, "solve", rec.qp_call("enum", EnumQPSolver.solve)),
    ]
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in patches]
    for cls, name, fn in patches:
        setattr(cls, name, fn)
    # the termination QPs: every QP solve made inside the stationarity phase
    orig_stat_qp = solver_mod.stationarity_qp
    solver_mod.stationarity_qp = rec.timed("termination QPs", orig_stat_qp)

    try:
        yield TimedProblem(problem, torch.device("cpu"))
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
        solver_mod.stationarity_qp = orig_stat_qp


def run_config(label: str, problem: Any, x0: torch.Tensor, opts: dict[str, Any]) -> list[Any]:
    solve(problem, x0[: min(4, x0.shape[0])], SolverOptions(**{**opts, "maxit": 3}))  # warm-up
    rec = Recorder()
    with instrumented(rec, problem) as P:
        t = time.perf_counter()
        res = solve(P, x0, SolverOptions(**opts))
        total = time.perf_counter() - t
    tm = rec.time
    tm["function"] = P.total
    accounted = tm["directions"] + tm["line search"] + tm["stationarity"] + tm["H update"]
    ipm, enum = rec.qp["ipm"], rec.qp["enum"]
    calls = ipm["calls"]
    row = [label, x0.shape[0], total, tm["directions"], tm["line search"], tm["function"], tm["stationarity"],
           tm["termination QPs"], tm["H update"], total - accounted,
           int(calls), ipm["problems"] / calls if calls else "-", ipm["iters"] / ipm["problems"] if ipm["problems"] else "-",
           ipm["call_iters"] / calls if calls else "-", int(enum["calls"]),
           f"{status_counts(res.status)}; iters {float(res.iters.double().mean()):.1f}"]
    log(f"[{label} B={x0.shape[0]}] total {total:.2f} s: " + ", ".join(f"{p} {tm[p]:.2f}" for p in PHASES)
        + f"; ipm calls {int(calls)}")
    return row


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="phases")
    ap.add_argument("--batches", type=_ints, default=[32, 256], help="digits MLP batch sizes ('' for none)")
    ap.add_argument("--cnn-batches", type=_ints, default=[128], help="CNN batch sizes ('' for none)")
    ap.add_argument("--maxit", type=int, default=100, help="MLP iterations (default 100, as bench_reference.py)")
    ap.add_argument("--cnn-maxit", type=int, default=20, help="CNN iterations (default 20, as bench_overhead.py)")
    ap.add_argument("--eps", type=float, default=0.75, help="MLP attack radius (l2)")
    ap.add_argument("--cnn-eps", type=float, default=0.05, help="CNN attack radius (l2)")
    args = ap.parse_args()
    device, dtype = setup(args)
    if device.type != "cpu":
        raise SystemExit("diag_phases.py times phases with the host clock: run it on the CPU (--device cpu)")
    base = dict(opt_tol=1e-6, viol_ineq_tol=1e-6, print_level=0)
    rows = []
    if args.batches:
        model, Xte, yte, info = train_digits_mlp(device, dtype, seed=args.seed)
        for B in args.batches:
            x, y = correctly_classified(model, Xte, yte, B)
            o = dict(base, maxit=args.maxit, limited_mem_size=0)
            A = AttackProblem(model, x, y, args.eps)
            rows.append(run_config("MLP attack", A, A.x0(args.seed), o))
            M = MinDistortionProblem(model, x, y)
            rows.append(run_config("MLP min-distortion", M, M.x0(args.seed), o))
    if args.cnn_batches:
        cnn = make_cnn(device, dtype, seed=args.seed)
        for B in args.cnn_batches:
            x, y = cnn_inputs(cnn, B, seed=args.seed)
            A = AttackProblem(cnn, x, y, args.cnn_eps)
            rows.append(run_config("CNN attack (L-BFGS 10)", A, A.x0(args.seed),
                                   dict(base, maxit=args.cnn_maxit, limited_mem_size=10)))
    body = [
        "Inclusive wall times in seconds of one solve per row (module docstring): `function` is part of "
        "`line search` (but those at the start point); `termination QPs` (their matrices, the products with H "
        "and the QP solves) is part of `stationarity`; "
        "`other` = total - (directions + line search + stationarity + H update). ipm: the interior-point "
        "solver's calls, problems per call, iterations per problem, and per call (the largest of the call's "
        "problems); enum calls: the exact small-QP solver (steering).\n",
        f"MLP: digits, n = 64, l2 attack eps = {args.eps}, full BFGS, maxit {args.maxit}; CNN: n = 3072, "
        f"l2 eps = {args.cnn_eps}, L-BFGS 10, maxit {args.cnn_maxit}; opt_tol = viol_ineq_tol = 1e-6, "
        f"{str(dtype).replace('torch.', '')}.\n",
        md_table(["problem", "B", "total s", "directions", "line search", "function", "stationarity",
                  "termination QPs", "H update", "other", "ipm calls", "problems / ipm call", "ipm iters / problem",
                  "ipm iters / call", "enum calls", "status; mean iters"], rows),
    ]
    write_results(out_path(args, "phases", device), "Solver phases and QP calls", device, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
