"""Line-search speculation (``SolverOptions.linesearch_speculation``): the same solves with one trial
step per problem per round (``1``) and with the default (``8``), side by side in one run.

For each workload and setting: wall time, line-search rounds (calls of the problem function made
by the line search), rows evaluated by those calls, and a check that the runs agree (iterations,
``fn_evals``, statuses; the best points to round-off). Speculation never changes the search: the
extra rows are trial steps the serial search would not have reached, evaluated and discarded.

Workloads:

* ``mlp-attack``: max-loss l2 attack (eps 0.75) on the digits MLP of ``bench_reference.py``,
  ``--batch`` problems, full-memory BFGS, ``maxit`` 100 (tiny model: calls cost mostly fixed time);
* ``cnn-attack``: the same attack on the random-weight CNN of ``bench_overhead.py`` (n = 3072),
  eps 0.05, 128 problems, L-BFGS 10, ``maxit`` 20 (calls cost in proportion to their rows);
* ``adv-linf``: ``adv.attack`` l-infinity (eps 0.15, defaults) on the first ``--adv-images``
  correctly classified digits test images with ``adv.zoo.default_model("adversarial")``.

Each pair is repeated ``--repeats`` times in alternating order; the table shows the median time.
Run from the repository root::

    .venv/bin/python benchmarks/bench_linesearch.py
"""

from __future__ import annotations

import argparse
import statistics
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
    train_digits_mlp,
    write_results,
)

from ncvx_core import SolverOptions, solve  # noqa: E402

SETTINGS = (1, 8)
WORKLOADS = ("mlp-attack", "cnn-attack", "adv-linf")


