"""PyGRANSO (one problem per call) against ncvx_core (one batched call, and a loop of
single-problem calls of our own solver), on the same problems with the same options.

Problems:
* digits MLP, max-loss l2 attack (paper Eq. 1) at ``--eps`` (default chosen to give a mixed
  success rate), B in ``--batches``;
* digits MLP, minimal-distortion problem (paper Eq. 4), same B;
* a CNN on 3 x 32 x 32 inputs (n = 3072), max-loss l2 attack at ``--cnn-eps`` with full-memory
  BFGS, ``--cnn-maxit`` iterations, B in ``--cnn-batches`` (PyGRANSO and the loop on the first
  ``--cnn-ref-max`` problems): the image-sized case, where the n x n work dominates;
* the conformance problems A1, B1, B3_d1, C1 of ``ncvx_core.testing.problems`` at ``--small-batch``
  with their own options.

Every returned point is re-checked independently: the problem is re-evaluated at it (f, constraint
violation) and, for the attacks, the model is re-run on ``clamp(x, 0, 1)`` (misclassified? radius
within ``eps * (1 + 1e-6)``?).

Run with the reference environment: ``.venv-ref/bin/python benchmarks/bench_reference.py``.
Without PyGRANSO the script says so and exits 0.
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
    MinDistortionProblem,
    RowView,
    add_common_args,
    cnn_inputs,
    correctly_classified,
    fmt,
    log,
    make_cnn,
    md_table,
    out_path,
    quiet_stdout,
    setup,
    status_counts,
    timed,
    train_digits_mlp,
    write_results,
)

from ncvx_core import SolverOptions, solve  # noqa: E402

TOL = 1e-6


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


# ----------------------------------------------------------------------------------------------
def check_points(P: Any, x: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """Independent verification of returned points ``x`` (rows of problem ``P``)."""
    x = x.to(P.x_clean)
    with torch.no_grad():
        f, ci, _ = P(x)
    c = P.check(x)
    viol = ci.clamp_min(0).amax(1)
    out = {"f": f, "viol": viol, "feasible": viol <= TOL, **c}
    if kind == "mindist":
        out["success"] = c["misclassified"]
    return out


def summarize(kind: str, chk: dict[str, torch.Tensor], status: torch.Tensor, iters: torch.Tensor,
              seconds: float, k: int) -> dict[str, Any]:
    r = {
        "k": k,
        "total_s": seconds,
        "per_problem_s": seconds / k,
        "success": float(chk["success"].double().mean()),
        "feasible": float(chk["feasible"].double().mean()),
        "mean_f": float(chk["f"].double().mean()),
        "iters": float(iters.double().mean()),
        "status": status_counts(status),
    }
    if kind == "mindist":
        feas = chk["feasible"]
        r["radius_feasible"] = float(chk["radius"][feas].double().mean()) if bool(feas.any()) else None
        s = chk["success"]
        r["radius_success"] = float(chk["radius"][s].double().mean()) if bool(s.any()) else None
    return r


def paired(kind: str, ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> str:
    """Quality of ours against the reference on the problems both solved."""
    k = min(ref["f"].shape[0], ours["f"].shape[0])
    o = {key: v[:k] for key, v in ours.items()}
    ref = {key: v[:k] for key, v in ref.items()}
    both = o["feasible"] & ref["feasible"]
    nb = int(both.sum())
    if kind == "attack":
        better = (o["f"] <= ref["f"] + 1e-6 * ref["f"].abs().clamp_min(1)) & both
        return (f"paired on the first {k} problems: successes ours {int(o['success'].sum())} / "
                f"PyGRANSO {int(ref['success'].sum())}; ours succeeded where PyGRANSO did in "
                f"{int((o['success'] & ref['success']).sum())} of {int(ref['success'].sum())}; both feasible {nb}, "
                f"ours f <= PyGRANSO f (+1e-6 rel) in {int(better.sum())} of {nb}")
    ratio = (o["radius"][both] / ref["radius"][both].clamp_min(1e-12)) if nb else torch.zeros(0)
    better = int((ratio <= 1 + 1e-3).sum()) if nb else 0
    med = float(ratio.median()) if nb else float("nan")
    return (f"paired on the first {k} problems: both feasible {nb}; ours radius <= PyGRANSO radius "
            f"(+0.1 %) in {better} of {nb}; median radius ratio ours/PyGRANSO {fmt(med)}; verified "
            f"misclassified ours {int(o['success'].sum())} / PyGRANSO {int(ref['success'].sum())}")


def run_ref(fn: Any, x0: torch.Tensor, opts: dict[str, Any], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    from ncvx_core.testing.reference import solve_reference

    t0 = time.perf_counter()
    with quiet_stdout():
        r = solve_reference(RowView(fn, list(range(k))), x0[:k].cpu().double(), opts)
    secs = time.perf_counter() - t0
    return r.best_x, r.status, r.iters, secs


def run_ours(fn: Any, x0: torch.Tensor, opts: SolverOptions, device: torch.device) -> tuple[Any, float]:
    res, secs = timed(lambda: solve(fn, x0, opts), device)
    return res, secs


def run_loop(fn: Any, x0: torch.Tensor, opts: SolverOptions, k: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    xs, st, it = [], [], []
    t_total = 0.0
    for b in range(k):
        res, secs = timed(lambda b=b: solve(RowView(fn, [b]), x0[b:b + 1], opts), device)
        t_total += secs
        xs.append(res.best.x)
        st.append(res.status)
        it.append(res.iters)
    return torch.cat(xs), torch.cat(st), torch.cat(it), t_total


# ----------------------------------------------------------------------------------------------
def bench_adversarial(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, have_ref: bool,
                      body: list[str]) -> None:
    cpu = torch.device("cpu")
    model, Xte, yte, info = train_digits_mlp(device, dtype, seed=args.seed)
    model_cpu, Xte_cpu, yte_cpu, _ = train_digits_mlp(cpu, torch.float64, seed=args.seed)
    body.append("## Digits MLP (n = 64)\n")
    body.append("Model: " + ", ".join(f"{k}: {v}" for k, v in info.items()) + ".\n")
    Bmax = max(args.batches)
    data = correctly_classified(model, Xte, yte, Bmax)
    data_cpu = correctly_classified(model_cpu, Xte_cpu, yte_cpu, Bmax)
    _compare(args, device, dtype, have_ref, body, model, model_cpu, data, data_cpu, eps=args.eps,
             batches=args.batches, kinds=("attack", "mindist"), maxit=args.maxit,
             limited_mem_size=args.limited_mem_size, ref_max=args.ref_max, loop_max=args.loop_max)


def bench_cnn(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, have_ref: bool,
              body: list[str]) -> None:
    """The max-loss attack at image size (n = 3072) with full-memory BFGS on both sides."""
    cpu = torch.device("cpu")
    model = make_cnn(device, dtype, seed=args.seed)
    model_cpu = make_cnn(cpu, torch.float64, seed=args.seed)
    body.append("## CNN on 3 x 32 x 32 inputs (n = 3072), full-memory BFGS\n")
    body.append("Model: conv3x3(16)-pool-conv3x3(32)-pool-linear(10), random weights, random inputs in [0, 1] "
                "labelled with the model's own prediction (`common.make_cnn`, `common.cnn_inputs`).\n")
    Bmax = max(args.cnn_batches)
    _compare(args, device, dtype, have_ref, body, model, model_cpu, cnn_inputs(model, Bmax, seed=args.seed),
             cnn_inputs(model_cpu, Bmax, seed=args.seed), eps=args.cnn_eps, batches=args.cnn_batches,
             kinds=("attack",), maxit=args.cnn_maxit, limited_mem_size=0, ref_max=args.cnn_ref_max,
             loop_max=args.cnn_ref_max)


def _compare(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, have_ref: bool, body: list[str],
             model: Any, model_cpu: Any, data: tuple[torch.Tensor, torch.Tensor],
             data_cpu: tuple[torch.Tensor, torch.Tensor], *, eps: float, batches: list[int], kinds: tuple[str, ...],
             maxit: int, limited_mem_size: int, ref_max: int, loop_max: int) -> None:
    """PyGRANSO (one call per problem, CPU float64) against ncvx_core batched at each B and a loop
    of its single-problem solves, for each problem kind; tables and paired quality lines."""
    x_all, y_all = data
    x_all_cpu, y_all_cpu = data_cpu
    Bmax = max(batches)
    our_opts = SolverOptions(maxit=maxit, opt_tol=args.opt_tol, viol_ineq_tol=TOL,
                             limited_mem_size=limited_mem_size, print_level=0)
    ref_opts = {"maxit": maxit, "opt_tol": args.opt_tol, "viol_ineq_tol": TOL,
                "limited_mem_size": limited_mem_size}
    body.append(f"Options (both solvers, GRANSO names): `{ref_opts}`; everything else at the defaults. "
                f"PyGRANSO runs on the CPU in float64 (one `pygranso()` call per problem, through "
                f"`ncvx_core.testing.reference.solve_reference`); ncvx_core on `{device}` in `{dtype}`. "
                f"Points checked: the `best` record of each solver (PyGRANSO: `soln.best`, else "
                f"`most_feasible`). Feasible: constraint violation recomputed at the point <= {TOL}.\n")
    for kind in kinds:
        if kind == "attack":
            title = (f"### Max-loss attack (Eq. 1), l2 eps = {eps}\n\nf = -min(margin, 0.01), ci = ||x - x0||_2 - eps; "
                     "success = misclassified after clamping to [0, 1] and radius <= eps (1 + 1e-6), re-checked with the model. "
                     "Start: x_clean + a random direction of length eps/2.\n")
        else:
            title = ("### Minimal distortion (Eq. 4)\n\nf = ||x - x0||_2, ci = z_y - max_{j!=y} z_j <= 0. Feasible = violation "
                     f"<= {TOL} (the solution lies on the decision boundary, so a feasible point may still be classified "
                     "correctly by a hair); 'success' = verified misclassified (argmax != y). Start: x_clean + N(0, 0.01^2).\n")
        body.append(title)

        def make(x: torch.Tensor, y: torch.Tensor, m: Any, kind: str = kind) -> Any:
            return AttackProblem(m, x, y, eps) if kind == "attack" else MinDistortionProblem(m, x, y)

        P_all = make(x_all, y_all, model)
        P_all_cpu = make(x_all_cpu, y_all_cpu, model_cpu)
        x0_all = P_all.x0(seed=args.seed)
        x0_all_cpu = P_all_cpu.x0(seed=args.seed)
        rows = []
        pairs: list[str] = []
        ref_chk = None
        k_ref = min(Bmax, ref_max) if ref_max else Bmax
        if have_ref:
            log(f"[{kind}] PyGRANSO on {k_ref} problems ...")
            bx, st, it, secs = run_ref(P_all_cpu, x0_all_cpu, ref_opts, k_ref)
            sub = make(x_all_cpu[:k_ref], y_all_cpu[:k_ref], model_cpu)
            ref_chk = check_points(sub, bx, kind)
            ref_sum = summarize(kind, ref_chk, st, it, secs, k_ref)
            log(f"  {secs:.1f} s, {ref_sum['per_problem_s']:.3f} s/problem, success {ref_sum['success']:.2f}")
        loop = None
        if not args.skip_loop:
            k_loop = min(Bmax, loop_max) if loop_max else Bmax
            log(f"[{kind}] ncvx_core loop of {k_loop} single-problem solves ...")
            P_loop = make(x_all[:k_loop], y_all[:k_loop], model)
            lx, lst, lit, lsecs = run_loop(P_loop, x0_all[:k_loop], our_opts, k_loop, device)
            loop = summarize(kind, check_points(P_loop, lx, kind), lst, lit, lsecs, k_loop)
            log(f"  {lsecs:.1f} s, {loop['per_problem_s']:.3f} s/problem")
        for B in batches:
            P = make(x_all[:B], y_all[:B], model)
            x0 = x0_all[:B]
            log(f"[{kind}] B = {B}: ncvx_core batched ...")
            res, secs = run_ours(P, x0, our_opts, device)
            chk = check_points(P, res.best.x, kind)
            ours = summarize(kind, chk, res.status, res.iters, secs, B)
            log(f"  {secs:.1f} s, {ours['per_problem_s']:.3f} s/problem, success {ours['success']:.2f}")
            ref_pp = ref_sum["per_problem_s"] if have_ref else None

            def row(name: str, r: dict[str, Any], B: Any = B, ref_pp: Any = ref_pp, ours: Any = ours,
                    kind: str = kind) -> list[Any]:
                vs_ref = (ref_pp / r["per_problem_s"]) if ref_pp else None
                vs_batched = r["per_problem_s"] / ours["per_problem_s"]
                extra = [r.get("radius_feasible"), r.get("radius_success")] if kind == "mindist" else []
                return [name, B, r["k"], r["total_s"], r["per_problem_s"], vs_ref, vs_batched, r["success"],
                        r["feasible"], r["mean_f"], *extra, r["iters"], r["status"]]

            if have_ref and B == batches[0]:
                rows.append(row("PyGRANSO, one call per problem", ref_sum, "-"))
            rows.append(row("ncvx_core, one batched call", ours))
            if loop:
                rows.append(row(f"ncvx_core, loop of single-problem calls (first {loop['k']} problems)", loop))
            hdr = ["solver", "B", "problems run", "total s", "s / problem", "PyGRANSO time / this (per problem)",
                   "this / ours batched (per problem)", "success", "feasible", "mean f"]
            if kind == "mindist":
                hdr += ["mean radius (feasible)", "mean radius (misclassified)"]
            hdr += ["mean iters", "status counts"]
            if have_ref and ref_chk is not None:
                pairs.append(f"- B = {B}: " + paired(kind, chk, ref_chk) + ".")
        body.append(md_table(hdr, rows))
        body.append("Rows that ran fewer problems than B cover the first k problems (the same start points); their "
                    "per-problem time stands for the whole batch. Success / feasible / mean f are over the problems each "
                    "row ran; the paired comparison below is the like-for-like one.\n")
        body.append("Quality, problem by problem:\n\n" + "\n".join(pairs) + "\n" if pairs else "")


# ----------------------------------------------------------------------------------------------
def bench_small(args: argparse.Namespace, device: torch.device, have_ref: bool, body: list[str]) -> None:
    from ncvx_core.testing.problems import PROBLEMS

    B = args.small_batch
    body.append(f"## Conformance problems at batch {B}\n")
    body.append("Each problem with its own options (`ConformanceProblem.options`, print_level 0); f* is the known "
                "optimum; gap = mean over feasible problems of (best f - f*) / max(1, |f*|); feasible = max(ci+, |ce|) "
                f"recomputed at the best point <= {TOL}. Ratios are per-problem times from this run.\n")
    rows = []
    for name in args.small:
        P = PROBLEMS[name](batch=B)
        opts = SolverOptions(print_level=0, **P.options)
        fstar = P.f_star
        fstar_t = (fstar if isinstance(fstar, torch.Tensor) else torch.full((B,), float(fstar if fstar is not None else float("nan")),
                   dtype=torch.float64))

        def quality(x: torch.Tensor, P: Any = P, fstar_t: torch.Tensor = fstar_t) -> tuple[float, float]:
            with torch.no_grad():
                f, ci, ce = P.fn(x.to(P.x0.dtype).reshape(-1, *P.shape).cpu(), idx=torch.arange(x.shape[0]))
            v = torch.zeros(x.shape[0], dtype=torch.float64)
            if ci is not None and ci.numel():
                v = torch.maximum(v, ci.clamp_min(0).amax(1).double())
            if ce is not None and ce.numel():
                v = torch.maximum(v, ce.abs().amax(1).double())
            feas = v <= TOL
            fs = fstar_t[: x.shape[0]]
            gap = ((f.double() - fs) / fs.abs().clamp_min(1.0))[feas]
            return float(feas.double().mean()), (float(gap.mean()) if gap.numel() else float("nan"))

        log(f"[{name}] B = {B}")
        ref_pp = None
        entries = []
        if have_ref:
            bx, st, it, secs = run_ref(P.fn, P.x0, P.options, B)
            feas, gap = quality(bx)
            ref_pp = secs / B
            entries.append(("PyGRANSO, one call per problem", secs, feas, gap, it, st))
            log(f"  PyGRANSO {secs:.2f} s")
        x0 = P.x0.to(device)
        res, secs = run_ours(P.fn, x0, opts, device)
        feas, gap = quality(res.best.x.cpu())
        ours_pp = secs / B
        entries.append(("ncvx_core, one batched call", secs, feas, gap, res.iters.cpu(), res.status.cpu()))
        log(f"  ours batched {secs:.2f} s")
        if not args.skip_loop:
            lx, lst, lit, lsecs = run_loop(P.fn, x0, opts, B, device)
            feas, gap = quality(lx.cpu())
            entries.append(("ncvx_core, loop of single-problem calls", lsecs, feas, gap, lit.cpu(), lst.cpu()))
            log(f"  ours loop {lsecs:.2f} s")
        for label, secs, feas, gap, it, st in entries:
            pp = secs / B
            rows.append([name, label, secs, pp, (ref_pp / pp) if ref_pp else None, pp / ours_pp, feas, gap,
                         float(it.double().mean()), status_counts(st)])
    body.append(md_table(["problem", "solver", "total s", "s / problem", "PyGRANSO time / this", "this / ours batched",
                          "feasible", "gap to f*", "mean iters", "status counts"], rows))


# ----------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="reference")
    ap.add_argument("--batches", type=_ints, default=[32], help="comma-separated B values (default 32)")
    ap.add_argument("--eps", type=float, default=0.75, help="l2 radius of the attack (default 0.75)")
    ap.add_argument("--maxit", type=int, default=100)
    ap.add_argument("--opt-tol", type=float, default=1e-6)
    ap.add_argument("--limited-mem-size", type=int, default=0, help="0 = full-memory BFGS (default)")
    ap.add_argument("--ref-max", type=int, default=0, help="run PyGRANSO on at most this many problems (0 = all)")
    ap.add_argument("--loop-max", type=int, default=0, help="loop our solver over at most this many problems (0 = all)")
    ap.add_argument("--small-batch", type=int, default=16)
    ap.add_argument("--small", type=lambda s: [v for v in s.split(",") if v], default=["A1", "B1", "B3_d1", "C1"],
                    help="conformance problems (comma-separated; empty string to skip)")
    ap.add_argument("--skip-adversarial", action="store_true")
    ap.add_argument("--cnn-batches", type=_ints, default=[4, 16],
                    help="B values of the CNN attack (n = 3072, full memory; empty to skip; default 4,16)")
    ap.add_argument("--cnn-eps", type=float, default=0.05, help="l2 radius of the CNN attack (default 0.05)")
    ap.add_argument("--cnn-maxit", type=int, default=20, help="maxit of the CNN attack (default 20)")
    ap.add_argument("--cnn-ref-max", type=int, default=4,
                    help="CNN problems run by PyGRANSO and by the loop of single solves (default 4)")
    ap.add_argument("--skip-loop", action="store_true", help="skip the loop of our own single-problem solves")
    args = ap.parse_args()
    device, dtype = setup(args)
    from ncvx_core.testing import reference

    have_ref = reference.available()
    if not have_ref:
        print("PyGRANSO is not installed in this environment (pip install pygranso 'numpy<2' osqp scipy); "
              "run this script with .venv-ref/bin/python. Nothing to compare: exiting.")
        return 0
    t0 = time.perf_counter()
    body: list[str] = []
    if not args.skip_adversarial:
        bench_adversarial(args, device, dtype, have_ref, body)
        if args.cnn_batches:
            bench_cnn(args, device, dtype, have_ref, body)
    if args.small:
        bench_small(args, device, have_ref, body)
    body.append(f"\nScript wall time: {time.perf_counter() - t0:.0f} s.\n")
    write_results(out_path(args, "reference", device), "ncvx_core vs PyGRANSO (one problem per call)", device, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
