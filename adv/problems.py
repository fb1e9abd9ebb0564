"""Attack problems in the form :func:`ncvx_core.solve` expects (paper Eq. 1, 4 and 12).

Each builder returns an object that is called as ``problem(z, idx)`` on flattened variables
``z (k, n_var)`` and the ``(k,)`` positions ``idx`` of these rows in the problem's batch (the
solver's subset form, see ``docs/batching.md``); it returns ``(f (k,), ci (k, p), None)``. All
per-sample data (clean images, labels, targets, budgets) is indexed with ``idx``. Helpers:

* ``problem.x0(x_start, idx)``: the flattened start variables for images ``x_start``
  (slack variables are initialised from the start point, as the authors do);
* ``problem.to_image(z)``: the image part ``x'`` of ``z``, shape ``(k, *image_shape)``;
* ``problem.rows(rows)``: the same problem restricted to batch positions ``rows``, for solves on a
  compacted subset (the returned callable maps the solver's ``idx`` back through ``rows``);
* ``problem.constraint_names``: one name per column of ``ci``.

Constraints are grouped by meaning and each group is folded into one column
(:mod:`adv.folding`):

**Max-loss (Eq. 1)**: ``f = -clip(loss)``;

* distance group: for l-infinity the n hinges ``|delta_i| - eps`` folded (default l2; the
  reformulation of paper Sec. 3.1, sparse-subgradient free); ``linf_form="original"`` uses
  ``||delta||_inf - eps`` instead. Every other distance (l1, l2, general lp, perceptual) is the
  single constraint ``d(x', x) - eps`` (no hinge is needed for one constraint: the solver's penalty
  takes its positive part, and the signed value keeps the slack of interior points visible to the
  steering QP);
* box group: see ``box`` below.

**Min-distortion (Eq. 4)**: ``f = d(x', x)``; the misclassification constraint
``-margin(x') + margin_offset <= 0`` (``margin >= 0`` means misclassified, or the target reached,
see :func:`adv.losses.margin`); l-infinity through Eq. 12: variables ``(x', t)``, ``f = t * s``
(``s = sqrt(n)`` by default, the authors' scale) and the folded hinges ``|delta_i| - t``; with
``l1_slack=True`` the l1 epigraph: variables ``(x', t in R^n)``, ``f = sum(t)``, folded hinges
``[delta - t; -delta - t]``.

``margin_offset`` (default ``1e-6``) asks for a margin slightly above 0: the solver accepts a point
as feasible when the constraint is within ``viol_ineq_tol`` of 0, and a point exactly on the
decision boundary may be judged either way in float64. The radius is then larger than the true one
by about ``margin_offset / ||grad margin||``, which is negligible.

**Rival classes** (class restarts of :mod:`adv.runner`): ``problem.rival`` is a ``(B,)`` long
tensor, ``-1`` by default. On an untargeted problem, a row with ``rival[i] = r >= 0`` uses the
pairwise margin ``z_r - z_y`` in place of ``max_{j != y} z_j - z_y`` (in the min-distortion
constraint, and in the max-loss objective with ``loss="margin"``). The misclassified set is the
union over ``r`` of ``{z_r >= z_y}``, so the smallest radius over all rivals is the untargeted
minimal radius, and every point with ``z_r - z_y >= 0`` is misclassified. Each pairwise problem
drops the max over classes, whose kinks trap a local solver at the boundary of the class that
is closest at the start.

Box ``[0, 1]`` handling (``box``):

* ``"clamp"``: the model sees ``clamp(x', 0, 1)``. With ``clamp_grad="ste"`` (default) the
  backward pass is the identity (straight-through), so pixels outside the box keep a gradient;
  ``clamp_grad="plain"`` uses torch's clamp gradient (0 outside the box). The distance is measured
  on the unclamped ``x'``; the judge clips the returned point, which can only reduce an lp
  distance to ``x`` (``x`` is in the box) and does not change what the model sees.
* ``"fold"``: one constraint ``F(max(x' - 1, -x', 0)) / N`` (the n per-pixel box violations
  folded; at most one of ``x'_i - 1`` and ``-x'_i`` is positive) with ``N`` the normaliser of
  :func:`adv.folding.fold_normaliser` (``sqrt(n)`` for l2, as the authors' max-loss code does;
  ``box_normalise=False`` drops it, as their min-distortion code does). The model sees ``x'``.
* ``"both"`` (default): the folded constraint and the clamp, as in the authors' code.
* ``"none"``: neither (the judge still clips the final point).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from adv.distances import Distance, Lp, parse_distance
from adv.folding import fold, fold_normaliser, get_folding
from adv.losses import CE_CLIP_PAPER, LOSSES, ce_clip_code, margin

__all__ = [
    "MaxLossProblem", "MinDistortionProblem", "max_loss_problem", "min_distortion_problem",
    "BOX_MODES", "resolve_ce_clip", "CE_ROW",
]

#: rival value of a row that maximises the clipped cross-entropy instead of the margin (loss
#: restarts of a margin attack, :func:`adv.attack`'s ``ce_restarts``)
CE_ROW = -2

BOX_MODES = ("both", "clamp", "fold", "none")
CLAMP_GRADS = ("ste", "plain")


def resolve_ce_clip(ce_clip: Any, num_classes: int) -> float | None:
    """``"paper"`` -> 10, ``"code"`` -> ``log K + 0.1``, a float -> itself, None -> no clipping."""
    if ce_clip is None:
        return None
    if isinstance(ce_clip, str):
        if ce_clip == "paper":
            return float(CE_CLIP_PAPER)
        if ce_clip == "code":
            return float(ce_clip_code(num_classes))
        raise ValueError(f"ce_clip must be 'paper', 'code', a positive float or None, got {ce_clip!r}")
    c = float(ce_clip)
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"ce_clip must be a positive finite float, got {ce_clip!r}")
    return c


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        import difflib

        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}{hint}")
    return value


def _is_linf(distance: Distance) -> bool:
    return isinstance(distance, Lp) and math.isinf(float(distance.p))


def _p_of(distance: Distance) -> float | None:
    return float(distance.p) if isinstance(distance, Lp) else None


class _Rows:
    """``problem`` restricted to batch positions ``rows``: ``fn(z, idx) = problem(z, rows[idx])``.

    ``rows`` may repeat a position (several runs of one sample solved side by side); ``rival``
    ``(k,)`` optionally gives each solver row its own rival class (``-1``: none; :data:`CE_ROW`:
    the clipped cross-entropy instead of the margin), overriding ``problem.rival`` for the
    duration of the call.
    """

    def __init__(self, problem: _AttackProblem, rows: Tensor, rival: Tensor | None = None) -> None:
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long:
            raise TypeError(f"rows must be a 1-D int64 tensor, got "
                            f"{tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__}"
                            f"{'' if not isinstance(rows, Tensor) else ' ' + str(rows.dtype)}")
        if rival is not None:
            if not isinstance(rival, Tensor) or rival.dtype != torch.long or rival.shape != rows.shape:
                got = (f"{tuple(rival.shape)} {rival.dtype}" if isinstance(rival, Tensor)
                       else type(rival).__name__)
                raise ValueError(f"rival must be an int64 tensor of shape {tuple(rows.shape)} (one class per "
                                 f"row, -1 for none), got {got}")
        self.problem = problem
        self.rows_ = rows
        self.rival_ = rival

    def __call__(self, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, None]:
        pos = self.rows_.to(idx.device)[idx]
        if self.rival_ is None:
            return self.problem(z, pos)
        prev = self.problem._row_rival
        self.problem._row_rival = self.rival_.to(idx.device)[idx]
        try:
            return self.problem(z, pos)
        finally:
            self.problem._row_rival = prev


class _AttackProblem:
    """Shared parts: per-sample data, the box and the variable layout."""

    kind = "attack"

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, distance: Any, *, target: Tensor | None,
                 box: str, folding: Any, clamp_grad: str, box_normalise: bool) -> None:
        self.model = model
        self.x = x.detach()
        self.y = y.detach().long()
        self.target = None if target is None else target.detach().long()
        self.distance = parse_distance(distance)
        self.box = _check_choice("box", box, BOX_MODES)
        self.clamp_grad = _check_choice("clamp_grad", clamp_grad, CLAMP_GRADS)
        self.folding = folding
        get_folding(folding)  # validate early
        self.image_shape = tuple(x.shape[1:])
        self.n = int(x[0].numel())
        self.box_normalise = bool(box_normalise)
        self.evaluations = 0
        #: per-sample rival class ``(B,)`` (``-1``: none), set by the runner for class restarts
        self.rival = torch.full((self.batch_size,), -1, dtype=torch.long, device=x.device)
        #: per-row rival classes of the call in progress (set by :class:`_Rows`), or None
        self._row_rival: Tensor | None = None
        #: slack variables after the image: "none", "t" (one, l-infinity) or "t_vec" (one per pixel, l1)
        self.slack = "none"

    # -- layout -------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_var(self) -> int:
        """Variables per sample: the image plus the slack (``t``: one, ``t_vec``: one per pixel)."""
        return self.n + {"none": 0, "t": 1, "t_vec": self.n}[self.slack]

    def to_image(self, z: Tensor) -> Tensor:
        """The image part ``x'`` of flattened variables ``z (k, n_var)``: ``(k, *image_shape)``."""
        return z[:, : self.n].reshape(z.shape[0], *self.image_shape)

    def x0(self, x_start: Tensor, idx: Tensor | None = None) -> Tensor:
        """Flattened start variables ``(k, n_var)`` for start images ``x_start (k, *image_shape)``
        of samples ``idx`` (default all); a slack starts at the start point's ``|delta|``."""
        k = x_start.shape[0]
        xs = x_start.reshape(k, -1).to(self.x.dtype)
        if self.slack == "none":
            return xs.clone()
        idx = torch.arange(k, device=xs.device) if idx is None else idx
        delta = (xs - self.x[idx].reshape(k, -1)).abs()
        if self.slack == "t":
            return torch.cat([xs, delta.amax(dim=1, keepdim=True)], dim=1)
        return torch.cat([xs, delta], dim=1)

    def rows(self, rows: Tensor, rival: Tensor | None = None) -> _Rows:
        """This problem on the batch positions ``rows`` only (for solves on a compacted subset;
        positions may repeat), optionally with a rival class ``rival (k,)`` per row."""
        return _Rows(self, rows, rival)

    # -- pieces -------------------------------------------------------------------------------------
    def _model_input(self, xp: Tensor) -> Tensor:
        if self.box in ("clamp", "both"):
            if self.clamp_grad == "ste":
                return xp + (xp.clamp(0.0, 1.0) - xp).detach()
            return xp.clamp(0.0, 1.0)
        return xp

    def _box_column(self, xp: Tensor) -> Tensor | None:
        if self.box not in ("fold", "both"):
            return None
        flat = xp.reshape(xp.shape[0], -1)
        viol = (flat - 0.5).abs() - 0.5  # max(x' - 1, -x') per pixel
        c = fold(viol, self.folding)
        if self.box_normalise:
            c = c / fold_normaliser(self.folding, self.n)
        return c

    def _targets(self, idx: Tensor) -> Tensor | None:
        return None if self.target is None else self.target[idx]

    def _rival_rows(self, idx: Tensor) -> tuple[Tensor, bool, bool]:
        """The rival values of rows ``idx`` (the per-call override, else ``problem.rival``) and
        whether any is a class or :data:`CE_ROW`, read with one host synchronisation."""
        riv = self._row_rival if self._row_rival is not None else self.rival.to(idx.device)[idx]
        any_class, any_ce = torch.stack([(riv >= 0).any(), (riv == CE_ROW).any()]).tolist()
        return riv, any_class, any_ce

    def _margin(self, logits: Tensor, idx: Tensor, rivals: tuple[Tensor, bool, bool] | None = None) -> Tensor:
        """The (targeted) margin, or ``z_r - z_y`` on rows with a rival class ``r`` (untargeted only);
        ``rivals``: :meth:`_rival_rows` when the caller has read it already."""
        m = margin(logits, self.y[idx], self._targets(idx))
        if self.target is not None:
            return m
        riv, any_class, _ = rivals if rivals is not None else self._rival_rows(idx)
        has = riv >= 0
        if not any_class:
            return m
        z_r = logits.gather(1, riv.clamp(min=0)[:, None]).squeeze(1)
        z_y = logits.gather(1, self.y[idx][:, None]).squeeze(1)
        return torch.where(has, z_r - z_y, m)

    def logits(self, xp: Tensor) -> Tensor:
        out = self.model(self._model_input(xp))
        if out.dim() != 2 or out.shape[0] != xp.shape[0]:
            raise ValueError(f"the model must return logits of shape (k, K), got {tuple(out.shape)}")
        return out

    @property
    def constraint_names(self) -> list[str]:
        raise NotImplementedError


