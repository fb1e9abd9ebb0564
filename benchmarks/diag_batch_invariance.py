"""Batch invariance on one device: the conformance problem A1 solved as one batch of 3 and as 3
single-problem solves, iterate by iterate.

On the CPU a problem's path is bit-identical alone and in any batch (``tests/test_solver.py``). On a
CUDA device the batched kernels may round differently for different batch sizes; A1's iterates
approach the kink x1^2 = x2, where a last-bit difference in a direction can change a line-search
outcome. For each problem the script reports the first logged iterate (``halt_log_fn``) at which the
batched and the single trajectories differ, with the iterates around it, for the default options,
``linesearch_speculation=1`` and ``sync_free=False``; and whether two batched runs are identical
(determinism on the device).

Run from the repository root::

    .venv/bin/python benchmarks/diag_batch_invariance.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_common_args, out_path, setup, write_results  # noqa: E402

from ncvx_core import SolverOptions, solve  # noqa: E402
from ncvx_core.testing import PROBLEMS  # noqa: E402

FIELDS = ("iteration", "x", "f", "stat", "alpha", "n_grads", "ls_evals", "updated")


def run(x0: torch.Tensor, **kw: Any) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """Solve A1 from ``x0`` and log every halt_log_fn call (copied to the host)."""
    problem = PROBLEMS["A1"](batch=x0.shape[0])
    traj: list[dict[str, torch.Tensor]] = []

    def log_fn(info: Any) -> None:
        traj.append({k: getattr(info, k).detach().cpu().clone() for k in FIELDS})

    res = solve(problem.fn, x0, SolverOptions(print_level=0, halt_log_fn=log_fn, **kw))
    return res, traj


def rows_of(traj: list[dict[str, torch.Tensor]], b: int) -> list[dict[str, Any]]:
    """Problem b's accepted iterates (and iteration 0) from a trajectory."""
    return [{k: t[k][b] for k in FIELDS} for t in traj if bool(t["updated"][b])]


def compare(x0: torch.Tensor, kw: dict[str, Any]) -> list[str]:
    res, tb = run(x0, **kw)
    _, tb2 = run(x0, **kw)
    det = len(tb) == len(tb2) and all(torch.equal(a["x"], b["x"]) for a, b in zip(tb, tb2))
    out = [f"### options {kw or 'defaults'}\n",
           f"Batched: status {res.status.tolist()}, iterations {res.iters.tolist()}; two batched runs identical: {det}.\n"]
    for b in range(x0.shape[0]):
        rs, ts = run(x0[b : b + 1], **kw)
        xb, xs = rows_of(tb, b), rows_of(ts, 0)
        first = next((i for i, (u, v) in enumerate(zip(xb, xs))
                      if not torch.equal(u["x"], v["x"]) or not torch.equal(u["stat"], v["stat"])), None)
        out.append(f"- problem {b}: alone status {int(rs.status[0])} after {int(rs.iters[0])} iterations, in the batch "
                   f"{int(res.status[b])} after {int(res.iters[b])}; first differing logged iterate: "
                   f"{'none' if first is None else first} of {min(len(xb), len(xs))}")
        if first is not None:
            for j in range(max(0, first - 1), min(first + 2, len(xb), len(xs))):
                u, v = xb[j], xs[j]
                out.append(f"  - iteration {int(u['iteration'])} (batch / alone): max |dx| "
                           f"{(u['x'] - v['x']).abs().max().item():.3e}; f {u['f'].item():.17g} / {v['f'].item():.17g}; "
                           f"stat {u['stat'].item():.6e} / {v['stat'].item():.6e}; step {u['alpha'].item():.6g} / "
                           f"{v['alpha'].item():.6g}; line-search evaluations {int(u['ls_evals'])} / {int(v['ls_evals'])}")
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="batch_invariance")
    args = ap.parse_args()
    device, _ = setup(args)
    t0 = time.perf_counter()
    x0 = PROBLEMS["A1"](batch=3).x0.to(device)
    body = ["A1 (`ncvx_core.testing.PROBLEMS['A1']`, default options), 3 start points: one batched solve "
            "against three single-problem solves. Logged iterates come from `halt_log_fn` (iteration 0 and "
            "each accepted iterate); 'differing' means x or the stationarity value is not bit-identical.\n"]
    for kw in ({}, {"linesearch_speculation": 1}, {"sync_free": False}):
        body += compare(x0, kw)
    body.append(f"Script wall time: {time.perf_counter() - t0:.0f} s.\n")
    write_results(out_path(args, "batch_invariance", device), "Batch invariance of A1, iterate by iterate", device, body)


if __name__ == "__main__":
    main()
