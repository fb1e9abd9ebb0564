"""GRANSO-style iteration table for a batch of problems.

Rows go to ``options.print_sink`` (a callable taking one line) or, by default, to standard output.
With B <= 8 there is one row per problem that took a step; otherwise one row of batch aggregates
(active problems, medians and maxima) per printed pass.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import torch

from .status import Status, status_message

__all__ = ["IterationPrinter"]

_LEVELS = {-1: "-", 0: "S", 1: "SI", 2: "QN", 3: "GD", 4: "R"}


def _fmt(v: float, w: int) -> str:
    if v != v:
        return "nan".rjust(w)
    if v in (float("inf"), float("-inf")):
        return ("inf" if v > 0 else "-inf").rjust(w)
    return f"{v:{w}.{max(w - 8, 3)}g}"


class IterationPrinter:
    """Prints the iteration table of :func:`ncvx_core.solve` (``print_level >= 1``)."""

    def __init__(self, options: Any, batch: int) -> None:
        self.o = options
        self.B = batch
        self.per_problem = batch <= 8
        self.sink = options.print_sink or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        self.passes = 0
        self.rows = 0
        self.w = options.print_width

    def _emit(self, line: str) -> None:
        self.sink(line)

    def header(self, constrained: bool, p: int, q: int) -> None:
        self.constrained = constrained
        w = self.w
        self._emit(f"ncvx_core BFGS-SQP: {self.B} problem(s), {p} inequality and {q} equality constraint(s) each")
        if self.per_problem:
            cols = ["prob", "iter".rjust(5), "mu".rjust(w), "penalty".rjust(w), "objective".rjust(w),
                    "ineq".rjust(9), "eq".rjust(9), "SD".rjust(3), "evals".rjust(5), "t".rjust(9),
                    "grads".rjust(5), "stationarity".rjust(w)]
        else:
            cols = ["pass".rjust(5), "active".rjust(7), "iter med".rjust(8), "mu med".rjust(w), "mu max".rjust(w),
                    "phi med".rjust(w), "f med".rjust(w), "f max".rjust(w), "viol max".rjust(9),
                    "evals med".rjust(9), "t med".rjust(9), "stat med".rjust(w), "stat max".rjust(w)]
        self.head = " | ".join(cols)
        self._emit(self.head)
        self._emit("-" * len(self.head))

    def row(self, st: Any, updated: torch.Tensor, first: bool = False) -> None:
        if not first:
            self.passes += 1
            if self.passes % self.o.print_frequency:
                return
        w = self.w
        if self.rows and self.rows % 20 == 0:
            self._emit(self.head)
        if self.per_problem:
            upd = updated.tolist()
            mu, f, tvi, tve, stat = (t.tolist() for t in (st.mu, st.ev.f, st.viol.tvi, st.viol.tve, st.stat))
            phi = (st.mu * st.ev.f + st.viol.v1).tolist()
            iters, lvl, ev, al, ng, fb = (t.tolist() for t in (st.iters, st.sd_level, st.last_ls_evals, st.alpha,
                                                               st.n_grads, st.stat_fallback))
            for b in range(self.B):
                if not upd[b]:
                    continue
                c = self.constrained
                sval = _fmt(stat[b], w) if fb[b] <= 0 else _fmt(stat[b], w - 2) + f":{fb[b]}"
                cols = [f"{b:>4}", f"{iters[b]:>5}", _fmt(mu[b], w) if c else "-".rjust(w),
                        _fmt(phi[b], w) if c else "-".rjust(w), _fmt(f[b], w),
                        _fmt(tvi[b], 9) if c else "-".rjust(9), _fmt(tve[b], 9) if c else "-".rjust(9),
                        _LEVELS.get(lvl[b], "?").rjust(3), f"{ev[b]:>5}", _fmt(al[b], 9), f"{ng[b]:>5}", sval]
                self._emit(" | ".join(cols))
                self.rows += 1
            return
        active = st.status == Status.RUNNING
        sel = active | updated
        if not bool(sel.any()):
            return
        med = lambda t: float(t[sel].double().median()) if t.dtype.is_floating_point else float(t[sel].double().median())  # noqa: E731
        mx = lambda t: float(t[sel].double().max())  # noqa: E731
        phi = st.mu * st.ev.f + st.viol.v1
        cols = [f"{self.passes:>5}", f"{int(active.sum()):>7}", f"{med(st.iters):>8.0f}", _fmt(med(st.mu), w),
                _fmt(mx(st.mu), w), _fmt(med(phi), w), _fmt(med(st.ev.f), w), _fmt(mx(st.ev.f), w),
                _fmt(mx(st.viol.tv), 9), f"{med(st.last_ls_evals):>9.0f}", _fmt(med(st.alpha), 9),
                _fmt(med(st.stat), w), _fmt(mx(st.stat), w)]
        self._emit(" | ".join(cols))
        self.rows += 1

    def footer(self, res: Any) -> None:
        w = self.w
        self._emit("-" * len(self.head))
        if self.per_problem:
            for b in range(self.B):
                for tag, rec in (("F", res.final), ("B", res.best), ("MF", res.most_feasible)):
                    if tag == "B" and not bool(rec.found[b]):
                        self._emit(f"{b:>4} {tag:>2}: no point met the feasibility tolerances")
                        continue
                    self._emit(f"{b:>4} {tag:>2}: objective {_fmt(float(rec.f[b]), w)}  ineq {_fmt(float(rec.tvi[b]), 9)}"
                               f"  eq {_fmt(float(rec.tve[b]), 9)}")
                self._emit(f"{b:>4}     iterations {int(res.iters[b])}, function evaluations {int(res.fn_evals[b])}, "
                           f"status {int(res.status[b])}: {status_message(int(res.status[b]))}")
        else:
            counts = Counter(res.status.tolist())
            for code in sorted(counts):
                self._emit(f"status {code:>2}: {counts[code]:>6} problem(s)  {status_message(code)}")
            self._emit(f"iterations median {float(res.iters.double().median()):.0f} max {int(res.iters.max())}; "
                       f"function evaluations median {float(res.fn_evals.double().median()):.0f}")
        self._emit(f"elapsed {res.elapsed:.3f} s")
