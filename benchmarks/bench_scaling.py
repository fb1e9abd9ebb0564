"""Time per problem and peak memory of ncvx_core against the batch size B (fixed n) and against the
problem size n (small B, limited memory), on a cheap synthetic nonsmooth constrained problem:

    f = mean|x - c| + 0.5 mean(x^2),   ci = mean(x^2) - r^2 <= 0   (c per problem, r = 0.5)

Each configuration runs in a fresh subprocess (this script re-invoked with ``--worker``) so that
peak memory is that configuration's own: on the CPU ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
after the solve (and the RSS just before it, so the solver's share can be read off); on CUDA
``torch.cuda.max_memory_allocated`` around the solve. The solver's own estimate
(``res.memory_plan.estimate``) is shown next to it. A configuration that fails or is killed
(e.g. out of memory) is recorded as such and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    SyntheticProblem,
    add_common_args,
    available_memory,
    log,
    md_table,
    out_path,
    setup,
    status_counts,
    sync,
    write_results,
)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def _rss_now_kib() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker(cfg: dict[str, Any], args: argparse.Namespace) -> None:
    from ncvx_core import SolverOptions, solve

    device, dtype = setup(args)
    # warm-up on a tiny problem: first-call costs (kernel selection, allocator) are not measured
    Pw = SyntheticProblem(2, 8, device, dtype, seed=1)
    solve(Pw, Pw.x0(), SolverOptions(maxit=2, print_level=0))
    B, n = cfg["B"], cfg["n"]
    P = SyntheticProblem(B, n, device, dtype, seed=args.seed)
    x0 = P.x0()
    opts = dict(maxit=cfg["maxit"], print_level=0, limited_mem_size=cfg["lbfgs"])
    if cfg.get("ngrad"):
        opts["ngrad"] = cfg["ngrad"]
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss0 = _rss_now_kib()
    t0 = time.perf_counter()
    res = solve(P, x0, SolverOptions(**opts))
    sync(device)
    secs = time.perf_counter() - t0
    out = {
        "seconds": secs,
        "iters_mean": float(res.iters.double().mean()),
        "iters_sum": int(res.iters.sum()),
        "status": status_counts(res.status.cpu()),
        "rss_before_mib": rss0 / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    plan = res.memory_plan
    if plan is not None:
        out["plan"] = {"limited_mem_size": plan.limited_mem_size, "ngrad": plan.ngrad, "chunk": plan.chunk,
                       "estimate_mib": plan.estimate / 2**20, "reasons": list(plan.reasons)}
    if device.type == "cuda":
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def rough_bytes(cfg: dict[str, Any], elt: int) -> int:
    """Rough peak of the solver's buffers (cache of L = ngrad samples held ~3 times, L-BFGS pairs,
    (B, n, n) ~3 times for full memory); measured peaks were within ~30 % of this on the CPU."""
    B, n, m = cfg["B"], cfg["n"], cfg["lbfgs"]
    L = cfg.get("ngrad") or min(100, 2 * n, n + 10)
    return B * n * elt * (9 * L + 2 * m + (3 * n if m == 0 else 0))


def run_point(cfg: dict[str, Any], args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg), "--device", args.device,
           "--dtype", args.dtype, "--seed", str(args.seed)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["process_s"] = wall
            return r
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
    why = f"exit code {p.returncode}" + (" (killed: out of memory?)" if p.returncode in (-9, 137) else "")
    return {"error": f"{why}: {tail[0][:160]}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="scaling")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--b-sweep", type=_ints, default=[1, 4, 16, 64, 256, 1024], help="B values at fixed --b-sweep-n")
    ap.add_argument("--b-sweep-n", type=int, default=1024)
    ap.add_argument("--b-sweep-lbfgs", type=int, default=10, help="limited_mem_size of the B sweep (0 = full BFGS)")
    ap.add_argument("--n-sweep", type=_ints, default=[64, 1024, 3072, 12288, 150528], help="n values at fixed --n-sweep-B")
    ap.add_argument("--n-sweep-B", type=int, default=4)
    ap.add_argument("--n-sweep-lbfgs", type=int, default=10)
    ap.add_argument("--full-sweep", type=_ints, default=[1, 4, 16, 64],
                    help="B values of an extra full-memory sweep at n = --full-sweep-n (empty to skip)")
    ap.add_argument("--full-sweep-n", type=int, default=512)
    ap.add_argument("--maxit", type=int, default=10)
    ap.add_argument("--ngrad", type=int, default=0, help="cache size (0 = the solver's default)")
    ap.add_argument("--mem-fraction", type=float, default=0.4,
                    help="skip points whose rough memory need exceeds this fraction of the free memory (default 0.4; "
                         "on a shared machine the out-of-memory killer may pick another user's process)")
    ap.add_argument("--point-timeout", type=float, default=240.0, help="seconds per configuration")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="stop starting new configurations after this many seconds (default 540)")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args)
        return 0
    device, dtype = setup(args)
    # on SIGTERM (e.g. from `timeout`) exit through an exception, so that subprocess.run kills the worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_script = time.perf_counter()
    sweeps = [("B", args.b_sweep_n, args.b_sweep_lbfgs, [(B, args.b_sweep_n) for B in args.b_sweep])]
    if args.full_sweep:
        sweeps.append(("B (full memory)", args.full_sweep_n, 0, [(B, args.full_sweep_n) for B in args.full_sweep]))
    sweeps.append(("n", args.n_sweep_B, args.n_sweep_lbfgs, [(args.n_sweep_B, n) for n in args.n_sweep]))
    intro = [f"Synthetic problem f = mean|x - c| + 0.5 mean(x^2), ci = mean(x^2) - 0.25 <= 0; maxit = {args.maxit}, "
            f"other options at their defaults; {args.dtype}; each point in a fresh subprocess after a tiny warm-up solve. "
            "'s / problem' = solve wall time / B; 'ms / problem-iter' = wall time / (sum of accepted iterations). "
            "Peak RSS is the process's maximum resident set (includes Python, torch and the data); 'RSS before' "
            "is the resident set just before the solve. 'plan estimate' is the solver's own estimate of its buffers.\n"]
    rows: list[list[Any]] = []
    stopped = False
    hdr = ["sweep", "B", "n", "memory", "ngrad", "solve s", "s / problem", "ms / problem-iter", "mean iters", "status",
           "RSS before MiB", "peak RSS MiB", "plan estimate MiB"]
    if device.type == "cuda":
        hdr.append("CUDA peak MiB (solve)")

    def emit(final: bool) -> None:
        """(Re)write the results file; called after every point so a killed run keeps its rows."""
        padded = [r + [None] * (len(hdr) - len(r)) if len(r) < len(hdr) else r for r in rows]
        text = intro + [md_table(hdr, padded)]
        if stopped:
            text.append(f"\nSome points were not run: the --budget of {args.budget:.0f} s was used up.\n")
        text.append(f"\nScript wall time: {time.perf_counter() - t_script:.0f} s"
                    + (".\n" if final else " so far (PARTIAL: the run was still going when this was written).\n"))
        write_results(out_path(args, "scaling", device), "Scaling with B and n (synthetic problem)", device, text,
                      quiet=not final)

    for name, _fixed, lbfgs, points in sweeps:
        for B, n in points:
            mem = f"L-BFGS {lbfgs}" if lbfgs else "full"
            if time.perf_counter() - t_script > args.budget:
                rows.append([name, B, n, mem, None, f"not run: --budget {args.budget:.0f} s used up"])
                stopped = True
                emit(final=False)
                continue
            cfg = {"B": B, "n": n, "lbfgs": lbfgs, "maxit": args.maxit, "ngrad": args.ngrad}
            need = rough_bytes(cfg, torch.finfo(dtype).bits // 8)
            free = available_memory(device)
            if need > args.mem_fraction * free:
                why = (f"skipped: rough need {need / 2**30:.1f} GiB > {args.mem_fraction} x free "
                       f"{free / 2**30:.1f} GiB (--mem-fraction)")
                log(f"[{name}] B = {B}, n = {n}: {why}")
                rows.append([name, B, n, mem, None, why])
                emit(final=False)
                continue
            log(f"[{name}] B = {B}, n = {n}, {mem} ...")
            r = run_point(cfg, args, args.point_timeout)
            if "error" in r:
                log(f"  {r['error']}")
                rows.append([name, B, n, mem, None, r["error"]])
                emit(final=False)
                continue
            plan = r.get("plan") or {}
            used = (f"L-BFGS {plan['limited_mem_size']}" if plan.get("limited_mem_size") else "full") if plan else mem
            if plan.get("reasons"):
                used += " (planner: " + "; ".join(plan["reasons"])[:120] + ")"
            row = [name, B, n, used, plan.get("ngrad"), r["seconds"], r["seconds"] / B,
                   r["seconds"] / max(r["iters_sum"], 1) * 1e3, r["iters_mean"], r["status"], r["rss_before_mib"],
                   r["peak_rss_mib"], plan.get("estimate_mib")]
            if device.type == "cuda":
                row.append(r.get("cuda_peak_mib"))
            rows.append(row)
            emit(final=False)
            log(f"  {r['seconds']:.2f} s ({r['seconds'] / B * 1e3:.1f} ms / problem), peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (f", CUDA peak {r['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in r else ""))
    emit(final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
