"""Solver output: batched records of the final, best and most-feasible iterates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .status import Status, status_message

__all__ = ["Iterate", "SolveResult", "SolverFailedError"]


class Iterate(NamedTuple):
    """One record per problem.

    Shapes: ``x (B, *shape)``; ``f, tvi, tve, violation, mu (B,)``; ``ci (B, p)``; ``ce (B, q)``;
    ``feasible, found (B,)`` bool. ``violation = max(tvi, tve)`` (l-infinity). ``found`` is false
    where the record does not exist (``best`` for a problem that never met the tolerances; its
    fields then hold the most feasible point so that ``x`` is always usable).
    """

    x: Tensor
    f: Tensor
    ci: Tensor
    ce: Tensor
    tvi: Tensor
    tve: Tensor
    violation: Tensor
    feasible: Tensor
    mu: Tensor
    found: Tensor

    def to(self, device: Any) -> Iterate:
        return Iterate(*(t.to(device) for t in self))

    def __getitem__(self, i: Any) -> Any:  # type: ignore[override]
        if isinstance(i, int) and not isinstance(i, bool):
            return tuple.__getitem__(self, i)
        return Iterate(*(t[i] for t in self))


class SolverFailedError(RuntimeError):
    """Raised by :meth:`SolveResult.raise_for_status` for problems that did not succeed."""


@dataclass(frozen=True)
class SolveResult:
    """Result of :func:`ncvx_core.solve` for B problems.

    Attributes (all batched, first dimension B):
        final, best, most_feasible: :class:`Iterate` records. ``best`` is the best point that met
            the feasibility tolerances (the best objective for unconstrained problems); where no
            such point was found its fields hold the most feasible point and ``best.found`` is
            false.
        status: ``(B,)`` termination codes (see :class:`~ncvx_core.status.Status`).
        iters: ``(B,)`` accepted iterations; fn_evals: ``(B,)`` function evaluations (x0 included).
        stationarity: ``(B,)`` last stationarity measure; mu: ``(B,)`` final penalty parameter;
        violation: ``(B,)`` final l-infinity violation.
        mu_lowest: ``(B,)`` smallest penalty tried by the line-search reattempts (code 8).
        bfgs: dict of ``(B,)`` counters (requests, updates, damped, sty_fails, infnan_fails,
            scaling_skips).
        H_final: the inverse-Hessian state (``BFGSState`` or ``LBFGSState``) for warm starts.
        elapsed: wall time in seconds.

    Every tensor is a normal tensor (not an inference tensor), even though the solver computes in
    inference mode (docs/batching.md, "Inference mode"), unless the solve was started inside the
    caller's own ``torch.inference_mode()``.
    """

    final: Iterate
    best: Iterate
    most_feasible: Iterate
    status: Tensor
    iters: Tensor
    fn_evals: Tensor
    stationarity: Tensor
    mu: Tensor
    violation: Tensor
    mu_lowest: Tensor
    bfgs: dict
    H_final: Any
    elapsed: float = 0.0
    options: Any = None
    memory_plan: Any = None

    # ------------------------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        """``final.x``."""
        return self.final.x

    @property
    def f(self) -> Tensor:
        """``final.f``."""
        return self.final.f

    @property
    def batch_size(self) -> int:
        return int(self.status.shape[0])

    @property
    def success(self) -> Tensor:
        """``(B,)`` bool: status 0, 1 or 2."""
        return (self.status >= 0) & (self.status <= 2)

    @property
    def messages(self) -> list[str]:
        """Human-readable termination reason per problem."""
        return [status_message(c) for c in self.status.tolist()]

    def summary(self) -> str:
        """Counts per status code, one line each."""
        counts = Counter(self.status.tolist())
        lines = [f"{self.batch_size} problems, {int(self.success.sum())} successful, {self.elapsed:.3g} s"]
        for code in sorted(counts):
            lines.append(f"  status {code:>2} ({Status(code).name}): {counts[code]}  - {status_message(code)}")
        return "\n".join(lines)

    def raise_for_status(self) -> None:
        """Raise :class:`SolverFailedError` if any problem did not succeed."""
        bad = torch.nonzero(~self.success).flatten().tolist()
        if bad:
            codes = self.status[bad].tolist()
            raise SolverFailedError(
                f"{len(bad)} of {self.batch_size} problems did not succeed: "
                + ", ".join(f"#{i}: {status_message(c)}" for i, c in list(zip(bad, codes))[:5])
            )

    def __getitem__(self, i: Any) -> SolveResult:
        """The result restricted to problems ``i`` (an index, slice, mask or index tensor)."""
        if isinstance(i, int):
            i = slice(i, i + 1) if i != -1 else slice(-1, None)

        def take(v: Any) -> Any:
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.batch_size:
                return v[i]
            if isinstance(v, tuple) and hasattr(v, "_fields"):
                return type(v)(*(take(t) for t in v))
            if isinstance(v, dict):
                return {kk: take(vv) for kk, vv in v.items()}
            return v

        return SolveResult(**{f.name: take(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: Any) -> SolveResult:
        def mv(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, tuple) and hasattr(v, "_fields"):
                return type(v)(*(mv(t) for t in v))
            if isinstance(v, dict):
                return {kk: mv(vv) for kk, vv in v.items()}
            return v

        return SolveResult(**{f.name: mv(getattr(self, f.name)) for f in fields(self)})

    # ------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Save to a file readable by :meth:`load` (``torch.save`` of plain tensors and dicts)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("options", "memory_plan"):
                continue
            if isinstance(v, tuple) and hasattr(v, "_fields"):
                data[f.name] = {"__type__": type(v).__name__, **v._asdict()}
            else:
                data[f.name] = v
        torch.save(data, path)

    @classmethod
    def load(cls, path: str, map_location: Any = None) -> SolveResult:
        """Load a result written by :meth:`save`."""
        from . import hessian

        data = torch.load(path, map_location=map_location, weights_only=False)
        kinds = {"Iterate": Iterate, "BFGSState": hessian.BFGSState, "LBFGSState": hessian.LBFGSState}
        out = {}
        for k, v in data.items():
            if isinstance(v, dict) and "__type__" in v:
                typ = kinds[v.pop("__type__")]
                v = typ(**v)
            out[k] = v
        return cls(**out)

    def with_options(self, options: Any) -> SolveResult:
        return replace(self, options=options)