class Counting:
    """Wraps an ``idx``-form problem and counts calls and rows."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> Any:
        self.calls += 1
        self.rows += int(idx.numel())
        return self.fn(x, idx)


def solver_pair(P: Any, x0: torch.Tensor, opts: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {s: {"times": []} for s in SETTINGS}
    for r in range(repeats):
        for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            fn = Counting(P)
            t = time.perf_counter()
            res = solve(fn, x0, SolverOptions(print_level=0, linesearch_speculation=s, **opts))
            out[s]["times"].append(time.perf_counter() - t)
            out[s].update(calls=fn.calls, rows=fn.rows, res=res)
    a, b = out[SETTINGS[0]]["res"], out[SETTINGS[1]]["res"]
    same = (torch.equal(a.iters, b.iters) and torch.equal(a.fn_evals, b.fn_evals) and torch.equal(a.status, b.status))
    dx = float((a.best.x - b.best.x).abs().max())
    rows = []
    for s in SETTINGS:
        o = out[s]
        res = o["res"]
        rows.append(dict(setting=s, time=statistics.median(o["times"]), calls=o["calls"], rows=o["rows"],
                         evals=int(res.fn_evals.sum()), status=status_counts(res.status),
                         agree=f"{'yes' if same else 'no'}; max |dx| {dx:.1e}"))
    return rows


def adv_pair(n_images: int, repeats: int) -> list[dict[str, Any]]:
    import adv
    from adv.problems import _Rows
    from adv.zoo import default_model, load_digits

    model = default_model("adversarial")
    x, y = load_digits("test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:n_images], y[ok][:n_images]
    counts = {"calls": 0, "rows": 0}
    orig = _Rows.__call__

    def counted(self: Any, z: torch.Tensor, idx: torch.Tensor) -> Any:  # every solver call of the protocol
        counts["calls"] += 1
        counts["rows"] += int(idx.numel())
        return orig(self, z, idx)

    out: dict[int, dict[str, Any]] = {s: {"times": []} for s in SETTINGS}
    _Rows.__call__ = counted
    try:
        for r in range(repeats):
            for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                counts.update(calls=0, rows=0)
                t = time.perf_counter()
                res = adv.attack(model, x, y, "linf", eps=0.15, solver_options={"linesearch_speculation": s})
                out[s]["times"].append(time.perf_counter() - t)
                out[s].update(calls=counts["calls"], rows=counts["rows"], res=res)
    finally:
        _Rows.__call__ = orig
    a, b = out[SETTINGS[0]]["res"], out[SETTINGS[1]]["res"]
    same = bool(torch.equal(a.success, b.success)) and bool(torch.equal(a.iterations, b.iterations))
    rows = []
    for s in SETTINGS:
        o = out[s]
        rows.append(dict(setting=s, time=statistics.median(o["times"]), calls=o["calls"], rows=o["rows"],
                         evals=int(o["res"].iterations.sum()), status=f"robust {100 * (1 - float(o['res'].success.double().mean())):.0f} %",
                         agree=f"{'yes' if same else 'no'} (successes, iterations)"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="linesearch")
    ap.add_argument("--batch", type=int, default=256, help="problems of the MLP workload (default 256)")
    ap.add_argument("--adv-images", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args()
    for name in ("batch", "adv_images", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    work = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(work) - set(WORKLOADS))
    if unknown or not work:
        ap.error(f"--workloads: expected a comma-separated subset of {', '.join(WORKLOADS)}, got {args.workloads!r}")
    device, dtype = setup(args)
    t0 = time.perf_counter()
    results: list[tuple[str, list[dict[str, Any]]]] = []
    if "mlp-attack" in work:
        log("[mlp-attack]")
        model, Xte, yte, _ = train_digits_mlp(device, dtype, seed=args.seed)
        x, y = correctly_classified(model, Xte, yte, args.batch)
        P = AttackProblem(model, x, y, 0.75)
        opts = dict(maxit=100, opt_tol=1e-6, viol_ineq_tol=1e-6, limited_mem_size=0)
        results.append((f"mlp-attack (B = {x.shape[0]}, n = 64)", solver_pair(P, P.x0(seed=args.seed), opts,
                                                                             args.repeats)))
    if "cnn-attack" in work:
        log("[cnn-attack]")
        cnn = make_cnn(device, dtype, seed=args.seed)
        x, y = cnn_inputs(cnn, 128, seed=args.seed)
        P = AttackProblem(cnn, x, y, 0.05)
        opts = dict(maxit=20, opt_tol=1e-6, viol_ineq_tol=1e-6, limited_mem_size=10)
        results.append(("cnn-attack (B = 128, n = 3072)", solver_pair(P, P.x0(seed=args.seed), opts, args.repeats)))
    if "adv-linf" in work:
        log("[adv-linf]")
        results.append((f"adv-linf (adv.attack, {args.adv_images} images)", adv_pair(args.adv_images, args.repeats)))
    head = ["workload", "linesearch_speculation", "median s", "function calls", "rows evaluated",
            "fn_evals (adv: iterations)", "outcome", "runs agree"]
    rows = []
    for name, rs in results:
        for r in rs:
            rows.append([name, r["setting"], fmt(r["time"]), r["calls"], r["rows"], r["evals"], r["status"], r["agree"]])
    body = [
        "Calls and rows count every call of the problem function (line-search rounds, plus one call per "
        "outer pass for the start point and penalty reattempts). `fn_evals` counts trial points as the "
        "serial search does, so it is the same for both settings.\n",
        md_table(head, rows),
        "",
    ]
    for name, rs in results:
        a, b = rs
        body.append(f"- {name}: calls {a['calls']} -> {b['calls']} ({fmt(b['calls'] / max(a['calls'], 1))}x), rows "
                    f"{a['rows']} -> {b['rows']} ({fmt(b['rows'] / max(a['rows'], 1))}x), time "
                    f"{fmt(a['time'])} -> {fmt(b['time'])} s ({fmt(b['time'] / a['time'])}x).\n")
    body.append(f"\nScript wall time: {time.perf_counter() - t0:.0f} s.\n")
    write_results(out_path(args, "linesearch", device), "Line-search speculation: rounds, rows and time", device,
                  body)


if __name__ == "__main__":
    main()
