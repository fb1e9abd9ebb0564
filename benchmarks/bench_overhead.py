"""Share of the solver's wall time spent outside the user function's forward and backward passes.

The problem function is wrapped: its forward call is timed directly, and its backward passes are
timed with two identity autograd nodes, one on the input ``x`` and one on each output. A backward
pass started by the solver (one per output column) reaches an output marker first (clock
start) and the input marker last (clock stop), so ``function time = forward + backward`` of the
user's computation and ``overhead = total - function time`` is everything the solver adds
(directions, QPs, line-search bookkeeping, BFGS updates, records, host syncs). CUDA is
synchronised at every clock read.

Problems: the max-loss l2 attack (paper Eq. 1) on the digits MLP (n = 64) and on a small CNN with
random weights on 3x32x32 inputs (n = 3072), for several B, with full-memory BFGS and with
L-BFGS (``--lbfgs`` pairs), at a fixed small ``--maxit``. ``--models cifar`` adds the same attack on
``common.CifarCNN`` (3x32x32, three convolutions of 32-128 channels and two linear layers, random
weights): the overhead share of one solver depends on what the model costs, and the small CNN's
forward and backward passes cost a fraction of a CIFAR model's.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    AttackProblem,
    add_common_args,
    available_memory,
    cnn_inputs,
    correctly_classified,
    log,
    make_cifar_cnn,
    make_cnn,
    md_table,
    out_path,
    setup,
    status_counts,
    sync,
    timed,
    train_digits_mlp,
    write_results,
)

from ncvx_core import SolverOptions, solve  # noqa: E402


class _Mark(torch.autograd.Function):
    """Identity whose backward calls ``rec(kind)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rec: Any, kind: str) -> torch.Tensor:  # type: ignore[override]
        ctx.rec, ctx.kind = rec, kind
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        ctx.rec(ctx.kind)
        return g, None, None


