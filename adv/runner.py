"""The PWCF protocol: random restarts, early stopping, best-restart selection, warm continuation.

This module drives :func:`ncvx_core.solve` on the problems of :mod:`adv.problems` (spec/pwcf.md
sections 2.2-2.5, with the pitfalls of 1.8 fixed):

1. **Restarts** ``r = 0 .. R-1``, each one batched solve over the samples that still need it
   (max-loss: those without a verified success; min-distortion: all attacked samples). Only these
   rows are gathered (compaction); the problem is called through ``problem.rows(rows, rival)``,
   which maps the solver's ``idx`` back to the original batch positions. With
   ``parallel_restarts = P > 1`` several restarts are solved side by side in one batched solve
   (max-loss: restart 0 alone, then the others P at a time; min-distortion: P at a time): the
   sample positions are repeated, a sample's rows stop together at its first verified success,
   and the results are merged in restart order as if the restarts had run one after the other.

   * max-loss start: ``x + delta`` with ``delta`` uniform in the eps-ball (exact samplers for every
     lp, ``p > 0``), clipped to the box (clipping keeps an lp ball point inside the ball); for l1,
     a sparse box-saturated point instead (:func:`sparse_l1_start`), for l-infinity a random
     vertex of the ball (:func:`vertex_linf_start`). With
     ``init="blend"`` restart 0 starts from the authors' ``0.995 x + 0.005 U[0, 1]``, shrunk into
     half the ball if needed. Other distances: ``s U[-1, 1]`` halved until inside the ball.
   * min-distortion start: ``clip(x + s U[-1, 1], 0, 1)`` (``s = init_scale``); restart 0 and the
     class restarts with ``init="blend"`` from ``0.995 x + 0.005 U`` (each its own draw).

   * class restarts (``class_restarts = c``): restarts ``1 .. c`` set ``problem.rival`` to one
     rival class each (:mod:`adv.problems`), taken from :func:`rival_order` at the clean input
     (``class_order``): with ``"logit"`` restart ``r`` aims at the runner-up of logit rank ``r``
     (rank 0 is where the untargeted restart 0 usually ends); with ``"linearised"`` at the
     ``r``-th nearest class by the first-order boundary distance; with ``"mixed"`` (default) at
     the ``r``-th entry of those two orders interleaved (nearest, logit rank 1, second nearest,
     logit rank 2, ... without repeats; logit rank 0 last). The checks below stay untargeted (any
     misclassification counts). The continuation keeps the rival of the restart it continues.
   * cross-entropy restarts (max-loss with the margin loss, ``ce_restarts = c``): the last ``c``
     restarts (after any class restart) maximise the clipped cross-entropy instead, from restart
     0's kind of start; their rows carry the rival value :data:`adv.problems.CE_ROW`, so margin
     and cross-entropy rows share one batched solve, and a continued CE restart stays CE.

2. **Early stop** (max-loss): ``halt_log_fn`` checks every updated iterate as the judge does
   (float64, point clipped to the box and, if it lies a solver tolerance outside the ball,
   projected back onto it; ``margin >= 0`` and ``d <= eps (1 + 1e-6)``) and stops each sample at
   its first verified success. For min-distortion the same callback records the smallest verified
   radius seen along the trajectory (it never halts).

3. **Selection** per sample among the candidates of every restart (the halting point, ``final.x``
   and ``best.x``): max-loss: a verified success with the smallest distance, else the largest
   margin; min-distortion: the smallest verified radius, else the largest margin.

4. **Warm continuation** of the restart that produced the selected candidate, for the samples
   still unsolved whose chosen restart stopped on the iteration limit: ``x0 = final.x``,
   ``mu0 = final.mu``, ``limited_mem_warm_start = H_final`` rows, ``scaleH0 = False``. The
   continued run is only *added* to the candidates, so it can never make the answer worse (the
   authors' code reports it even when it is worse).

Budgets: ``restart_maxit`` accepted iterations per restart; ``maxit`` is the per-sample cap of the
continued restart (its restart phase plus the continuation), enforced per sample through the halt
callback; ``time_limit`` is the wall-clock limit of the whole call (every solve gets the remaining
time as ``maxclocktime``; a sample that never ran keeps its clean start).

Everything is logged on the ``adv`` logger (INFO: one line per restart and continuation).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adv.checks import check_labels
from adv.distances import Distance, Lp
from adv.losses import margin as margin_loss
from adv.problems import CE_ROW, MaxLossProblem, MinDistortionProblem
from ncvx_core import SolverOptions, Status, solve
from ncvx_core.hessian import BFGSState, LBFGSState
from ncvx_core.utils import tree_rows

__all__ = [
    "RunOutput", "CheckContext", "default_solver_options", "run_max_loss", "run_min_distortion",
    "sample_ball", "sparse_l1_start", "vertex_linf_start", "model_as", "model_dtype", "adapt_distance",
    "CastDistance", "DEFAULT_LIMITED_MEM", "NOT_RUN",
    "DEFAULT_LINESEARCH_MAXIT", "DEFAULT_NGRAD", "DEFAULT_LINESEARCH_ARMIJO_AFTER",
]

logger = logging.getLogger("adv")

#: L-BFGS memory of the default solver options (see :func:`default_solver_options`).
DEFAULT_LIMITED_MEM = 20
#: neighbourhood gradient samples of the stationarity measure per problem kind (see
#: :func:`default_solver_options`; 0: the penalty gradient's norm, no QP)
DEFAULT_NGRAD = {"max": 0, "min": 1}
#: evaluations per line search of the default solver options, per problem kind
DEFAULT_LINESEARCH_MAXIT = {"max": 20, "min": 30}
#: ``linesearch_armijo_after`` per kind (see :func:`default_solver_options`)
DEFAULT_LINESEARCH_ARMIJO_AFTER: dict[str, int | None] = {"max": 12, "min": None}
#: ``status`` of a sample the solver was not run on (already adversarial, or out of time).
NOT_RUN = -1

_RESERVED = {
    "halt_log_fn": "it is used for early stopping and per-sample budgets",
    "limited_mem_warm_start": "the warm continuation sets it",
    "H0": "the warm continuation sets it",
    "maxit": "use the maxit / restart_maxit arguments",
    "maxclocktime": "use the time_limit argument",
}


def default_solver_options(kind: str) -> dict[str, Any]:
    """Solver options used unless ``solver_options`` overrides them.

    * ``limited_mem_size = 20``: full BFGS needs ``n^2`` numbers per sample (75 MB for a CIFAR
      image in float64), so limited memory is the only option for images. The authors' default is
      100; 20 pairs cost 5x less memory and time per product (``2 m n`` numbers and ``O(m n)``
      flops per column). On a small trained CNN (n = 108) the minimal l2, l1 and l-infinity radii
      after 200 iterations differed by less than 1.5 % between m = 10, 20, 50 and 100 (no trend),
      and max-loss attacks mostly stop after a few tens of iterations (early stop) or hit the
      per-restart budget. The memory planner still applies (it only changes full BFGS).
    * tolerances: max-loss ``opt_tol = viol_ineq_tol = 1e-6`` (a success is verified by the judge,
      not by the tolerances, and tighter values only prolong runs that cannot succeed);
      min-distortion ``1e-8`` (the radius is the objective, so it is driven to stationarity).
    * ``linesearch_maxit``: 20 (max-loss) / 30 (min-distortion) evaluations per line search
      (PyGRANSO: unlimited). The problems of a batch search in lock step, so one search that
      bisects down to ``step_tol`` (about 40 halvings at a kink of the penalty, where no weak Wolfe
      point exists) holds up every other problem. On the digits CNN of :mod:`adv.zoo` (100
      images), most steps accept after 1 to 6 trials, and nearly every batch step had one problem
      bisecting 34 to 47 times. Cap 20 halved the time of max-loss restarts with the same number
      of verified successes (36/100, l-infinity, one restart) and cut min-distortion time 4x
      with l2 radii within 0.2 %; for min-distortion in l-infinity cap 20 gave 0.8 % larger
      radii, cap 30 the same mean radius as no cap (30 images, 1.010 x FAB's both) in 0.6x the
      time. A search that hits the cap fails like a bracketing failure (fallback to the next
      direction, then status 6/7).
    * ``ngrad``: 1 for minimal distortion (the stationarity measure uses the current gradients
      only, with the constraint multipliers, so a smooth KKT point is still recognised), 0 for
      max-loss (the measure is the norm of the penalty gradient: no QP at all); GRANSO's default
      keeps up to ``min(100, 2n, n + 10)`` neighbourhood samples. The measure only decides
      termination (code 0): it never changes a trajectory (``tests/test_solver.py::
      test_ngrad_only_changes_termination``). No PWCF run on the digits benchmark
      (``benchmarks/bench_adv.py``) ended with code 0 at the default either (they end on a
      verified success, the iteration cap or a line-search failure), while the sample QPs cost up
      to half of a minimal-distortion run: ``benchmarks/bench_adv.py`` recorded the same radii in
      2.98 instead of 7.51 s per image (l1), 3.5 instead of 5.58 s (l-infinity) and 1.27 instead
      of 1.51 s (l2), and the l2 attack in 0.507 instead of 0.78 s with the same robust accuracy
      (``benchmarks/results/adv_cpu.md`` at commits 8488d33 and 6087ade). A max-loss run ends on
      a verified success, the stall rule, the iteration cap or a line-search failure; in the
      300-image digits files (``benchmarks/results/adv_max_n300*_cpu.md`` at 4fbc5b7, seeds 0-2,
      three threats: 2700 attacked images) the selected run of two images had ended with code 0,
      and dropping the one-sample QP as well took 8 % off the l-infinity attack
      (0.082 against 0.089 s per image, 300 images, side by side, the same 127 broken; ad hoc).
      The gradient cache also stops costing memory (``ngrad (1 + p + q) n`` numbers per sample).
    * ``linesearch_previous_step``: on for max-loss problems (each line search starts at 4 times the
      problem's last accepted step and extrapolates, instead of bisecting down from 1 every time;
      see ``docs/algorithm.md`` section 6.6), off for minimal distortion. On the digits CNN (100
      images, runs outside the benchmark scripts) it broke 43 / 42 images at l-infinity 0.15
      (seeds 0 / 1) against 44 / 41 without it, the same 57 at l1 1.5 and 62 at l2 0.75, with 23-26 %
      fewer function rows; ``benchmarks/results/adv_cost_prevstep_cpu.md`` records the
      CIFAR-sized CNN side by side.
    * ``linesearch_armijo_after``: 12 for max-loss problems (a search that has bracketed and still
      has no weak Wolfe step after 12 of its 20 trials returns its lower bracket end, a step with
      sufficient decrease; ``docs/algorithm.md`` section 6.7), None (GRANSO's search) for minimal
      distortion. At a kink of the penalty no weak Wolfe step may exist, and nearly every batch
      step of a max-loss solve had one problem bisecting to the cap while the others waited. On
      the digits CNN (100 images, 7 restarts at l1 as then; runs outside the benchmark scripts)
      it broke 42 / 57 / 62 images at l-infinity / l1 / l2 against 43 / 57 / 62 without it, in
      0.41 / 0.39 / 0.36 s per image against 0.50 / 0.59 / 0.44 s; on the next 200 test images
      87 / 111 against 86 / 112 (l-infinity / l1; a draft that applied the rule only at the start
      of each round). For minimal distortion (50 images, same kind
      of runs) it cut the time by 23-36 % but left l1 radii 0.19 % larger (l2 +0.03 %, l-infinity
      -0.25 %), where the radius is the result.
    * ``globalAD = False``: the solver calls ``problem.with_gradients``
      (:meth:`adv.problems.MaxLossProblem.with_gradients`), which returns the gradients of the
      columns that do not involve the model (the distance, slack and box constraints, the
      minimal-distortion objective) in closed form, so that autograd runs one backward pass per
      evaluation, through the model, instead of one per column (lp distances with ``p >= 1`` and
      the built-in foldings; the others, perceptual distances and folding callables, still take
      autograd). The values are those of ``problem(z, idx)`` to the bit and the gradients agree
      with autograd's to rounding (``tests/adv/test_problems.py``). On the digits CNN the two
      extra backward passes of an l-infinity attack (distance and box columns) took 10 % of the
      run (100 images, ad hoc profile). ``solver_options={"globalAD": True}`` restores autograd
      for every column.
    * ``print_level = 0`` (progress goes to the ``adv`` logger).
    """
    if kind not in ("max", "min"):
        raise ValueError(f"kind must be 'max' or 'min', got {kind!r}")
    tol = 1e-6 if kind == "max" else 1e-8
    cap = DEFAULT_LINESEARCH_MAXIT[kind]
    return dict(limited_mem_size=DEFAULT_LIMITED_MEM, opt_tol=tol, viol_ineq_tol=tol, print_level=0,
                linesearch_maxit=cap, ngrad=DEFAULT_NGRAD[kind], linesearch_previous_step=kind == "max",
                linesearch_armijo_after=DEFAULT_LINESEARCH_ARMIJO_AFTER[kind], globalAD=False)


def merge_solver_options(kind: str, user: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults of :func:`default_solver_options` updated with the user's dict (validated)."""
    opts = default_solver_options(kind)
    if user is None:
        return opts
    if not isinstance(user, dict):
        raise TypeError(f"solver_options must be a dict of SolverOptions fields, got {type(user).__name__}")
    for k in user:
        if k in _RESERVED:
            raise ValueError(f"solver_options may not set {k!r}: {_RESERVED[k]}")
    opts.update(user)
    SolverOptions(**opts)  # validates names and values (OptionError with the closest name)
    return opts


class CastDistance:
    """A distance evaluated in a fixed dtype (e.g. a perceptual distance whose feature network only
    runs in float32): inputs are cast to ``dtype``, the result back to the dtype of ``x``.
    Gradients flow through the casts."""

    def __init__(self, distance: Distance, dtype: torch.dtype) -> None:
        self.distance = distance
        self.dtype = dtype
        self.name = getattr(distance, "name", type(distance).__name__)

    def __repr__(self) -> str:
        return f"CastDistance({self.distance!r}, {self.dtype})"

    def __call__(self, x: Tensor, x_ref: Tensor) -> Tensor:
        return self.distance(x.to(self.dtype), x_ref.to(self.dtype)).to(x.dtype)


def adapt_distance(distance: Distance, x: Tensor, dtype: torch.dtype = torch.float64) -> Distance:
    """``distance`` in a form that evaluates on float64 inputs (the in-run checks) and on inputs of
    the solver's ``dtype``: lp distances and distances that run in both dtypes as they are, else a
    :class:`CastDistance` to the first of float64, ``dtype`` and the dtype of ``x`` it runs in
    (e.g. a perceptual distance whose feature network holds float64 or float32 weights)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if isinstance(distance, Lp):
        return distance
    probe = x[:1].detach()

    def runs(dt: torch.dtype) -> Exception | None:
        try:
            with torch.no_grad():
                distance(probe.to(dt), probe.to(dt))
            return None
        except Exception as exc:  # noqa: BLE001  (any failure: try another dtype)
            return exc

    fails = {dt: runs(dt) for dt in dict.fromkeys((torch.float64, dtype, x.dtype))}
    if fails[torch.float64] is None and fails[dtype] is None:
        return distance
    for dt in fails:
        if fails[dt] is None:
            logger.info("distance %r does not run on both float64 and %s inputs; it is evaluated in %s",
                        distance, dtype, dt)
            return CastDistance(distance, dt)
    exc = fails[x.dtype]
    raise ValueError(f"the distance {distance!r} fails on the inputs: {exc}") from exc


def model_dtype(model: nn.Module) -> torch.dtype:
    """The precision ``model`` computes in: the dtype of its floating parameters and buffers when
    they are all float32 or all float64, else float64 (no floating tensors, or mixed ones)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    kinds = {t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()}
    if len(kinds) == 1 and next(iter(kinds)) in (torch.float32, torch.float64):
        return next(iter(kinds))
    return torch.float64


def model_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` itself if all its floating parameters and buffers have ``dtype``, else an eval-mode
    deep copy cast to ``dtype`` (the caller's model is never modified)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in tensors):
        return model
    m = copy.deepcopy(model).to(dtype)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ------------------------------------------------------------------------------------------------
# verification (the judge's criterion, without copying the model each call)
@dataclass
class CheckContext:
    """What the in-run checks need: a float64 model, the clean float64 images, labels, target,
    the distance and the per-sample bound (``eps``; ``inf`` for min-distortion).

    ``out_dtype`` is the dtype the caller's points are returned in: every checked point is first
    rounded to it (and back to float64), so a point verified in the run is still verified after the
    final cast (a minimal-distortion point sits within ~1e-6 of the decision boundary, where a
    float32 rounding can flip the label)."""

    model64: nn.Module
    x64: Tensor
    y: Tensor
    target: Tensor | None
    distance: Distance
    bound: Tensor
    rel_tol: float = 1e-6
    out_dtype: torch.dtype = torch.float64
    #: optional lower-precision copy of the model (the one the solver runs): when given, every
    #: checked point is first classified with it and only the points it finds within
    #: ``screen_slack`` of success are re-run in float64 (the verdict is always the float64 one)
    screen: nn.Module | None = None
    screen_slack: float = 1e-3


@dataclass
class Candidate:
    x: Tensor        # (k, *shape) float64, in the box
    success: Tensor  # (k,) bool (verified)
    distance: Tensor  # (k,) float64
    margin: Tensor   # (k,) float64 (NaN for non-finite points -> -inf)

    def rows(self, idx: Any) -> Candidate:
        """The candidates of rows ``idx`` (an index tensor or a slice)."""
        return Candidate(self.x[idx], self.success[idx], self.distance[idx], self.margin[idx])


def _check(ctx: CheckContext, rows: Tensor, xa: Tensor) -> Candidate:
    """The judge's test on ``xa (k, *shape)`` for batch positions ``rows`` (float64, no copies)."""
    with torch.no_grad():
        x64 = ctx.x64[rows]
        xa = xa.to(ctx.out_dtype).to(torch.float64)
        finite = torch.isfinite(xa).reshape(xa.shape[0], -1).all(dim=1)
        xc = torch.where(finite.reshape(-1, *([1] * (xa.dim() - 1))), xa.clamp(0.0, 1.0), x64)
        d = ctx.distance(xc, x64).to(torch.float64)
        tgt = None if ctx.target is None else ctx.target[rows]
        if ctx.screen is None:
            logits = ctx.model64(xc).to(torch.float64)
            m = margin_loss(logits, ctx.y[rows], tgt).to(torch.float64)
        else:
            m = _screened_margin(ctx, rows, xc, tgt)
        b = ctx.bound[rows]
        # an infinite bound means "no bound" here (min-distortion); the judge is stricter
        ok = finite & torch.isfinite(m) & (m >= 0) & (d <= b * (1.0 + ctx.rel_tol))
        m = torch.where(finite & torch.isfinite(m), m, torch.full_like(m, -math.inf))
        d = torch.where(finite, d, torch.full_like(d, math.inf))
    return Candidate(xc, ok, d, m)


def _screened_margin(ctx: CheckContext, rows: Tensor, xc: Tensor, tgt: Tensor | None) -> Tensor:
    """Margins of the float64 points ``xc``: from the screening model, except where it finds the
    point within ``screen_slack (1 + max |logit|)`` of success; there the float64 model's margin.

    A float32 margin is off by about 1e-7 times the logits' scale, far inside the slack, so every
    point the float64 model would call a success is re-run in float64, and the margins of the
    others only rank failures (restart selection)."""
    low = ctx.screen(xc.to(model_dtype(ctx.screen))).to(torch.float64)
    m = margin_loss(low, ctx.y[rows], tgt).to(torch.float64)
    scale = low.abs().amax(dim=1).nan_to_num(math.inf, math.inf, math.inf)
    near = ~(m < -ctx.screen_slack * (1.0 + scale))  # NaN margins are re-run too
    sel = torch.nonzero(near).flatten()
    if sel.numel():
        logits = ctx.model64(xc[sel]).to(torch.float64)
        t_sel = None if tgt is None else tgt[sel]
        m = m.index_copy(0, sel, margin_loss(logits, ctx.y[rows][sel], t_sel).to(torch.float64))
    return m


def _repair(ctx: CheckContext, rows: Tensor, xa: Tensor) -> Tensor:
    """Clip to the box and pull points that lie (slightly) outside the ball back onto it.

    lp with p in {1, 2, inf}: the exact projection (then the box clip again, which cannot leave the
    ball because the clean point is in the box); other lp: scaling of delta (homogeneous); other
    distances: bisection on the scale of delta (20 steps).
    """
    with torch.no_grad():
        x64 = ctx.x64[rows]
        xc = xa.to(torch.float64).clamp(0.0, 1.0)
        b = ctx.bound[rows]
        d = ctx.distance(xc, x64).to(torch.float64)
        out = b < d
        if not bool(out.any()):
            return xc
        delta = xc - x64
        dist = ctx.distance
        if isinstance(dist, Lp):
            if dist.p in (1.0, 2.0, math.inf):
                new = x64 + dist.project(delta, b)
            else:
                s = torch.where(d > 0, b / d, torch.ones_like(d)) * (1 - 1e-12)
                new = x64 + delta * s.reshape(-1, *([1] * (delta.dim() - 1)))
            new = new.clamp(0.0, 1.0)
        else:
            lo = torch.zeros_like(d)
            hi = torch.ones_like(d)
            for _ in range(20):
                mid = (lo + hi) / 2
                cand = x64 + delta * mid.reshape(-1, *([1] * (delta.dim() - 1)))
                inside = ctx.distance(cand, x64).to(torch.float64) <= b
                lo = torch.where(inside, mid, lo)
                hi = torch.where(inside, hi, mid)
            new = x64 + delta * lo.reshape(-1, *([1] * (delta.dim() - 1)))
        return torch.where(out.reshape(-1, *([1] * (xc.dim() - 1))), new, xc)


def _better(a: Candidate, b_succ: Tensor, b_dist: Tensor, b_margin: Tensor) -> Tensor:
    """Rows where candidate ``a`` beats the incumbent: a success with a smaller distance, or (no
    success on either side) a larger margin."""
    both = a.success & b_succ
    neither = ~a.success & ~b_succ
    return (a.success & ~b_succ) | (both & (a.distance < b_dist)) | (neither & (a.margin > b_margin))


def _pick(cands: list[Candidate]) -> Candidate:
    best = cands[0]
    for c in cands[1:]:
        w = _better(c, best.success, best.distance, best.margin)
        wx = w.reshape(-1, *([1] * (best.x.dim() - 1)))
        best = Candidate(torch.where(wx, c.x, best.x), torch.where(w, c.success, best.success),
                         torch.where(w, c.distance, best.distance), torch.where(w, c.margin, best.margin))
    return best


# ------------------------------------------------------------------------------------------------
# start points
def _gen(seed: int, r: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + 7919 * (r + 1)) % (2**63 - 1))
    return g


def sample_ball(distance: Distance, x: Tensor, eps: Tensor, gen: torch.Generator, *, scale: float = 0.5) -> Tensor:
    """``x + delta`` clipped to the box, ``delta`` uniform in the ball ``d(., 0) <= eps``.

    lp (any ``p > 0``): the generalised-Gaussian construction of Barthe, Guedon, Mendelson and Naor
    (``g_i`` with density proportional to ``exp(-|g|^p)``, ``E ~ Exp(1)``,
    ``delta = eps g / (sum |g_i|^p + E)^(1/p)``); l-infinity: ``eps U[-1, 1]``. Other distances:
    ``scale U[-1, 1]`` halved until inside the ball. Shapes: ``x (k, *shape)``, ``eps (k,)``.
    """
    k = x.shape[0]
    n = x[0].numel()
    dt, dev = x.dtype, x.device
    col = eps.to(dt).reshape(k, *([1] * (x.dim() - 1)))
    if isinstance(distance, Lp):
        p = distance.p
        if math.isinf(p):
            u = torch.rand(k, n, generator=gen, dtype=torch.float64).to(dev, dt) * 2 - 1
            delta = u.reshape(x.shape) * col
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            rng = np.random.default_rng(seed)
            mag = rng.gamma(1.0 / p, 1.0, size=(k, n)) ** (1.0 / p)
            sign = rng.choice([-1.0, 1.0], size=(k, n))
            g = torch.from_numpy(mag * sign)
            e = torch.from_numpy(rng.exponential(1.0, size=(k, 1)))
            denom = (g.abs().pow(p).sum(dim=1, keepdim=True) + e).pow(1.0 / p)
            delta = (g / denom).to(dev, dt).reshape(x.shape) * col
        return (x + delta).clamp(0.0, 1.0)
    u = torch.rand(k, n, generator=gen, dtype=torch.float64).to(dev, dt) * 2 - 1
    return _shrink_into(distance, x, (x + scale * u.reshape(x.shape)).clamp(0.0, 1.0), eps)


def _shrink_into(distance: Distance, x: Tensor, xs: Tensor, bound: Tensor, max_halvings: int = 40) -> Tensor:
    """Shrink ``xs - x`` (exactly for lp, by halving otherwise) until ``d(xs, x) <= bound``."""
    with torch.no_grad():
        delta = xs - x
        d = distance(xs, x).to(torch.float64)
        b = bound.to(torch.float64)
        if isinstance(distance, Lp):
            s = torch.where(d > b, b / torch.where(d > 0, d, torch.ones_like(d)), torch.ones_like(d)) * 0.999
            s = torch.where(d > b, s, torch.ones_like(s))
            return x + delta * s.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        s = torch.ones_like(d)
        for _ in range(max_halvings):
            out = d > b
            if not bool(out.any()):
                break
            s = torch.where(out, s / 2, s)
            xs = x + delta * s.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
            d = distance(xs, x).to(torch.float64)
        return xs


def _blend(x: Tensor, gen: torch.Generator) -> Tensor:
    u = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    return 0.995 * x + 0.005 * u


def sparse_l1_start(x: Tensor, eps: Tensor, gen: torch.Generator, *, fraction: float = 0.5) -> Tensor:
    """A sparse start for l1 budgets in the box: ``fraction * eps`` of l1 mass spent on pixels taken
    in random order, each pushed toward the far side of the box (up from ``x_i < 0.5``, down
    otherwise) as far as the box allows, the last one partially. Shapes: ``x (k, *shape)``,
    ``eps (k,)``; the result is in the box and in the ball.

    The vertices of ``B_1(x, eps) ∩ [0, 1]^n`` are such sparse, box-saturated points (Croce and
    Hein, "Mind the box", ICML 2021), while a uniform point of the l1 ball is dense and, after
    clipping, close to ``x``: on the l1 digits benchmark (100 images, eps 1.5, 5 restarts) these
    starts for restarts 1-4 broke 55 images instead of 51.
    """
    k = x.shape[0]
    xf = x.reshape(k, -1).to(torch.float64)
    room = torch.where(xf < 0.5, 1.0 - xf, -xf)  # |room| >= 0.5
    order = torch.rand(xf.shape, generator=gen, dtype=torch.float64).to(xf.device).argsort(dim=1)
    room_o = room.gather(1, order)
    mag = room_o.abs()
    spent = torch.cumsum(mag, dim=1) - mag
    budget = (fraction * eps.to(torch.float64)).reshape(k, 1)
    take = torch.minimum((budget - spent).clamp(min=0.0), mag)
    delta = torch.zeros_like(xf).scatter(1, order, torch.sign(room_o) * take)
    return (xf + delta).clamp(0.0, 1.0).reshape(x.shape).to(x.dtype)


def vertex_linf_start(x: Tensor, eps: Tensor, gen: torch.Generator) -> Tensor:
    """A random vertex of the l-infinity ball, clipped to the box: ``clip(x + eps s)`` with random
    signs ``s``. Shapes: ``x (k, *shape)``, ``eps (k,)``.

    Maximisers of a margin over ``B_inf(x, eps) ∩ [0, 1]^n`` sit mostly at vertices (78-95 % of
    the pixels of APGD's successful points on 7 digits images were at ``±eps`` or at the box);
    starting there instead of uniformly in the cube broke 43 instead of 41 (seed 0) and 42
    instead of 40 (seed 1) of 100 images at eps 0.15 with the default protocol.
    """
    s = torch.randint(0, 2, x.shape, generator=gen).to(device=x.device, dtype=x.dtype) * 2 - 1
    return (x + eps.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * s).clamp(0.0, 1.0)


def _start_max(ctx: CheckContext, rows: Tensor, r: int, seed: int, init: str, near: bool = False) -> Tensor:
    """Start of max-loss restart ``r``; ``near``: the restart-0 kind of start (with ``init="blend"``
    the authors' blend, close to the clean input) drawn with restart ``r``'s generator."""
    x = ctx.x64[rows]
    eps = ctx.bound[rows]
    gen = _gen(seed, r)
    if (r == 0 or near) and init == "blend":
        return _shrink_into(ctx.distance, x, _blend(x, gen), eps / 2)
    if isinstance(ctx.distance, Lp) and ctx.distance.p == 1.0:
        return sparse_l1_start(x, eps, gen)
    if isinstance(ctx.distance, Lp) and math.isinf(ctx.distance.p):
        return vertex_linf_start(x, eps, gen)
    return sample_ball(ctx.distance, x, eps, gen)


def _start_min(ctx: CheckContext, rows: Tensor, r: int, seed: int, init: str, scale: float,
               near: bool = False) -> Tensor:
    x = ctx.x64[rows]
    gen = _gen(seed, r)
    if (r == 0 or near) and init == "blend":
        return _blend(x, gen)
    u = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype) * 2 - 1
    return (x + scale * u).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# halt callback
#: max-loss in-run checks: a row whose objective is the clipped margin and whose iterate has a
#: margin below ``-CHECK_FAR_MARGIN`` (in the solver's own evaluation) is checked only on every
#: ``CHECK_FAR_EVERY``-th iteration (see :class:`_Halt`)
CHECK_FAR_MARGIN = 0.01
CHECK_FAR_EVERY = 4
#: max-loss with the margin loss: a solver row stops once its best margin has not risen by more
#: than ``STALL_GAIN * max(1, |best|)`` for ``STALL_ITERS`` iterations while it is below
#: ``-CHECK_FAR_MARGIN`` (the solver's own value on rows whose objective is the clipped margin,
#: the checked margin on class and cross-entropy rows; see :class:`_Halt`); ``STALL_ITERS = 0``
#: turns the rule off
STALL_ITERS = 25
STALL_GAIN = 1e-3


class _Halt:
    """Early stop (max-loss), trajectory tracking (min-distortion) and per-sample iteration caps.

    Each accepted iterate is repaired (max-loss: clipped to the box and pulled into the ball) and
    checked as the judge would (:func:`_check`). ``margin_rows (k,)`` marks the solver rows whose
    objective is ``-min(margin, clip)``: there the solver's value gives the margin at the
    (unrepaired) iterate, and a row whose margin is below ``-CHECK_FAR_MARGIN`` is checked only
    when its iteration count is a multiple of ``CHECK_FAR_EVERY`` (the repair pulls an iterate
    that left the ball back in, which lowers its margin in nearly every case: on the digits CNN,
    100 images at
    l-infinity, l2 and l1, none of the 74 000 checked iterates with a margin below -0.01 was a
    success, and the largest margin gain of the repair among them was 0.15, ad hoc). A success
    there is found at most ``CHECK_FAR_EVERY - 1`` iterations late, and every solve's final and
    best points are checked at its end. On a CIFAR-sized CNN (``benchmarks/bench_adv_cost.py``'s model,
    l-infinity 0.12, 16 images, ad hoc runs side by side) the checks took 12 % of the attack
    without deferral and 6 % with it: 5.96 instead of 6.36 s per image, with the same iterations
    and successes; on the digits CNN (100 images) the time changed by less than 3 % at l-infinity,
    l2 and l1, with the same successes.
    """

    def __init__(self, ctx: CheckContext, problem: Any, rows: Tensor, *, stop_on_success: bool,
                 budget: Tensor | None, repair: bool, margin_rows: Tensor | None = None) -> None:
        self.ctx = ctx
        self.problem = problem
        self.rows = rows
        self.stop_on_success = stop_on_success
        self.budget = budget
        self.repair = repair
        self.margin_rows = margin_rows
        self.checked = 0  # rows checked
        self.deferred = torch.zeros((), dtype=torch.long, device=rows.device)  # rows whose check was deferred
        k = rows.shape[0]
        shape = ctx.x64.shape[1:]
        self.best = Candidate(torch.zeros(k, *shape, dtype=torch.float64, device=rows.device),
                              torch.zeros(k, dtype=torch.bool, device=rows.device),
                              torch.full((k,), math.inf, dtype=torch.float64, device=rows.device),
                              torch.full((k,), -math.inf, dtype=torch.float64, device=rows.device))
        self.budget_hit = torch.zeros(k, dtype=torch.bool, device=rows.device)
        self.calls = 0
        # stall rule: each row's best margin and the iteration it last rose at
        self.m_best = torch.full((k,), -math.inf, dtype=torch.float64, device=rows.device)
        self.m_rise = torch.zeros(k, dtype=torch.long, device=rows.device)
        self.stalled = torch.zeros(k, dtype=torch.bool, device=rows.device)
        # samples with a verified success (rows of one sample solved side by side stop together)
        self.solved = torch.zeros(ctx.x64.shape[0], dtype=torch.bool, device=rows.device)

    def part(self, sl: slice) -> SimpleNamespace:
        """The per-row records of solver rows ``sl``."""
        return SimpleNamespace(best=self.best.rows(sl), budget_hit=self.budget_hit[sl])

    def __call__(self, info: Any) -> Tensor:
        self.calls += 1
        dev = self.rows.device
        upd = info.updated.to(dev)
        running = info.status.to(dev) == -1
        it = info.iteration.to(dev)
        # the margin at each iterate in the solver's own evaluation (objective -min(margin, clip))
        m_it = -info.f.to(dev) if self.margin_rows is not None else None
        stop = torch.zeros_like(upd)
        sel = upd
        if m_it is not None and CHECK_FAR_EVERY > 1:
            far = self.margin_rows & (m_it < -CHECK_FAR_MARGIN) & (it % CHECK_FAR_EVERY != 0)
            sel = upd & ~far
            self.deferred += (upd & far).sum()
        u = torch.nonzero(sel).flatten()
        self.checked += int(u.numel())
        # the margin of every updated row for the stall rule: the solver's on margin rows, the
        # checked one on the others (class and cross-entropy rows are never deferred, so every
        # updated one is checked now)
        m = None if m_it is None else m_it.to(torch.float64)
        if u.numel():
            z = info.x[u].to(torch.float64)
            img = self.problem.to_image(z)
            r = self.rows[u]
            if self.repair:
                img = _repair(self.ctx, r, img)
            c = _check(self.ctx, r, img)
            cur = self.best.rows(u)
            w = _better(c, cur.success, cur.distance, cur.margin)
            if bool(w.any()):
                uw = u[w]
                self.best.x[uw] = c.x[w]
                self.best.success[uw] = c.success[w]
                self.best.distance[uw] = c.distance[w]
                self.best.margin[uw] = c.margin[w]
            if self.stop_on_success:
                self.solved[r[c.success]] = True
            if m is not None:
                m = m.index_copy(0, u, torch.where(self.margin_rows[u], m[u], c.margin))
        if self.stop_on_success:
            # a success, or a row whose sample another row has solved (checked or not)
            stop = upd & self.solved[self.rows]
            if m is not None and STALL_ITERS > 0:
                stop |= self._stall(m, it, upd, running)
        if self.budget is not None:
            over = upd & running & ~stop & (it >= self.budget)
            self.budget_hit |= over
            stop |= over
        return stop

    def _stall(self, m: Tensor, it: Tensor, upd: Tensor, running: Tensor) -> Tensor:
        """``(k,)`` bool: of the rows updated now (``upd``), with margins ``m`` at iterations
        ``it``, those whose best margin is below ``-CHECK_FAR_MARGIN`` and has not
        risen by more than ``STALL_GAIN * max(1, |best|)`` for ``STALL_ITERS`` iterations (they
        are marked in :attr:`stalled`). The caller passes the solver's margin for margin rows and
        the checked margin (the judge's, at the repaired point) for class and cross-entropy rows.

        Why: a restart that has stopped making progress far from success rarely succeeds later. In
        the recorded trajectories of the default attack on the digits CNN (300 images, seed 0, at
        l-infinity 0.15, l2 0.75 and l1 1.5; ad hoc) no success came after such a stall of 20 or
        more iterations, which covered 30 % / 14 % / 5 % of the row-iterations. With the rule on
        margin rows only (25 iterations), over seeds 0-2, the attack broke 381 / 547 / 492 images
        against 382 / 547 / 491 without it, in 0.098 / 0.078 / 0.165 s per image at seed 0 against
        0.122 / 0.100 / 0.177 s (ad hoc, one run after the other). Extending it to the class and
        cross-entropy rows (with ``class_restarts=2``; 300 images, seeds 0-2, side by side) broke
        380 / 555 / 523 images against 381 / 555 / 524 and took 0.088-0.092 / 0.056-0.061 /
        0.197-0.203 s per image against 0.099-0.102 / 0.077-0.084 / 0.208-0.213 s. A stopped row's
        points are checked at the end of its solve like any other's.

        Why the solver's margin on margin rows: a row whose iterate is outside the ball often has
        its solver margin at the clip while the solver restores feasibility, and such rows still
        succeed later. Using the checked margin there too (300 images, seeds 0-2, side by side,
        ad hoc) broke 369 / 555 / 507 images against 380 / 555 / 523, in 0.053-0.054 /
        0.031-0.035 / 0.107-0.110 s per image against 0.082-0.085 / 0.054-0.056 / 0.181-0.187 s;
        counting a halving of the constraint violation as a rise as well, 371 / 555 / 513. An
        extrapolation of each row's rate of rise to its last possible iteration, with the solver's
        margin, changed neither the images broken nor the time (the slow rows sit at the clip).
        """
        it = it.long()
        m = torch.where(torch.isfinite(m), m, -math.inf)
        rise = upd & (m > self.m_best + STALL_GAIN * self.m_best.abs().clamp(min=1.0))
        rise |= upd & torch.isinf(self.m_best)  # the first finite margin of the row
        self.m_rise = torch.where(rise, it, self.m_rise)
        self.m_best = torch.where(upd, torch.maximum(self.m_best, m), self.m_best)
        stall = upd & running & (it - self.m_rise >= STALL_ITERS) & (self.m_best < -CHECK_FAR_MARGIN)
        self.stalled |= stall
        return stall


# ------------------------------------------------------------------------------------------------
@dataclass
class RunOutput:
    """Per-sample outcome of a protocol run (batch positions of the problem).

    ``x_adv (B, *shape)`` float64 selected point (clipped; the clean image where nothing ran),
    ``success (B,)`` verified by the in-run check, ``distance``, ``margin (B,)`` float64,
    ``status (B,)`` the solver code of the run that produced the selected point (:data:`NOT_RUN`
    where the solver never ran), ``iterations (B,)`` accepted iterations over all runs,
    ``restarts_used (B,)`` restarts run, ``continued (B,)`` bool, ``seconds``.
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    margin: Tensor
    status: Tensor
    iterations: Tensor
    restarts_used: Tensor
    continued: Tensor
    seconds: float


def _result_rows(res: Any, sl: slice) -> Any:
    """The parts of a :class:`ncvx_core.SolveResult` the protocol reads, restricted to rows ``sl``."""
    H = res.H_final
    return SimpleNamespace(final=SimpleNamespace(x=res.final.x[sl], mu=res.final.mu[sl]),
                           best=SimpleNamespace(x=res.best.x[sl]), status=res.status[sl], iters=res.iters[sl],
                           memory_plan=res.memory_plan,
                           H_final=tree_rows(H, sl) if isinstance(H, (LBFGSState, BFGSState)) else H)


def _store_rows(store: Any, rows: Tensor, part: Any, B: int) -> Any:
    """Write the rows of a (NamedTuple) H state into a batch-B store (created on first use).
    Returns None when the layouts do not match (e.g. the memory planner changed the storage)."""
    if store is None:  # tensor fields batched; flags (e.g. BFGSState.h0_identity) kept as they are
        store = type(part)(*(torch.zeros((B, *t.shape[1:]), dtype=t.dtype, device=t.device)
                             if isinstance(t, Tensor) else t for t in part))
    if type(store) is not type(part) or any(isinstance(s, Tensor) != isinstance(p, Tensor)
                                            or (isinstance(s, Tensor) and s.shape[1:] != p.shape[1:])
                                            for s, p in zip(store, part, strict=True)):
        return None
    for s, p in zip(store, part, strict=True):
        if isinstance(s, Tensor):
            s[rows] = p
    return store


#: how many classes of largest logit the linearised order ranks (the rest follow in logit order)
CLASS_ORDER_CANDIDATES = 9
CLASS_ORDERS = ("mixed", "linearised", "logit")


def check_class_order(class_order: Any) -> None:
    """ValueError naming ``class_order`` unless it is one of :data:`CLASS_ORDERS`."""
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {class_order!r}")


def rival_order(model64: nn.Module, x64: Tensor, y: Tensor, distance: Distance, *, how: str = "mixed",
                candidates: int = CLASS_ORDER_CANDIDATES) -> Tensor:
    """Rival classes per sample in the order the class restarts take them: ``(B, K - 1)`` long
    (the label excluded).

    ``how="logit"``: by clean logit, largest first. ``how="linearised"`` (for an :class:`Lp`
    distance): the ``candidates`` classes of largest logit are ranked by the first-order estimate
    of the distance to their decision boundary, ``(z_y - z_c) / ||grad_x (z_c - z_y)||_q`` at the
    clean input (``q`` the dual exponent of ``p``; ``q = inf`` for ``p <= 1``, where the nearest
    point of a hyperplane moves one coordinate), the estimate DeepFool and FAB step along; the
    other classes follow in logit order, and ties (and non-finite estimates) keep the logit order.
    One backward pass per candidate class. ``how="mixed"``: the two interleaved, linearised
    rank 0, logit rank 1, linearised rank 1, logit rank 2, ..., each class at its first place,
    except the class of logit rank 0, where the untargeted restart 0 usually ends, which comes
    last. Other distances use the logit order whatever ``how`` says.

    A solver started near ``x`` follows the class that is nearest at the start, which under l1 in
    particular is often not the class of the second-largest logit: on the standard digits CNN,
    of 6 images whose minimal l1 radius was 24-36 % above FAB's, the class FAB's point lands in
    came first in the linearised order for 5 (their logit ranks: 0, 1, 1, 3 and beyond 4).
    """
    check_class_order(how)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    if not isinstance(x64, Tensor) or not x64.is_floating_point() or x64.dim() < 2:
        raise ValueError(f"x64 must be a floating (B, ...) tensor, got "
                         f"{(x64.dtype, tuple(x64.shape)) if isinstance(x64, Tensor) else type(x64).__name__}")
    check_labels("y", y, x64.shape[0], None)
    y = y.to(x64.device)
    rows = torch.arange(x64.shape[0], device=x64.device)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x64.detach().clone().requires_grad_(True)
        z = model64(xg).to(torch.float64)
        if z.dim() != 2 or z.shape[0] != x64.shape[0] or z.shape[1] < 2:
            raise ValueError(f"model64 must return (B, K) logits with B = {x64.shape[0]} and K >= 2, got "
                             f"{tuple(z.shape)}")
        check_labels("y", y, x64.shape[0], z.shape[1])
        K = z.shape[1]
        zl = z.detach().scatter(1, y[:, None], -math.inf)
        order = zl.argsort(dim=1, descending=True)[:, : K - 1]
        c = min(int(candidates), K - 1)
        if how == "logit" or not isinstance(distance, Lp) or c < 2:
            return order.detach()
        q = math.inf if distance.p <= 1 else distance.dual_exponent()
        zy = z[rows, y]
        est = torch.empty(x64.shape[0], c, dtype=torch.float64, device=x64.device)
        for j in range(c):
            gap = z[rows, order[:, j]] - zy  # < 0 at a correctly classified input
            (g,) = torch.autograd.grad(gap.sum(), xg, retain_graph=j < c - 1)
            gn = torch.linalg.vector_norm(g.flatten(1).to(torch.float64), ord=q, dim=1)
            est[:, j] = (-gap.detach()) / gn
    est = torch.nan_to_num(est, nan=math.inf, posinf=math.inf).clamp(min=0)  # misclassified input: 0
    rank = torch.argsort(est, dim=1, stable=True)
    head = order[:, :c].gather(1, rank)
    lin = torch.cat([head, order[:, c:]], dim=1).detach()
    if how == "linearised":
        return lin
    # mixed: linearised rank 0, logit rank 1, linearised rank 1, logit rank 2, ... without repeats,
    # and logit rank 0 (where the untargeted restart 0 usually ends) last
    B = lin.shape[0]
    inter = torch.stack([lin[:, :K - 2], order[:, 1:K - 1]], dim=2).reshape(B, -1)
    inter = torch.cat([inter, lin], dim=1)
    seen = torch.zeros(B, K, dtype=torch.bool, device=lin.device)
    seen[rows, order[:, 0]] = True
    out = []
    for j in range(inter.shape[1]):
        c_j = inter[:, j]
        out.append(torch.where(~seen[rows, c_j], c_j, -1))
        seen[rows, c_j] = True
    out.append(order[:, 0])
    M = torch.stack(out, 1)
    keep = M >= 0
    pos = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : K - 1]
    return M.gather(1, pos).detach()


class _Protocol:
    def __init__(self, problem: Any, ctx: CheckContext, active: Tensor, *, kind: str, restarts: int,
                 restart_maxit: int, maxit: int, time_limit: float | None, seed: int, init: str,
                 init_scale: float, solver_options: dict[str, Any], class_restarts: int = 0,
                 parallel_restarts: int = 1, ce_restarts: int = 0, class_order: str = "mixed",
                 order: Tensor | None = None) -> None:
        self.problem = problem
        self.parallel = max(1, int(parallel_restarts))
        self.ctx = ctx
        self.kind = kind
        self.B = problem.batch_size
        dev = problem.x.device
        self.dev = dev
        self.active = active.to(dev).bool()
        self.restarts = int(restarts)
        self.restart_maxit = int(min(restart_maxit, maxit))
        self.maxit = int(maxit)
        self.time_limit = time_limit
        self.seed = int(seed)
        self.init = init
        self.init_scale = float(init_scale)
        self.opts = dict(solver_options)
        B = self.B
        self.t0 = time.monotonic()
        self.best = Candidate(ctx.x64.clone(), torch.zeros(B, dtype=torch.bool, device=dev),
                              torch.full((B,), math.inf, dtype=torch.float64, device=dev),
                              torch.full((B,), -math.inf, dtype=torch.float64, device=dev))
        self.status = torch.full((B,), NOT_RUN, dtype=torch.long, device=dev)
        self.iterations = torch.zeros(B, dtype=torch.long, device=dev)
        self.restarts_used = torch.zeros(B, dtype=torch.long, device=dev)
        self.continued = torch.zeros(B, dtype=torch.bool, device=dev)
        # continuation state of the selected restart
        self.cont_ok = torch.zeros(B, dtype=torch.bool, device=dev)
        self.cont_z = torch.zeros(B, problem.n_var, dtype=problem.x.dtype, device=dev)
        self.cont_mu = torch.ones(B, dtype=problem.x.dtype, device=dev)
        self.cont_status = torch.full((B,), NOT_RUN, dtype=torch.long, device=dev)
        self.cont_iters = torch.zeros(B, dtype=torch.long, device=dev)
        self.cont_H: Any = None
        self.cont_H_ok = True
        self.cont_m: int | None = None
        self.cont_rival = torch.full((B,), -1, dtype=torch.long, device=dev)
        self.class_restarts = 0
        self.class_order = class_order
        self.rank_shift = 0
        self.order: Tensor | None = None
        if class_restarts > 0 and ctx.target is None and hasattr(problem, "rival"):
            if order is None:
                order = rival_order(ctx.model64, ctx.x64, ctx.y, ctx.distance, how=class_order,
                                    candidates=max(CLASS_ORDER_CANDIDATES, int(class_restarts)))
            self.order = order.to(dev)
            K = self.order.shape[1] + 1
            # logit order: rank 0 is where the untargeted restart 0 usually ends, so restart r aims
            # at rank r; linearised order: restart r aims at the r-th nearest class (rank r - 1)
            # (rival_order falls back to the logit order for distances other than lp)
            self.rank_shift = 0 if class_order == "logit" or not isinstance(ctx.distance, Lp) else 1
            self.class_restarts = min(int(class_restarts), K - 1 - (1 - self.rank_shift))
        # the last ce_restarts restarts maximise the cross-entropy (never restart 0, nor a class
        # restart: those are asked for explicitly)
        self.ce_from = self.restarts
        if ce_restarts > 0 and kind == "max" and getattr(problem, "loss_name", None) == "margin":
            self.ce_from = max(1 + self.class_restarts, self.restarts - int(ce_restarts))

    def _rival(self, r: int, rows: Tensor) -> Tensor | None:
        """Rival classes of restart ``r`` (restarts 1 .. class_restarts aim at the runner-up
        classes of rank 1, 2, ...; rank 0 is where the untargeted restart 0 usually ends), or
        :data:`adv.problems.CE_ROW` for the cross-entropy restarts (the last ``ce_restarts``)."""
        if r >= self.ce_from:
            return torch.full((rows.numel(),), CE_ROW, dtype=torch.long, device=rows.device)
        if self.order is None or not (1 <= r <= self.class_restarts):
            return None
        return self.order[rows, r - self.rank_shift]

    def _margin_rows(self, rows: Tensor, rival: Tensor | None) -> Tensor | None:
        """Solver rows whose objective is ``-min(margin, clip)`` (max-loss with the margin loss, no
        rival class, no cross-entropy row), whose in-run checks :class:`_Halt` may defer; None: no row."""
        if self.kind != "max" or getattr(self.problem, "loss_name", None) != "margin":
            return None
        if rival is None:
            return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        return rival.to(rows.device) == -1

    def _restart_name(self, r: int, rival: Tensor | None) -> str:
        if rival is None:
            return f"{r}"
        if r >= self.ce_from:
            return f"{r} (cross-entropy)"
        if self.rank_shift == 0:
            return f"{r} (runner-up class of rank {r})"
        return f"{r} (rival class {r} of the {self.class_order} order)"

    def _solve(self, rows: Tensor, z0: Tensor, options: SolverOptions, rival: Tensor | None) -> Any:
        """One batched solve on the solver rows ``rows`` (sample positions, possibly repeated),
        with a rival class per row (``-1``: none) or None."""
        own = not options.globalAD
        return solve(self.problem.rows(rows, rival, gradients=own), z0, options)

    def _groups(self) -> list[list[int]]:
        """Restarts solved side by side: max-loss runs restart 0 alone (most breakable samples
        break there), then the others ``parallel_restarts`` at a time; min-distortion runs every
        restart, ``parallel_restarts`` at a time."""
        rs = list(range(self.restarts))
        head: list[list[int]] = []
        if self.kind == "max" and self.parallel > 1 and rs:
            head, rs = [[0]], rs[1:]
        return head + [rs[i:i + self.parallel] for i in range(0, len(rs), self.parallel)]

    # -- helpers -----------------------------------------------------------------------------------
    def remaining(self) -> float:
        if self.time_limit is None:
            return math.inf
        return self.time_limit - (time.monotonic() - self.t0)

    def _options(self, maxit: int, halt: _Halt, **extra: Any) -> SolverOptions:
        o = dict(self.opts)
        o.update(extra)
        o["maxit"] = int(maxit)
        o["halt_log_fn"] = halt
        rem = self.remaining()
        if math.isfinite(rem):
            o["maxclocktime"] = max(rem, 1e-3)
        o.setdefault("seed", self.seed)
        return SolverOptions(**o)

    def _candidates(self, rows: Tensor, res: Any, halt: _Halt) -> Candidate:
        cands = []
        for rec in (res.final, res.best):
            img = self.problem.to_image(rec.x.reshape(rec.x.shape[0], -1).to(torch.float64))
            if self.kind == "max":
                img = _repair(self.ctx, rows, img)
            cands.append(_check(self.ctx, rows, img))
        cands.append(halt.best)  # last: its placeholder rows never win a tie
        return _pick(cands)

    def _absorb(self, rows: Tensor, cand: Candidate, res: Any, halt: _Halt, *, continuation: bool,
                rival: Tensor | None = None) -> None:
        """Merge a solve's candidates into the per-sample best; remember its state for continuation."""
        cur_s, cur_d, cur_m = self.best.success[rows], self.best.distance[rows], self.best.margin[rows]
        w = _better(cand, cur_s, cur_d, cur_m)
        first = self.status[rows] == NOT_RUN
        take = w | first
        status = res.status.clone()
        status = torch.where(halt.budget_hit & (status == int(Status.USER_HALT)),
                             torch.full_like(status, int(Status.MAXIT)), status)
        tr = rows[take]
        if tr.numel():
            self.status[tr] = status[take]
        wr = rows[w]
        if wr.numel():
            self.best.x[wr] = cand.x[w]
            self.best.success[wr] = cand.success[w]
            self.best.distance[wr] = cand.distance[w]
            self.best.margin[wr] = cand.margin[w]
        if continuation:
            return
        # the restart that produced the selected candidate is the one to continue
        if tr.numel():
            self.cont_ok[tr] = True
            self.cont_z[tr] = res.final.x.reshape(res.final.x.shape[0], -1)[take].to(self.cont_z.dtype)
            self.cont_mu[tr] = res.final.mu[take].to(self.cont_mu.dtype)
            self.cont_status[tr] = status[take]
            self.cont_rival[tr] = -1 if rival is None else rival[take]
            self.cont_iters[tr] = res.iters[take]
            m = res.memory_plan.limited_mem_size if res.memory_plan is not None else None
            if self.cont_m is None:
                self.cont_m = m
            if self.cont_H_ok and m == self.cont_m and isinstance(res.H_final, (LBFGSState, BFGSState)):
                stored = _store_rows(self.cont_H, tr, tree_rows(res.H_final, take), self.B)
                if stored is None:
                    self.cont_H_ok = False
                else:
                    self.cont_H = stored
            else:
                if self.cont_H_ok:
                    logger.warning("PWCF: the inverse-Hessian storage changed between restarts; "
                                   "the continuation starts from a fresh approximation")
                self.cont_H_ok = False

    # -- phases ------------------------------------------------------------------------------------
    def _todo_restart(self) -> Tensor:
        if self.kind == "max":
            return self.active & ~self.best.success
        return self.active.clone()

    def run(self) -> RunOutput:
        label = "max-loss" if self.kind == "max" else "min-distortion"
        for group in self._groups():
            todo = self._todo_restart()
            rows = torch.nonzero(todo).flatten()
            if rows.numel() == 0:
                break
            if self.remaining() <= 0:
                logger.info("PWCF %s: time limit reached before restart %d", label, group[0])
                break
            k = rows.numel()
            z0s, rivals = [], []
            for r in group:
                if self.kind == "max":
                    # cross-entropy restarts start near the clean input: at a vertex of the
                    # l-infinity ball the clipped cross-entropy of a confident model is flat
                    # enough that the first line search fails
                    xs = _start_max(self.ctx, rows, r, self.seed, self.init, near=r >= self.ce_from)
                else:
                    xs = _start_min(self.ctx, rows, r, self.seed, self.init, self.init_scale,
                                    near=1 <= r <= self.class_restarts)
                z0s.append(self.problem.x0(xs.to(self.problem.x.dtype), rows))
                rivals.append(self._rival(r, rows))
            # the restarts of the group side by side: solver row j * k + i is restart group[j] of sample rows[i]
            rows_g = rows.repeat(len(group))
            z0 = torch.cat(z0s, dim=0)
            rival_g = None
            if any(rv is not None for rv in rivals):
                rival_g = torch.cat([torch.full((k,), -1, dtype=torch.long, device=rows.device) if rv is None
                                     else rv.to(rows.device) for rv in rivals])
            halt = _Halt(self.ctx, self.problem, rows_g, stop_on_success=self.kind == "max", budget=None,
                         repair=self.kind == "max", margin_rows=self._margin_rows(rows_g, rival_g))
            t = time.monotonic()
            res = self._solve(rows_g, z0, self._options(self.restart_maxit, halt), rival_g)
            self.restarts_used[rows] += len(group)
            self.iterations.index_add_(0, rows_g, res.iters.to(self.dev))
            for j in range(len(group)):  # merged in restart order, as if they had run one after the other
                sl = slice(j * k, (j + 1) * k)
                res_j, halt_j = _result_rows(res, sl), halt.part(sl)
                cand = self._candidates(rows, res_j, halt_j)
                self._absorb(rows, cand, res_j, halt_j, continuation=False, rival=rivals[j])
            names = ", ".join(self._restart_name(r, rivals[j]) for j, r in enumerate(group))
            logger.info("PWCF %s restart%s %s: %d samples, %.2f s, mean iterations %.1f; verified so far %d/%d",
                        label, "s" if len(group) > 1 else "", names, k, time.monotonic() - t,
                        float(res.iters.double().mean()), int((self.best.success & self.active).sum()),
                        int(self.active.sum()))
        self._continue(label)
        return RunOutput(self.best.x, self.best.success & self.active, self.best.distance, self.best.margin,
                         self.status, self.iterations, self.restarts_used, self.continued,
                         time.monotonic() - self.t0)

    def _continue(self, label: str) -> None:
        left = self.maxit - self.cont_iters
        todo = self.active & self.cont_ok & (self.cont_status == int(Status.MAXIT)) & (left > 0)
        if self.kind == "max":
            todo &= ~self.best.success
        rows = torch.nonzero(todo).flatten()
        if rows.numel() == 0:
            return
        if self.remaining() <= 0:
            logger.info("PWCF %s: time limit reached before the continuation", label)
            return
        budget = left[rows]
        rival = self.cont_rival[rows]
        halt = _Halt(self.ctx, self.problem, rows, stop_on_success=self.kind == "max", budget=budget,
                     repair=self.kind == "max", margin_rows=self._margin_rows(rows, rival))
        extra: dict[str, Any] = dict(mu0=self.cont_mu[rows].clone(), scaleH0=False)
        if self.cont_H_ok and self.cont_H is not None:
            H = tree_rows(self.cont_H, rows)
            if isinstance(H, LBFGSState):
                extra["limited_mem_warm_start"] = H
                if self.cont_m is not None:
                    extra["limited_mem_size"] = self.cont_m
            else:
                extra["H0"] = H.H
                extra["checkH0"] = False
                extra["limited_mem_size"] = 0
        else:
            extra["scaleH0"] = True
        t = time.monotonic()
        res = self._solve(rows, self.cont_z[rows].clone(), self._options(int(budget.max()), halt, **extra),
                          rival if bool((rival != -1).any()) else None)
        self.iterations[rows] += res.iters.to(self.dev)
        self.continued[rows] = True
        cand = self._candidates(rows, res, halt)
        self._absorb(rows, cand, res, halt, continuation=True)
        logger.info("PWCF %s continuation: %d samples, %.2f s, mean iterations %.1f; verified %d/%d",
                    label, rows.numel(), time.monotonic() - t, float(res.iters.double().mean()),
                    int((self.best.success & self.active).sum()), int(self.active.sum()))


def run_max_loss(problem: MaxLossProblem, ctx: CheckContext, active: Tensor, *, restarts: int, restart_maxit: int,
                 maxit: int, time_limit: float | None = None, seed: int = 0, init: str = "blend",
                 solver_options: dict[str, Any] | None = None, class_restarts: int = 0,
                 parallel_restarts: int = 1, ce_restarts: int = 0, class_order: str = "mixed") -> RunOutput:
    """Run the max-loss protocol (module docstring) on the samples where ``active``."""
    opts = merge_solver_options("max", solver_options)
    return _Protocol(problem, ctx, active, kind="max", restarts=restarts, restart_maxit=restart_maxit, maxit=maxit,
                     time_limit=time_limit, seed=seed, init=init, init_scale=0.0, solver_options=opts,
                     class_restarts=class_restarts, parallel_restarts=parallel_restarts,
                     ce_restarts=ce_restarts, class_order=class_order).run()


def run_min_distortion(problem: MinDistortionProblem, ctx: CheckContext, active: Tensor, *, restarts: int,
                       restart_maxit: int, maxit: int, time_limit: float | None = None, seed: int = 0,
                       init: str = "blend", init_scale: float = 0.01,
                       solver_options: dict[str, Any] | None = None, class_restarts: int = 0,
                       parallel_restarts: int = 1, class_order: str = "mixed",
                       order: Tensor | None = None) -> RunOutput:
    """Run the min-distortion protocol (module docstring) on the samples where ``active``.

    ``order``: the ``(B, K - 1)`` rival classes of :func:`rival_order` when the caller has them
    already (None: computed here with ``class_order`` if there are class restarts)."""
    opts = merge_solver_options("min", solver_options)
    return _Protocol(problem, ctx, active, kind="min", restarts=restarts, restart_maxit=restart_maxit, maxit=maxit,
                     time_limit=time_limit, seed=seed, init=init, init_scale=init_scale,
                     solver_options=opts, class_restarts=class_restarts, parallel_restarts=parallel_restarts,
                     class_order=class_order, order=order).run()


def refine_radius(ctx: CheckContext, rows: Tensor, x_adv: Tensor, steps: int) -> Tensor:
    """Bisection on ``s`` in ``[0, 1]`` along ``x + s (x_adv - x)`` for verified points: returns the
    smallest-``s`` point found that is still misclassified (never worse than ``x_adv``)."""
    if steps <= 0 or rows.numel() == 0:
        return x_adv
    with torch.no_grad():
        x64 = ctx.x64[rows]
        delta = x_adv.to(torch.float64) - x64
        shape = (-1, *([1] * (delta.dim() - 1)))
        lo = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        hi = torch.ones_like(lo)
        for _ in range(steps):
            mid = (lo + hi) / 2
            c = _check(ctx, rows, x64 + delta * mid.reshape(shape))
            lo = torch.where(c.success, lo, mid)
            hi = torch.where(c.success, mid, hi)
        return x64 + delta * hi.reshape(shape)
