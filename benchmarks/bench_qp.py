"""The QP layer on GRANSO-shaped instances: batched backends against a loop of a tight CPU solver.

Instances (float64, built here with a fixed seed):
* steering: the box-constrained dual of the steering QP, ``Q = A^T H A`` (A: n x m constraint
  gradients, H: SPD with condition number 1e4), ``q = mu A^T H g - c``, ``0 <= w <= 1`` for
  inequalities and ``-1 <= w <= 1`` for equalities (random mix), m in ``--steer-m``;
* termination: the stationarity QP on l sampled gradients and p = 1 constraint,
  variables ``[sigma (l), lambda (l p)]``, ``sum(sigma) = 1``, ``sigma >= 0``, ``0 <= lambda <= 1``,
  ``Q = M^T H M`` with M of rank at most ``--term-n`` (= 20) and gradients drawn from 3 pieces
  plus 1e-4 noise (rank-deficient, nearly collinear), m = l (1 + p) in ``--term-m``.

Backends: ``enum`` (box-only, m <= 3), ``ipm``, ``auto`` (the solver's default), ``qpth`` (when
the package is installed), and per-problem loops of scipy ``minimize(method="SLSQP")``
(ftol 1e-14, analytic gradients) and of OSQP (eps 1e-10, polishing) when installed.

Accuracy: the scaled KKT residual of ``ncvx_core.qp.kkt_residual`` (projected-gradient residual on
the canonical scaling; 0 at a solution; a single yardstick for every backend) and the objective
gap to the best objective any backend found for that problem, relative to max(1, |best|).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_common_args, log, md_table, out_path, setup, sync, write_results  # noqa: E402

from ncvx_core.qp import BoxQP, get_qp_solver, kkt_residual, project_feasible, qp_objective  # noqa: E402

F64 = torch.float64


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def _spd(g: torch.Generator, B: int, n: int, log_cond: float) -> torch.Tensor:
    X = torch.randn(B, n, n, generator=g, dtype=F64)
    U, _ = torch.linalg.qr(X)
    ev = torch.logspace(0, -log_cond, n, dtype=F64)
    return (U * ev) @ U.mT


def steering_batch(B: int, m: int, n: int, seed: int) -> BoxQP:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, n, m, generator=g, dtype=F64)
    H = _spd(g, B, n, 4.0)
    Q = A.mT @ H @ A
    Q = 0.5 * (Q + Q.mT)
    gr = torch.randn(B, n, 1, generator=g, dtype=F64)
    mu = torch.tensor([1.0, 1e-2, 0.0], dtype=F64)[torch.randint(0, 3, (B,), generator=g)]
    c = torch.randn(B, m, generator=g, dtype=F64)
    q = mu.view(B, 1) * (A.mT @ H @ gr).squeeze(-1) - c
    eq = torch.rand(B, m, generator=g) < 0.3
    lo = torch.where(eq, -1.0, 0.0).to(F64)
    hi = torch.ones(B, m, dtype=F64)
    return BoxQP(Q, q, lo, hi)


def termination_batch(B: int, m: int, n: int, seed: int, p: int = 1) -> BoxQP:
    g = torch.Generator().manual_seed(seed)
    l = m // (1 + p)
    base = torch.randn(B, n, 3, generator=g, dtype=F64)
    pick = torch.randint(0, 3, (B, l), generator=g)
    G = torch.gather(base, 2, pick.unsqueeze(1).expand(B, n, l)) + 1e-4 * torch.randn(B, n, l, generator=g, dtype=F64)
    cons = torch.randn(B, n, p, generator=g, dtype=F64)
    J = cons.repeat(1, 1, l) + 1e-4 * torch.randn(B, n, l * p, generator=g, dtype=F64)
    M = torch.cat([G, J], 2)  # (B, n, m)
    H = _spd(g, B, n, 4.0)
    Q = M.mT @ H @ M
    Q = 0.5 * (Q + Q.mT)
    f = torch.randn(B, 1, generator=g, dtype=F64)
    ci = -torch.rand(B, p, generator=g, dtype=F64)
    q = -torch.cat([f.expand(B, l), ci.repeat(1, l)], 1)
    lo = torch.zeros(B, m, dtype=F64)
    hi = torch.ones(B, m, dtype=F64)
    hi[:, :l] = float("inf")
    mask = torch.zeros(B, m, dtype=torch.bool)
    mask[:, :l] = True
    return BoxQP(Q, q, lo, hi, mask, torch.ones(B, dtype=F64))


def to_device(qp: BoxQP, dev: torch.device) -> BoxQP:
    return BoxQP(*[None if t is None else t.to(dev) for t in (qp.Q, qp.q, qp.lo, qp.hi, qp.eq_mask, qp.r)])


# ----------------------------------------------------------------------------------------------
# per-problem CPU references
# ----------------------------------------------------------------------------------------------
def _one(qp: BoxQP, b: int) -> tuple[Any, ...]:
    Q = qp.Q[b].cpu().numpy()
    q = qp.q[b].cpu().numpy()
    lo = qp.lo[b].cpu().numpy()
    hi = qp.hi[b].cpu().numpy()
    mask = qp.eq_mask[b].cpu().numpy() if qp.eq_mask is not None else None
    r = float(qp.r[b]) if qp.r is not None else None
    return Q, q, lo, hi, mask, r


def slsqp_loop(qp: BoxQP, k: int, budget: float) -> tuple[torch.Tensor, float]:
    import numpy as np
    from scipy.optimize import minimize

    ws = []
    t0 = time.perf_counter()
    for b in range(k):
        if b and time.perf_counter() - t0 > budget:
            break
        Q, q, lo, hi, mask, r = _one(qp, b)
        x0 = np.clip(np.zeros_like(q), lo, hi)
        cons = []
        if mask is not None and mask.any():
            a = mask.astype(float)
            x0 = np.where(mask, r / mask.sum(), x0)
            cons = [{"type": "eq", "fun": lambda x, a=a, r=r: a @ x - r, "jac": lambda x, a=a: a}]
        bounds = [(lo[i], None if not np.isfinite(hi[i]) else hi[i]) for i in range(len(q))]
        res = minimize(lambda x, Q=Q, q=q: 0.5 * x @ Q @ x + q @ x, x0, jac=lambda x, Q=Q, q=q: Q @ x + q, bounds=bounds,
                       constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 2000})
        ws.append(torch.as_tensor(res.x, dtype=F64))
    return torch.stack(ws), time.perf_counter() - t0


def osqp_loop(qp: BoxQP, k: int, budget: float) -> tuple[torch.Tensor, float]:
    import numpy as np
    import osqp
    import scipy.sparse as sp

    ws = []
    t0 = time.perf_counter()
    for b in range(k):
        if b and time.perf_counter() - t0 > budget:
            break
        Q, q, lo, hi, mask, r = _one(qp, b)
        m = len(q)
        A = sp.eye(m, format="csc")
        l_, u_ = lo.copy(), np.where(np.isfinite(hi), hi, np.inf)
        if mask is not None and mask.any():
            A = sp.vstack([A, sp.csc_matrix(mask.astype(float)[None, :])], format="csc")
            l_, u_ = np.append(l_, r), np.append(u_, r)
        solver = osqp.OSQP()
        solver.setup(P=sp.csc_matrix(np.triu(Q)), q=q, A=A, l=l_, u=u_, eps_abs=1e-10, eps_rel=1e-10,
                     max_iter=200000, polish=True, verbose=False)
        res = solver.solve()
        x = res.x if res.x is not None and np.all(np.isfinite(res.x)) else np.zeros(m)
        ws.append(torch.as_tensor(x, dtype=F64))
    return torch.stack(ws), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="qp")
    ap.add_argument("--steer-m", type=_ints, default=[1, 2, 3, 16])
    ap.add_argument("--steer-B", type=int, default=256, help="problems per steering batch (default 256)")
    ap.add_argument("--steer-n", type=int, default=20)
    ap.add_argument("--term-m", type=_ints, default=[10, 50, 100, 200])
    ap.add_argument("--term-B", type=int, default=64, help="problems per termination batch (default 64)")
    ap.add_argument("--term-n", type=int, default=20)
    ap.add_argument("--backends", default="enum,ipm,auto,qpth,slsqp,osqp")
    ap.add_argument("--loop-max", type=int, default=64,
                    help="the per-problem loops run on at most this many problems; their batch time is extrapolated")
    ap.add_argument("--loop-seconds", type=float, default=8.0,
                    help="the per-problem loops stop after this many seconds (at least one problem; extrapolated)")
    ap.add_argument("--repeat", type=int, default=3, help="batched backends: best of this many timed runs")
    ap.add_argument("--tol", type=float, default=1e-12, help="tol passed to the batched backends")
    args = ap.parse_args()
    device, _ = setup(args)
    t_script = time.perf_counter()
    backends = [b for b in args.backends.split(",") if b]

    def available(name: str) -> str | None:
        try:
            if name in ("enum", "ipm", "auto", "qpth"):
                get_qp_solver(name)
            elif name == "slsqp":
                import scipy.optimize  # noqa: F401
            elif name == "osqp":
                import osqp  # noqa: F401
                import scipy.sparse  # noqa: F401
        except ImportError as exc:
            return f"not installed ({exc})"
        return None

    missing = {b: available(b) for b in backends}
    notes = [f"- `{b}`: {why}" for b, why in missing.items() if why]
    backends = [b for b in backends if not missing[b]]

    cases = [("steering", m, args.steer_B, steering_batch(args.steer_B, m, args.steer_n, args.seed + m)) for m in args.steer_m]
    cases += [("termination", m, args.term_B, termination_batch(args.term_B, m, args.term_n, args.seed + 1000 + m))
              for m in args.term_m]
    rows = []
    for family, m, B, qp_cpu in cases:
        qp = to_device(qp_cpu, device)
        results: dict[str, tuple[torch.Tensor, float, int, str]] = {}
        for name in backends:
            if name == "enum" and (m > 3 or qp.eq_mask is not None):
                continue
            log(f"[{family} m={m} B={B}] {name} ...")
            try:
                if name in ("slsqp", "osqp"):
                    k = min(B, args.loop_max) if args.loop_max else B
                    w, secs = (slsqp_loop if name == "slsqp" else osqp_loop)(qp_cpu, k, args.loop_seconds)
                    k = w.shape[0]
                    results[name] = (w, secs * B / k, k, "-")
                else:
                    s = get_qp_solver(name)
                    s.solve(to_device(BoxQP(*[None if t is None else t[:2] for t in (qp.Q, qp.q, qp.lo, qp.hi, qp.eq_mask, qp.r)]), device),
                            tol=args.tol)  # warm-up
                    best = float("inf")
                    for _ in range(max(1, args.repeat)):
                        sync(device)
                        t0 = time.perf_counter()
                        res = s.solve(qp, tol=args.tol)
                        sync(device)
                        best = min(best, time.perf_counter() - t0)
                    st = res.status.cpu()
                    counts = f"{int((st == 0).sum())}/{int((st == 1).sum())}/{int((st == 2).sum())}"
                    results[name] = (res.w.cpu(), best, B, counts)
            except Exception as exc:  # a backend failing is a result, not a crash
                log(f"  failed: {type(exc).__name__}: {str(exc)[:160]}")
                rows.append([family, m, B, name, f"failed: {type(exc).__name__}: {str(exc)[:80]}"])
        if not results:
            continue
        objs = {}
        for name, (w, *_rest) in results.items():
            k = w.shape[0]
            sub = BoxQP(*[None if t is None else t[:k] for t in (qp_cpu.Q, qp_cpu.q, qp_cpu.lo, qp_cpu.hi, qp_cpu.eq_mask, qp_cpu.r)])
            wf = project_feasible(sub, w)  # the loops may return points off the set by round-off
            objs[name] = (qp_objective(sub, wf), kkt_residual(sub, w, scaled=True), sub)
        kmin = min(o[0].shape[0] for o in objs.values())
        best_obj = torch.stack([o[0][:kmin] for o in objs.values()]).amin(0)
        for name, (_w, secs, k, counts) in results.items():
            obj, kkt, _ = objs[name]
            gap = ((obj[:kmin] - best_obj) / best_obj.abs().clamp_min(1.0))
            loop = name in ("slsqp", "osqp")
            rows.append([family, m, B, name + (f" (loop over {k}, time x {B}/{k})" if loop and k < B else
                                               (" (loop)" if loop else "")),
                         secs * 1e3, secs / B * 1e6, float(kkt.max()), float(kkt.median()), float(gap.max()),
                         counts])
    hdr = ["family", "m", "B", "backend", "ms per batch", "us per problem", "max scaled KKT", "median scaled KKT",
           "max objective gap to best", "solved/inaccurate/failed"]
    rows = [r + [None] * (len(hdr) - len(r)) if len(r) < len(hdr) else r for r in rows]
    body = [f"Steering: n = {args.steer_n}, B = {args.steer_B}; termination: n = {args.term_n}, p = 1, l = m / 2, "
            f"B = {args.term_B}. Batched backends: best of {args.repeat} runs after a warm-up, tol = {args.tol}, on "
            f"`{device}`. Loops: scipy SLSQP (ftol 1e-14, maxiter 2000) and OSQP (eps_abs = eps_rel = 1e-10, polish) "
            "one problem per call on the CPU. KKT residuals are measured on the returned point (loops: as returned); "
            "objective gaps after projecting onto the feasible set. Status columns are the backends' own "
            "SOLVED/INACCURATE/FAILED counts.\n"]
    if notes:
        body.append("Backends not available here:\n\n" + "\n".join(notes) + "\n")
    body.append(md_table(hdr, rows))
    body.append(f"\nScript wall time: {time.perf_counter() - t_script:.0f} s.\n")
    write_results(out_path(args, "qp", device), "QP layer: batched backends vs per-problem CPU solvers", device, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