class MaxLossProblem(_AttackProblem):
    """Paper Eq. 1: ``min -clip(loss(x'))`` s.t. ``d(x', x) <= eps`` (and the box), per sample.

    Args:
        model: classifier returning logits ``(k, K)``; called with points of the solver's dtype.
        x: clean images ``(B, *shape)`` in [0, 1]; y: labels ``(B,)``; eps: ``(B,)`` budgets.
        distance: an :class:`adv.distances.Distance` or a name (``"linf"``, ``"l2"``, ``"l1.5"``, ...).
        loss: ``"margin"`` (default), ``"ce"`` or ``"dlr"`` (names of :data:`adv.losses.LOSSES`).
        target: ``(B,)`` target classes (targeted attack) or None.
        margin_clip: the margin is clipped at this value (paper and code: 0.01); None: no clip.
        ce_clip: clip of the CE loss: ``"code"`` (``log K + 0.1``, the authors' code),
            ``"paper"`` (10), a float, or None.
        box, clamp_grad, box_normalise: the box handling (module docstring).
        folding: folding kind of the l-infinity hinge group, of the l1 slack hinges and of the box
            group.
        linf_form: ``"reformulated"`` (folded hinges, default) or ``"original"`` (``||delta||_inf``).
        l1_slack: the l1 budget through the per-pixel epigraph: variables ``(x', t in R^n)``,
            constraints ``sum(t) - eps <= 0`` and the folded hinges ``[delta - t; -delta - t]``
            (which imply ``t >= |delta|``), instead of the kinked ``||delta||_1 - eps``. Only for the
            l1 distance.
        num_classes: K (for ``ce_clip="code"``).
    """

    kind = "max_loss"

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, distance: Any, eps: Tensor, *,
                 loss: str = "margin", target: Tensor | None = None, box: str = "both", folding: Any = "l2",
                 margin_clip: float | None = 0.01, ce_clip: Any = "code", clamp_grad: str = "ste",
                 box_normalise: bool = True, linf_form: str = "reformulated", l1_slack: bool = False,
                 num_classes: int | None = None) -> None:
        super().__init__(model, x, y, distance, target=target, box=box, folding=folding, clamp_grad=clamp_grad,
                         box_normalise=box_normalise)
        self.l1_slack = bool(l1_slack)
        self.slack = "t_vec" if self.l1_slack else "none"
        if self.l1_slack and _p_of(self.distance) != 1.0:
            raise ValueError(f"l1_slack=True needs the l1 distance, got {self.distance!r}")
        if loss not in LOSSES:
            import difflib

            close = difflib.get_close_matches(str(loss), list(LOSSES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown loss {loss!r}{hint} (valid: {', '.join(LOSSES)})")
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        self.eps = eps_t.expand(x.shape[0]).clone() if eps_t.dim() == 0 else eps_t.reshape(-1).clone()
        if self.eps.shape[0] != x.shape[0]:
            raise ValueError(f"eps must be a scalar or have shape ({x.shape[0]},), got {tuple(eps_t.shape)}")
        self.linf_form = _check_choice("linf_form", linf_form, ("reformulated", "original"))
        if loss == "ce":
            if num_classes is None and ce_clip == "code":
                raise ValueError("ce_clip='code' needs num_classes")
            self.clip = resolve_ce_clip(ce_clip, int(num_classes or 0))
        elif loss == "margin":
            self.clip = None if margin_clip is None else float(margin_clip)
        else:
            self.clip = None
        # clip of the cross-entropy rows of a margin attack (rival CE_ROW), resolved with the
        # number of classes of the logits (validated here)
        resolve_ce_clip(ce_clip, 2)
        self.row_ce_clip = ce_clip

    @property
    def constraint_names(self) -> list[str]:
        names = ["distance"]
        if self.l1_slack:
            names.append("slack")
        if self.box in ("fold", "both"):
            names.append("box")
        return names

    def objective(self, logits: Tensor, idx: Tensor) -> Tensor:
        if self.loss_name != "margin":
            L = self.loss_fn(logits, self.y[idx], self._targets(idx))
            return -(L if self.clip is None else L.clamp(max=self.clip))
        rivals = self._rival_rows(idx)
        L = self._margin(logits, idx, rivals)
        if self.clip is not None:
            L = L.clamp(max=self.clip)
        riv, _, any_ce = rivals
        if any_ce:
            ce = LOSSES["ce"](logits, self.y[idx], self._targets(idx))
            clip = resolve_ce_clip(self.row_ce_clip, logits.shape[1])
            L = torch.where(riv == CE_ROW, ce if clip is None else ce.clamp(max=clip), L)
        return -L

    def _distance_column(self, xp: Tensor, idx: Tensor) -> Tensor:
        xr = self.x[idx]
        eps = self.eps[idx]
        if _is_linf(self.distance):
            delta = (xp - xr).reshape(xp.shape[0], -1)
            if self.linf_form == "original":
                return delta.abs().amax(dim=1) - eps
            return fold(delta.abs() - eps.unsqueeze(1), self.folding)
        return self.distance(xp, xr) - eps

    def __call__(self, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, None]:
        self.evaluations += int(z.shape[0])
        xp = self.to_image(z)
        f = self.objective(self.logits(xp), idx)
        if self.l1_slack:
            t = z[:, self.n:]
            delta = (xp - self.x[idx]).reshape(z.shape[0], -1)
            cols = [t.sum(dim=1) - self.eps[idx], fold(torch.cat([delta - t, -delta - t], dim=1), self.folding)]
        else:
            cols = [self._distance_column(xp, idx)]
        box = self._box_column(xp)
        if box is not None:
            cols.append(box)
        return f, torch.stack(cols, dim=1), None


class MinDistortionProblem(_AttackProblem):
    """Paper Eq. 4 (and Eq. 12 for l-infinity): ``min d(x', x)`` s.t. ``x'`` misclassified.

    Args:
        model, x, y, distance, target, box, folding, clamp_grad, box_normalise: as in
            :class:`MaxLossProblem`.
        linf_scale: objective scale ``s`` of the l-infinity form ``f = s * t``; None: ``sqrt(n)``
            (the authors' choice).
        linf_form: ``"reformulated"`` (Eq. 12, default) or ``"original"`` (``f = ||delta||_inf``).
        l1_slack: l1 through the epigraph with one slack per pixel (``f = sum t``).
        margin_offset: the constraint is ``-margin + margin_offset <= 0``.
    """

    kind = "min_distortion"

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, distance: Any, *, target: Tensor | None = None,
                 box: str = "both", folding: Any = "l2", clamp_grad: str = "ste", box_normalise: bool = True,
                 linf_scale: float | None = None, linf_form: str = "reformulated", l1_slack: bool = False,
                 margin_offset: float = 1e-6) -> None:
        super().__init__(model, x, y, distance, target=target, box=box, folding=folding, clamp_grad=clamp_grad,
                         box_normalise=box_normalise)
        self.linf_form = _check_choice("linf_form", linf_form, ("reformulated", "original"))
        p = _p_of(self.distance)
        self.slack = "none"
        if _is_linf(self.distance) and self.linf_form == "reformulated":
            self.slack = "t"
        elif l1_slack:
            if p != 1.0:
                raise ValueError(f"l1_slack=True needs the l1 distance, got {self.distance!r}")
            self.slack = "t_vec"
        self.linf_scale = math.sqrt(self.n) if linf_scale is None else float(linf_scale)
        if not (self.linf_scale > 0 and math.isfinite(self.linf_scale)):
            raise ValueError(f"linf_scale must be a positive finite float, got {linf_scale!r}")
        self.margin_offset = float(margin_offset)

    @property
    def constraint_names(self) -> list[str]:
        names = ["misclassification"]
        if self.slack != "none":
            names.append("distance")
        if self.box in ("fold", "both"):
            names.append("box")
        return names

    def slack_of(self, z: Tensor) -> Tensor:
        """The slack part of ``z``: ``(k, 1)`` for l-infinity, ``(k, n)`` for the l1 epigraph."""
        return z[:, self.n:]

    def __call__(self, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, None]:
        self.evaluations += int(z.shape[0])
        k = z.shape[0]
        xp = self.to_image(z)
        xr = self.x[idx]
        logits = self.logits(xp)
        m = self._margin(logits, idx)
        cols = [-m + self.margin_offset]
        if self.slack == "t":
            t = z[:, self.n]
            delta = (xp - xr).reshape(k, -1)
            f = t * self.linf_scale
            cols.append(fold(delta.abs() - t.unsqueeze(1), self.folding))
        elif self.slack == "t_vec":
            t = z[:, self.n:]
            delta = (xp - xr).reshape(k, -1)
            f = t.sum(dim=1)
            cols.append(fold(torch.cat([delta - t, -delta - t], dim=1), self.folding))
        elif _is_linf(self.distance):  # original form
            f = (xp - xr).reshape(k, -1).abs().amax(dim=1)
        else:
            f = self.distance(xp, xr)
        box = self._box_column(xp)
        if box is not None:
            cols.append(box)
        return f, torch.stack(cols, dim=1), None


def max_loss_problem(model: nn.Module, x: Tensor, y: Tensor, distance: Any, eps: Any, **kw: Any) -> MaxLossProblem:
    """Build a :class:`MaxLossProblem` (Eq. 1); keyword arguments as in its constructor."""
    return MaxLossProblem(model, x, y, distance, eps, **kw)


def min_distortion_problem(model: nn.Module, x: Tensor, y: Tensor, distance: Any, **kw: Any) -> MinDistortionProblem:
    """Build a :class:`MinDistortionProblem` (Eq. 4 / Eq. 12); keyword arguments as in its constructor."""
    return MinDistortionProblem(model, x, y, distance, **kw)