class TimedProblem:
    """Wraps a batched problem ``fn(x, idx=None)``; accumulates forward and backward seconds."""

    def __init__(self, fn: Any, device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.fwd = self.bwd = 0.0
        self.calls = self.rows = self.backwards = 0
        self._t: float | None = None

    def _rec(self, kind: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        if kind == "start":
            if self._t is None:
                self._t = now
        elif self._t is not None:
            self.bwd += now - self._t
            self.backwards += 1
            self._t = None

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> Any:
        sync(self.device)
        t0 = time.perf_counter()
        grad = torch.is_grad_enabled() and x.requires_grad
        xin = _Mark.apply(x, self._rec, "end") if grad else x
        f, ci, ce = self.fn(xin, idx=idx)
        if grad:
            f = _Mark.apply(f, self._rec, "start")
            ci = None if ci is None else _Mark.apply(ci, self._rec, "start")
            ce = None if ce is None else _Mark.apply(ce, self._rec, "start")
        sync(self.device)
        self.fwd += time.perf_counter() - t0
        self.calls += 1
        self.rows += x.shape[0]
        return f, ci, ce

    @property
    def total(self) -> float:
        return self.fwd + self.bwd


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="overhead")
    ap.add_argument("--models", default="mlp,cnn",
                    help="comma-separated: mlp (n = 64), cnn (n = 3072, two small conv layers), cifar (n = 3072, "
                         "common.CifarCNN: three conv layers of 32-128 channels and two linear layers)")
    ap.add_argument("--batches", type=_ints, default=[1, 8, 64, 256, 512], help="B values of the MLP (default 1,8,64,256,512)")
    ap.add_argument("--cnn-batches", type=_ints, default=[1, 8, 64, 128, 256],
                    help="B values of the CNN (default 1,8,64,128,256)")
    ap.add_argument("--cnn-full-batches", type=_ints, default=[1, 8],
                    help="B values of the CNN with full-memory BFGS (default 1,8; a (B, 3072, 3072) matrix is "
                         "75 MB per problem in float64)")
    ap.add_argument("--memory", default="full,lbfgs", help="comma-separated: full, lbfgs")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="stop starting new configurations after this many seconds (0 = no limit)")
    ap.add_argument("--lbfgs", type=int, default=10, help="L-BFGS pairs for the 'lbfgs' runs (default 10)")
    ap.add_argument("--full-mem-fraction", type=float, default=0.125,
                    help="skip full-memory runs whose (B, n, n) inverse Hessian alone exceeds this fraction of the "
                         "free memory (default 1/8: the solver holds several copies of it at once)")
    ap.add_argument("--maxit", type=int, default=20)
    ap.add_argument("--eps-mlp", type=float, default=0.5)
    ap.add_argument("--eps-cnn", type=float, default=0.05)
    ap.add_argument("--ngrad", type=int, default=0, help="cache size (0 = the solver's default)")
    args = ap.parse_args()
    device, dtype = setup(args)
    t_script = time.perf_counter()

    models = [m for m in args.models.split(",") if m]
    mems = [m for m in args.memory.split(",") if m]
    notes: list[str] = []
    rows = []
    mlp = None
    if "mlp" in models:
        model, Xte, yte, info = train_digits_mlp(device, dtype, seed=args.seed)
        mlp = (model, Xte, yte)
        notes.append("digits MLP: " + ", ".join(f"{k}: {v}" for k, v in info.items()))
    convs = {}
    if "cnn" in models:
        convs["cnn"] = make_cnn(device, dtype, seed=args.seed)
        notes.append("CNN: conv3x3(16)-pool-conv3x3(32)-pool-linear(10), random weights, random inputs in [0, 1] "
                     "labelled with the model's own prediction")
    if "cifar" in models:
        convs["cifar"] = make_cifar_cnn(device, dtype, seed=args.seed)
        notes.append("cifar: common.CifarCNN, conv3x3(32)-conv3x3(64)-pool-conv3x3(128)-pool-linear(256)-linear(10) "
                     "(the architecture of bench_adv_cost.py), random weights with the last layer x20, random inputs "
                     "in [0, 1] labelled with the model's own prediction")
    unknown = set(models) - {"mlp", "cnn", "cifar"}
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from mlp, cnn, cifar")

    hdr = ["model", "n", "memory asked", "B", "memory used (plan)", "ngrad", "total s", "function s", "forward s",
           "backward s", "overhead share", "ms per problem-iteration", "s per problem", "status; mean iters"]
    if device.type == "cuda":
        hdr.append("peak MiB")

    def emit(final: bool) -> None:
        """(Re)write the results file; called after every configuration so a killed run keeps its rows."""
        padded = [r + [None] * (len(hdr) - len(r)) if len(r) < len(hdr) else r for r in rows]
        body = [f"maxit = {args.maxit}, opt_tol = 1e-6, viol_ineq_tol = 1e-6; full = `limited_mem_size=0` (the solver's "
                f"memory planner may still switch to L-BFGS: see 'memory used'), lbfgs = `limited_mem_size={args.lbfgs}`. "
                f"Attack radius: MLP eps = {args.eps_mlp}, CNN eps = {args.eps_cnn}; start x_clean + eps/2 random direction.\n",
                "overhead share = (total - function) / total, where function = forward + backward of the user's model "
                "and loss as seen through the wrapper. ms per problem-iteration = total / sum of accepted iterations.\n"]
        body += ["- " + n for n in notes] + [""]
        body.append(md_table(hdr, padded))
        body.append(f"\nScript wall time: {time.perf_counter() - t_script:.0f} s"
                    + (".\n" if final else " so far (PARTIAL: the run was still going when this was written).\n"))
        write_results(out_path(args, "overhead", device), "Solver overhead outside the user function", device, body,
                      quiet=not final)

    # warm-up (first-call costs of kernels and allocators are not part of any row)
    if mlp is not None:
        xw, yw = correctly_classified(mlp[0], mlp[1], mlp[2], 2)
        P = AttackProblem(mlp[0], xw, yw, args.eps_mlp)
        solve(P, P.x0(), SolverOptions(maxit=3, print_level=0))

    for mname in models:
        n = 64 if mname == "mlp" else 3072
        for mem in mems:
            batches = args.batches if mname == "mlp" else (args.cnn_full_batches if mem == "full" else args.cnn_batches)
            for B in batches:
                if args.budget and time.perf_counter() - t_script > args.budget:
                    rows.append([mname, n, mem, B, f"not run: --budget {args.budget:.0f} s used up"])
                    emit(final=False)
                    continue
                h_bytes = B * n * n * torch.finfo(dtype).bits // 8
                if mem == "full" and h_bytes > args.full_mem_fraction * available_memory(device):
                    log(f"[{mname} {mem} B={B}] skipped: one (B, n, n) matrix is {h_bytes / 2**30:.1f} GiB")
                    rows.append([mname, n, mem, B, f"skipped: (B, n, n) = {h_bytes / 2**30:.1f} GiB > "
                                 f"{args.full_mem_fraction} x free memory"])
                    emit(final=False)
                    continue
                if mname == "mlp":
                    x, y = correctly_classified(mlp[0], mlp[1], mlp[2], B)
                    P = AttackProblem(mlp[0], x, y, args.eps_mlp)
                else:
                    x, y = cnn_inputs(convs[mname], B, seed=args.seed)
                    P = AttackProblem(convs[mname], x, y, args.eps_cnn)
                x0 = P.x0(seed=args.seed)
                opts = dict(maxit=args.maxit, opt_tol=1e-6, viol_ineq_tol=1e-6, print_level=0,
                            limited_mem_size=(args.lbfgs if mem == "lbfgs" else 0))
                if args.ngrad:
                    opts["ngrad"] = args.ngrad
                T = TimedProblem(P, device)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    res, total = timed(lambda T=T, x0=x0, opts=opts: solve(T, x0, SolverOptions(**opts)), device)
                except (RuntimeError, MemoryError) as exc:  # out of memory and the like: record, go on
                    log(f"[{mname} {mem} B={B}] failed: {type(exc).__name__}: {str(exc)[:200]}")
                    rows.append([mname, n, mem, B, f"failed: {type(exc).__name__}"])
                    emit(final=False)
                    continue
                fn = T.total
                iters = int(res.iters.sum())
                plan = res.memory_plan
                used = (f"L-BFGS {plan.limited_mem_size}" if plan is not None and plan.limited_mem_size > 0
                        else "full") if plan is not None else "?"
                ngrad = plan.ngrad if plan is not None else None
                peak = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None
                row = [mname, n, mem, B, used, ngrad, total, fn, T.fwd, T.bwd, (total - fn) / total,
                       total / max(iters, 1) * 1e3, total / B, status_counts(res.status) + f"; iters {res.iters.double().mean():.1f}"]
                if device.type == "cuda":
                    row.append(peak)
                rows.append(row)
                emit(final=False)
                log(f"[{mname} {mem} B={B}] total {total:.2f} s, function {fn:.2f} s ({T.fwd:.2f} fwd + {T.bwd:.2f} bwd, "
                    f"{T.calls} calls, {T.rows} rows), overhead {(total - fn) / total:.1%}, "
                    f"{total / max(iters, 1) * 1e3:.2f} ms per problem-iteration")
                del res, P

    emit(final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
