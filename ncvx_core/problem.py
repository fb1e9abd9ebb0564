"""Calling the user's batched problem function: values, gradients, validation.

The user writes ``problem(x) -> (f, ci, ce)`` with ``x`` of shape ``(B, *shape)``, ``f`` of shape
``(B,)``, ``ci`` of shape ``(B, p)`` or ``None`` (``ci <= 0``) and ``ce`` of shape ``(B, q)`` or
``None`` (``ce == 0``). Row ``b`` of every output must depend on row ``b`` of ``x`` only (the B
problems are independent); gradients are then obtained for the whole batch with one backward pass
per output column.

A function may also take a keyword argument ``idx``: it is then called on a subset of the rows,
``problem(x_rows, idx=rows)``, with ``rows`` the ``(k,)`` long tensor of the problems' positions in
the original batch; a position may repeat (several line-search trial points of one problem in one
call, ``SolverOptions.linesearch_speculation``). Without ``idx`` the function is always called on
the full batch (rows that are not needed are filled with their last point), which is correct for
functions holding per-problem data but spends evaluations on finished problems.

With ``SolverOptions(globalAD=False)`` the function returns its own gradients:
``(f, f_grad, ci, ci_grad, ce, ce_grad)`` with ``f_grad`` of shape ``(B, *shape)`` and
``ci_grad``/``ce_grad`` of shape ``(B, p, *shape)``/``(B, q, *shape)`` (or ``None``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .errors import NonFiniteStartError, ProblemDefinitionError

__all__ = ["Evaluation", "Evaluator"]


class Evaluation(NamedTuple):
    """Values (and optionally gradients) of k problems at k points.

    Shapes: ``f (k,)``, ``ci (k, p)``, ``ce (k, q)``, ``g (k, n)``, ``Ji (k, p, n)``,
    ``Je (k, q, n)``; the gradient fields are ``None`` for value-only evaluations.
    """

    f: Tensor
    ci: Tensor
    ce: Tensor
    g: Tensor | None = None
    Ji: Tensor | None = None
    Je: Tensor | None = None

    def rows(self, idx: Tensor) -> Evaluation:
        """The evaluation restricted to rows ``idx``."""
        return Evaluation(*(None if t is None else t[idx] for t in self))

    def where(self, mask: Tensor, other: Evaluation) -> Evaluation:
        """Row-wise ``mask ? self : other`` (both must carry the same fields)."""
        out = []
        for a, b in zip(self, other):
            if a is None or b is None:
                out.append(None)
            else:
                m = mask.view(-1, *([1] * (a.dim() - 1)))
                out.append(torch.where(m, a, b))
        return Evaluation(*out)


def _accepts_idx(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return "idx" in sig.parameters


def _shape_str(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


class Evaluator:
    """Evaluates a batched problem function on rows of the batch.

    Args:
        fn: the user's problem function (see the module docstring).
        shape: shape of one problem's variable (``x0.shape[1:]``).
        batch: B, the number of problems.
        dtype, device: those of the solver state.
        user_gradients: ``True`` when ``fn`` returns its own gradients (``globalAD=False``).
        jacobian: ``"loop"`` (one backward pass per output column) or ``"vmap"`` (one batched
            backward through ``is_grads_batched``).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        shape: Sequence[int],
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        user_gradients: bool = False,
        jacobian: str = "loop",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"problem must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.shape = tuple(shape)
        self.n = int(torch.Size(self.shape).numel())
        self.B = batch
        self.dtype = dtype
        self.device = device
        self.user_gradients = user_gradients
        self.jacobian = jacobian
        self.accepts_idx = _accepts_idx(fn)
        self.p: int | None = None
        self.q: int | None = None
        self.calls = 0
        self.scales: tuple[Tensor, Tensor, Tensor] | None = None  # prescaling of f, ci, ce: (B,), (B, p), (B, q)

    def set_prescaling(self, ev0: Evaluation, threshold: float) -> Evaluation:
        """Scale every function whose gradient norm at x0 exceeds ``threshold`` by
        ``threshold / ||grad||`` for the rest of the run (spec section 1); returns ``ev0`` scaled."""

        def factor(gn: Tensor) -> Tensor:
            return torch.where(gn > threshold, threshold / gn, torch.ones_like(gn))

        sf = factor(ev0.g.norm(dim=1))
        si = factor(ev0.Ji.norm(dim=2))
        se = factor(ev0.Je.norm(dim=2))
        self.scales = (sf, si, se)
        return self._scale(ev0, None)

    def _scale(self, ev: Evaluation, idx: Tensor | None) -> Evaluation:
        if self.scales is None:
            return ev
        sf, si, se = (s if idx is None else s[idx] for s in self.scales)
        return Evaluation(
            ev.f * sf, ev.ci * si, ev.ce * se,
            None if ev.g is None else ev.g * sf.unsqueeze(1),
            None if ev.Ji is None else ev.Ji * si.unsqueeze(2),
            None if ev.Je is None else ev.Je * se.unsqueeze(2),
        )

    # ------------------------------------------------------------------------------------------
    def _call(self, x: Tensor, idx: Tensor | None) -> Any:
        self.calls += 1
        xs = x.reshape(x.shape[0], *self.shape)
        if self.accepts_idx:
            return self.fn(xs, idx=idx)
        return self.fn(xs)

    def _check(self, name: str, t: Any, k: int, ncols: int | None, extra: tuple[int, ...] = ()) -> Tensor | None:
        """Validate one output; returns it cast to the solver dtype (or None)."""
        if t is None:
            return None
        if not isinstance(t, Tensor):
            raise ProblemDefinitionError(
                f"problem output {name!r} must be a torch.Tensor or None, got {type(t).__name__}"
            )
        if t.is_complex():
            raise ProblemDefinitionError(f"problem output {name!r} must be real, got dtype {t.dtype}")
        if t.device != self.device:
            raise ProblemDefinitionError(
                f"problem output {name!r} is on device {t.device}, but x0 is on {self.device}"
            )
        if name == "f":
            expected: tuple[Any, ...] = (k,)
            ok = t.dim() == 1 and t.shape[0] == k
        else:
            base = 2 if not extra else 2 + len(extra)
            ok = t.dim() == base and t.shape[0] == k and t.shape[2:] == extra
            if ncols is not None:
                ok = ok and t.shape[1] == ncols
            expected = (k, "p" if ncols is None else ncols, *extra)
        if not ok:
            hint = ""
            if name in ("ci", "ce") and t.dim() == 1 and t.shape[0] == k:
                hint = f" (for a single constraint return {name}.unsqueeze(1))"
            if name == "f" and t.dim() == 2 and t.shape == (k, 1):
                hint = " (return f.squeeze(1))"
            if name == "f" and t.dim() == 0:
                hint = " (the objective must keep one value per problem: do not sum over the batch)"
            raise ProblemDefinitionError(
                f"problem output {name!r} must have shape {expected}, got {_shape_str(t)}{hint}"
            )
        return t.to(self.dtype)

    def _unpack(self, out: Any, k: int) -> tuple[Tensor, ...]:
        want = 6 if self.user_gradients else 3
        if not isinstance(out, (tuple, list)) or len(out) != want:
            what = "(f, f_grad, ci, ci_grad, ce, ce_grad)" if self.user_gradients else "(f, ci, ce)"
            got = f"a {len(out)}-tuple" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ProblemDefinitionError(f"problem must return {what}, got {got}")
        if self.user_gradients:
            f, gf, ci, gci, ce, gce = out
        else:
            f, ci, ce = out
            gf = gci = gce = None
        f = self._check("f", f, k, None)
        ci = self._check("ci", ci, k, self.p)
        ce = self._check("ce", ce, k, self.q)
        if ci is None:
            ci = torch.zeros(k, 0 if self.p is None else self.p, dtype=self.dtype, device=self.device)
        if ce is None:
            ce = torch.zeros(k, 0 if self.q is None else self.q, dtype=self.dtype, device=self.device)
        if self.p is None:
            self.p, self.q = ci.shape[1], ce.shape[1]
        elif ci.shape[1] != self.p or ce.shape[1] != self.q:
            raise ProblemDefinitionError(
                f"the number of constraints changed between calls: expected ci (k, {self.p}) and "
                f"ce (k, {self.q}), got {tuple(ci.shape)} and {tuple(ce.shape)}"
            )
        return f, ci, ce, gf, gci, gce  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------
    def evaluate(
        self, x: Tensor, idx: Tensor | None = None, x_full: Tensor | None = None, *, grad: bool = True
    ) -> Evaluation:
        """Evaluate the problems ``idx`` at the points ``x``.

        Args:
            x: ``(k, n)`` points, row j for problem ``idx[j]``.
            idx: ``(k,)`` long tensor of batch positions; ``None`` means all ``B`` rows in order.
            x_full: ``(B, n)`` current points of all problems, used to fill the rows that are not
                evaluated when the function cannot be called on a subset.
            grad: compute gradients too.
        """
        with torch.inference_mode(False):  # the user's code runs outside the solver's inference mode
            return self._evaluate(x, idx, x_full, grad)

    def _evaluate(self, x: Tensor, idx: Tensor | None, x_full: Tensor | None, grad: bool) -> Evaluation:
        k = x.shape[0]
        if idx is not None and idx.is_inference():
            idx = idx.clone()
        if idx is not None and k != self.B and not self.accepts_idx:
            if x_full is None:
                raise RuntimeError("internal: x_full is needed to evaluate a subset")
            full = x_full.detach().clone()
            full[idx] = x
            ev = self._evaluate_rows(full, None, grad, copy=False)
            return self._scale(ev.rows(idx), idx)
        if idx is None and self.accepts_idx:
            idx = torch.arange(k, device=self.device)
        return self._scale(self._evaluate_rows(x, idx, grad), idx)

    def _evaluate_rows(self, x: Tensor, idx: Tensor | None, grad: bool, copy: bool = True) -> Evaluation:
        k = x.shape[0]
        # the user gets a normal tensor of its own: the solver's points are inference tensors, and
        # a write to it must not reach them (copy=False: x is such a copy already)
        if copy:
            x = x.detach().clone()
        if self.user_gradients:
            with torch.no_grad():
                f, ci, ce, gf, gci, gce = self._unpack(self._call(x, idx), k)
            if not grad:
                return Evaluation(f, ci, ce)
            g = self._grad_user("f_grad", gf, k, None)
            Ji = self._grad_user("ci_grad", gci, k, ci.shape[1])
            Je = self._grad_user("ce_grad", gce, k, ce.shape[1])
            return Evaluation(f, ci, ce, g, Ji, Je)
        if not grad:
            with torch.no_grad():
                f, ci, ce, *_ = self._unpack(self._call(x, idx), k)
            return Evaluation(f, ci, ce)
        with torch.enable_grad():
            xv = x.requires_grad_(True)
            f, ci, ce, *_ = self._unpack(self._call(xv, idx), k)
            cols = [f] + [ci[:, j] for j in range(ci.shape[1])] + [ce[:, j] for j in range(ce.shape[1])]
            grads = self._jacobian(cols, xv)
        n = x.shape[1]
        p, q = ci.shape[1], ce.shape[1]
        g = grads[:, 0]
        Ji = grads[:, 1 : 1 + p]
        Je = grads[:, 1 + p : 1 + p + q]
        return Evaluation(f.detach(), ci.detach(), ce.detach(), g.reshape(k, n), Ji, Je)

    def _grad_user(self, name: str, t: Any, k: int, ncols: int | None) -> Tensor:
        if ncols is None:  # objective gradient, (k, *shape)
            if not isinstance(t, Tensor) or tuple(t.shape) != (k, *self.shape):
                raise ProblemDefinitionError(
                    f"problem output {name!r} must have shape {(k, *self.shape)}, got {_shape_str(t)}"
                )
            return t.detach().to(self.dtype).reshape(k, self.n)
        if t is None:
            if ncols == 0:
                return torch.zeros(k, 0, self.n, dtype=self.dtype, device=self.device)
            raise ProblemDefinitionError(f"problem output {name!r} is None but there are {ncols} constraints")
        if not isinstance(t, Tensor) or tuple(t.shape) != (k, ncols, *self.shape):
            raise ProblemDefinitionError(
                f"problem output {name!r} must have shape {(k, ncols, *self.shape)}, got {_shape_str(t)}"
            )
        return t.detach().to(self.dtype).reshape(k, ncols, self.n)

    def _jacobian(self, cols: list[Tensor], xv: Tensor) -> Tensor:
        """Gradients of each column (summed over the batch) w.r.t. xv: ``(k, len(cols), n)``."""
        k, n = xv.shape
        out = torch.zeros(k, len(cols), n, dtype=self.dtype, device=self.device)
        live = [j for j, c in enumerate(cols) if c.requires_grad]
        if not live:
            return out
        if self.jacobian == "vmap" and len(live) > 1:
            stacked = torch.stack([cols[j] for j in live], dim=1)  # (k, c)
            eye = torch.eye(len(live), dtype=stacked.dtype, device=self.device)
            go = eye.unsqueeze(1).expand(len(live), k, len(live))
            (gr,) = torch.autograd.grad(stacked, xv, grad_outputs=go, is_grads_batched=True, allow_unused=True)
            if gr is not None:
                out[:, live] = gr.transpose(0, 1).to(self.dtype)
            return out
        for pos, j in enumerate(live):
            (gr,) = torch.autograd.grad(
                cols[j].sum(), xv, retain_graph=pos < len(live) - 1, allow_unused=True
            )
            if gr is not None:
                out[:, j] = gr.to(self.dtype)
        return out

    # ------------------------------------------------------------------------------------------
    def check_start(self, ev: Evaluation) -> None:
        """Raise :class:`NonFiniteStartError` listing problems with non-finite data at x0."""
        for what, t in (("objective", ev.f), ("inequality constraints", ev.ci), ("equality constraints", ev.ce),
                        ("objective gradient", ev.g), ("inequality constraint gradients", ev.Ji),
                        ("equality constraint gradients", ev.Je)):
            if t is None or t.numel() == 0:
                continue
            bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                raise NonFiniteStartError(what, torch.nonzero(bad).flatten().tolist())
