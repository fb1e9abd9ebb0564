"""Host synchronisations per solver iteration, counted on any device.

Counts, with :class:`ncvx_core.testing.sync.SyncCounter`, the dispatched operations that make the
host wait for a CUDA device (scalar reads, ``nonzero``, boolean-mask indexing, ``unique``) during
whole solves, and where in the solver they come from. The problem function's own operations are
reported apart ("problem function"). On a CPU the same operations cost nothing special; the count
is what a GPU run would synchronise on, so it tracks the "no host synchronisation inside an
iteration" goal without a GPU. The dispatch mode slows every operation down: no times here.

Workloads (``maxit`` 20, ``opt_tol`` = ``viol_ineq_tol`` = 1e-6, ``sync_free=True``: the code path
a CUDA device takes by default, so that a CPU run counts what a GPU run would do):

* ``mlp``: max-loss l2 attack (eps 0.75) on the digits MLP of ``bench_reference.py``, ``--batch``
  problems, L-BFGS 10 and full BFGS;
* ``cnn``: the same attack on the random-weight CNN of ``bench_overhead.py`` (n = 3072), eps 0.05,
  ``--cnn-batch`` problems, L-BFGS 10.

Each workload runs twice: with the default options and with ``strict_sync=True`` (one host read
per pass). 'per pass' divides by the passes of the solver's loop (counted, not taken from the
iteration counts: a strict pass can repeat an iteration whose line search ran out of rounds).

A second table times the workloads without the counter, default and ``strict_sync`` side by
side (``--no-timing`` skips it). A third solves the conformance problems of ``ncvx_core.testing.problems`` (batches of 8,
their reference options) with the default options and with ``strict_sync=True`` side by side,
without the counter: statuses, objectives and wall times.

Run from the repository root::

    .venv/bin/python benchmarks/bench_host_sync.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    AttackProblem,
    add_common_args,
    cnn_inputs,
    correctly_classified,
    fmt,
    log,
    make_cnn,
    md_table,
    out_path,
    setup,
    status_counts,
    timed,
    train_digits_mlp,
    write_results,
)

import ncvx_core.solver as S  # noqa: E402
import ncvx_core.testing.problems as CP  # noqa: E402
from ncvx_core import SolverOptions, solve  # noqa: E402
from ncvx_core.testing.sync import SyncCounter  # noqa: E402

CONFORMANCE = ("A1", "B1", "B2", "B3_d1", "C1", "C2", "A3", "A1_lbfgs")

TOP_SITES = 8


def count(P: Any, x0: torch.Tensor, opts: dict[str, Any]) -> dict[str, Any]:
    n = [0]
    orig = S._Solver._step

    def step(self: Any, *args: Any) -> Any:
        n[0] += 1
        return orig(self, *args)

    S._Solver._step = step  # type: ignore[method-assign]
    try:
        with SyncCounter(sites=True) as c:
            res = solve(P, x0, SolverOptions(print_level=0, **opts))
    finally:
        S._Solver._step = orig  # type: ignore[method-assign]
    passes = n[0]
    user = c.sites.get("problem function", 0)
    ours = c.n - user
    return dict(res=res, passes=passes, total=c.n, user=user, ours=ours,
                per_pass=ours / max(passes, 1), sites=c.sites)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="host_sync")
    ap.add_argument("--batch", type=int, default=64, help="problems of the MLP workloads (default 64)")
    ap.add_argument("--cnn-batch", type=int, default=16, help="problems of the CNN workload (default 16)")
    ap.add_argument("--maxit", type=int, default=20)
    ap.add_argument("--no-timing", action="store_true",
                    help="skip the timed solves of the workloads (default and strict_sync, side by side)")
    ap.add_argument("--no-conformance", action="store_true",
                    help="skip the strict_sync / default comparison on the conformance problems")
    args = ap.parse_args()
    for name in ("batch", "cnn_batch", "maxit"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device, dtype = setup(args)
    t0 = time.perf_counter()
    # sync_free=True: the solver's code path on a CUDA device (its default there), on any device
    base = dict(maxit=args.maxit, opt_tol=1e-6, viol_ineq_tol=1e-6, sync_free=True)
    log("[mlp]")
    model, Xte, yte, _ = train_digits_mlp(device, dtype, seed=args.seed)
    x, y = correctly_classified(model, Xte, yte, args.batch)
    P = AttackProblem(model, x, y, 0.75)
    log("[cnn]")
    cnn = make_cnn(device, dtype, seed=args.seed)
    xc, yc = cnn_inputs(cnn, args.cnn_batch, seed=args.seed)
    Pc = AttackProblem(cnn, xc, yc, 0.05)
    workloads = [(f"digits MLP attack, B = {x.shape[0]}, n = 64, {label}", P, dict(base, limited_mem_size=mem))
                 for mem, label in ((10, "L-BFGS 10"), (0, "full BFGS"))]
    workloads.append((f"CNN attack, B = {args.cnn_batch}, n = 3072, L-BFGS 10", Pc, dict(base, limited_mem_size=10)))
    runs: list[tuple[str, dict[str, Any]]] = []
    time_rows = []
    for name, prob, opts in workloads:
        x0 = prob.x0(seed=args.seed)
        for strict in (False, True):
            runs.append((name + (", strict_sync" if strict else ""), count(prob, x0, dict(opts, strict_sync=strict))))
        if not args.no_timing:  # side by side, without the counter
            secs = [timed(lambda v=v, p=prob, z=x0, o=opts: solve(p, z, SolverOptions(print_level=0, **o, strict_sync=v)),
                          device)[1]
                    for v in (False, True)]
            time_rows.append([name, f"{secs[0]:.2f}", f"{secs[1]:.2f}", f"{secs[1] / secs[0]:.2f}"])
            log(f"  {time_rows[-1]}")
    conf_rows = None
    if not args.no_conformance:
        log("[conformance]")
        conf_rows = conformance()

    head = ["workload", "passes", "most iterations", "sync ops (solver)", "per pass",
            "sync ops in the problem function", "status", "mean best f"]
    rows = [[name, r["passes"], int(r["res"].iters.max()), r["ours"], fmt(r["per_pass"]), r["user"],
             status_counts(r["res"].status), f"{float(r['res'].best.f.mean()):.6g}"] for name, r in runs]
    body = [
        "Sync ops = dispatched operations that synchronise with the host on a CUDA device "
        "(`ncvx_core.testing.sync.SyncCounter`). 'per pass' divides the solver's own count by the "
        "number of passes of the solver's loop. Solved with `sync_free=True`, the "
        "code path the solver takes by default on a CUDA device, whatever the device here; the "
        "`strict_sync` rows add `strict_sync=True`. The problem function (`common.AttackProblem`) "
        "reads the host itself; its count is apart.\n",
        md_table(head, rows),
        "\nWhere the solver's sync ops come from (innermost `ncvx_core` function, most frequent first):\n",
    ]
    for name, r in runs:
        top = [(k, v) for k, v in r["sites"].most_common() if k != "problem function"][:TOP_SITES]
        body.append(f"- {name}: " + "; ".join(f"`{k}` {v}" for k, v in top) + ".\n")
    body += [] if not time_rows else [
        f"\n## Time per solve on `{device}`, default against strict_sync\n\n"
        "Each workload solved once with the default options (`sync_free=True`) and once with "
        "`strict_sync=True`, one after the other, without the counter.\n",
        md_table(["workload", "default (s)", "strict_sync (s)", "strict / default"], time_rows),
    ]
    body += [] if conf_rows is None else [
        "\n## strict_sync against the default on the conformance problems\n\n"
        "Batches of 8 (`ncvx_core.testing.problems`, their reference options), solved with the "
        "default options and with `strict_sync=True` one after the other, without the counter. "
        "'same status' counts the problems whose termination codes agree; 'largest rel. f "
        "difference' compares the best objectives, problem by problem.\n",
        md_table(["problem", "status (default)", "status (strict)", "same status", "largest rel. f difference",
                  "time default (s)", "time strict (s)", "strict / default"], conf_rows),
    ]
    body.append(f"\nScript wall time: {time.perf_counter() - t0:.0f} s.\n")
    write_results(out_path(args, "host_sync", device), "Host synchronisations per solver iteration", device, body)


def conformance() -> list[list[Any]]:
    rows = []
    for name in CONFORMANCE:
        cp = getattr(CP, f"make_{name}")(batch=8)
        out = []
        for strict in (False, True):
            opts = SolverOptions(**{**cp.options, "print_level": 0, "strict_sync": strict})
            t = time.perf_counter()
            res = solve(cp.fn, cp.x0, opts)
            out.append((res, time.perf_counter() - t))
        (a, ta), (b, tb) = out
        rel = float(((a.best.f - b.best.f).abs() / a.best.f.abs().clamp(min=1e-12)).max())
        rows.append([name, status_counts(a.status), status_counts(b.status), int((a.status == b.status).sum()),
                     f"{rel:.1e}", f"{ta:.2f}", f"{tb:.2f}", f"{tb / ta:.2f}"])
        log(f"  {name}: {rows[-1]}")
    return rows


if __name__ == "__main__":
    main()
