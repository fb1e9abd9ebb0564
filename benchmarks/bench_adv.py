"""Robustness evaluation on the embedded digits CNNs (issue 4): PWCF against APGD, FAB, AutoAttack
and two perceptual attacks (an LPA-style penalty attack and PPGD).

Models and data come from :mod:`adv.zoo` (scikit-learn's bundled digits, CNNs trained on first use
and cached; nothing is downloaded). A fixed subset is attacked: the first ``--n`` test images that
the model classifies correctly. Every success in every table is the verdict of :func:`adv.judge`
(float64, point clipped to the box) on the point the attack returned; a *violation* is a returned
point that the model misclassifies but that lies outside the budget (the attack would count it
as a success, the judge does not).

Sections (``--sections``, default all):

* ``max``: per threat model (l-infinity, l2, l1 at ``--eps-*``), robust accuracy under our APGD
  (CE and margin, 100 iterations, 1 restart), PWCF-margin with :func:`adv.attack`'s default
  protocol, their union (one :func:`adv.evaluate` call runs all three), torchattacks' APGD
  (CE and DLR, 100 steps; l-infinity and l2 only, it has no l1), torchattacks'
  ``AutoAttack(version="standard")`` as shipped (its components run 10 steps) and the same four
  attacks with AutoAttack's published budget (100 iterations for APGD, APGD-T and FAB-T, 5000
  Square queries), composed from torchattacks' classes.
* ``min``: minimal distortion (l2, l1, l-infinity): :func:`adv.min_distortion` (default protocol)
  against torchattacks' FAB used as a minimal-distortion attack (untargeted, budget far above any
  radius, 100 steps, ``--fab-restarts`` runs: the first from the clean point, the others from
  random starts; per image the smallest radius the judge confirms). torchattacks' ``FAB.perturb``
  fails for l1 (a variable is only set for l-infinity and l2), so the runs call
  ``FAB.attack_single_run`` directly for every norm. Also against FMN (Pintor et al., "Fast
  Minimum-norm Adversarial Attacks through Adaptive Norm Constraints", NeurIPS 2021) as
  implemented in adv-lib (optional extra, ``pip install --no-deps adv-lib``): ``--fmn-steps``
  steps (default 1000), one run per initial step size in ``--fmn-alphas``, the smallest judged
  radius per image.
* ``perceptual``: :class:`adv.Perceptual` on the classifier's own ReLU maps (unsquared), PWCF
  max-loss attack against an LPA-style penalty attack written here (Laidlaw, Singla, Feizi,
  "Perceptual Adversarial Robustness", ICLR 2021: maximise ``margin - lambda max(0, d - eps)`` by
  normalised gradient ascent with a decaying step, ``lambda`` multiplied by 10 after each phase,
  no projection), reported for its final iterate (as Fast-LPA returns it) and for the best
  feasible iterate seen along its path (a stronger variant); and against PPGD (Perceptual
  Projected Gradient Descent, the same paper's section 4), also written here: ``--ppgd-steps``
  steps (default 40) of the step maximising the linearised margin gain under a linearised
  perceptual step bound ``||J delta|| <= eta`` (``J`` the Jacobian of the distance's feature
  embedding; ``(J^T J)^{-1} grad`` by ``--ppgd-cg`` conjugate-gradient iterations, default 5, of
  Jacobian-vector and vector-Jacobian products), ``eta = --ppgd-step-scale * eps / steps``
  (default 2), each step followed by a projection onto the ball (``--ppgd-proj-iters`` Newton
  steps on the linearised distance, default 10, then a bisection towards the clean point), so
  every iterate is feasible; reported for its final iterate and for the best (largest margin)
  misclassified iterate along its path.

Run from the repository root::

    .venv/bin/python benchmarks/bench_adv.py            # full: 100 images (50 for min / perceptual), ~20 min
    .venv/bin/python benchmarks/bench_adv.py --quick    # 20 images (10), smaller baselines, ~8 min

Results go to ``benchmarks/results/adv_cpu.md`` (``adv_quick_cpu.md`` with ``--quick``) unless
``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_common_args, fmt, log, md_table, out_path, setup, write_results  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import adv  # noqa: E402
import adv.api  # noqa: E402
import adv.runner  # noqa: E402
from adv.distances import _PERCEPTUAL_EPS  # noqa: E402
from adv.losses import margin as margin_loss  # noqa: E402
from adv.runner import model_as  # noqa: E402
from adv.zoo import RECIPE_VERSION, default_model, load_digits  # noqa: E402

try:  # optional baseline (install with --no-deps: its torchvision dependency would replace torch)
    import torchattacks as ta
except Exception as exc:  # noqa: BLE001  (any import failure just disables the baseline)
    ta = None
    TA_ERROR = f"{type(exc).__name__}: {exc}"
else:
    TA_ERROR = ""



def _load_fmn() -> tuple[Any, str]:
    """FMN (Pintor et al., NeurIPS 2021) from adv-lib, an optional extra (install with --no-deps:
    its torchvision dependency would replace torch). Only the attack's own module is loaded: the
    package's ``attacks`` namespace imports torchvision-based parts."""
    try:
        import importlib.util

        import adv_lib  # noqa: F401
        import adv_lib.utils.losses  # noqa: F401
        import adv_lib.utils.projections  # noqa: F401

        path = Path(adv_lib.__file__).parent / "attacks" / "fast_minimum_norm.py"
        spec = importlib.util.spec_from_file_location("adv_lib_fast_minimum_norm", path)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod.fmn, f"adv-lib {adv_lib.__version__}"
    except Exception as exc:  # noqa: BLE001  (any failure just disables the baseline)
        return None, f"{type(exc).__name__}: {exc}"


FMN, FMN_INFO = _load_fmn()
FMN_NORMS = {"linf": math.inf, "l2": 2, "l1": 1}
DIST_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}
FAB_BIG = {"linf": 1.0, "l2": 8.0, "l1": 64.0}  # far above any radius on 8x8 images in [0, 1]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def subset(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` test images (split order) the model classifies correctly."""
    x, y = load_digits("test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n].contiguous(), y[ok][:n].contiguous()


def accuracy(model: nn.Module) -> float:
    x, y = load_digits("test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def stats(d: Tensor, mask: Tensor) -> tuple[float | None, float | None]:
    v = d[mask]
    if v.numel() == 0:
        return None, None
    return float(v.mean()), float(v.median())


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def judged_row(name: str, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, dist: Any, eps: float,
               seconds: float) -> tuple[list[Any], Tensor]:
    """One table row for a baseline that returns points: judge them, count violations."""
    v = adv.judge(model, x, y, x_adv.to(x.dtype), dist, eps)
    viol = int((v.finite & v.misclassified & ~v.within).sum())
    box = int(((x_adv < -1e-6) | (x_adv > 1 + 1e-6)).reshape(x.shape[0], -1).any(dim=1).sum())
    mean, med = stats(v.distance, v.success)
    n = x.shape[0]
    row = [name, pct(1 - v.success_rate), int(v.success.sum()), viol, box, mean, med, seconds / n]
    return row, v.success


def status_hist(status: Tensor) -> str:
    c = collections.Counter(int(s) for s in status.tolist())
    return " ".join(f"{k}:{c[k]}" for k in sorted(c))


# ----------------------------------------------------------------------------------------------
# LPA-style penalty attack (written from Laidlaw et al. 2021, section 5; no code copied)
# ----------------------------------------------------------------------------------------------
def lpa_penalty(model: nn.Module, dist: Any, x: Tensor, y: Tensor, eps: float, *, phases: int = 5,
                steps: int = 40, lam0: float = 0.01, step0: float | None = None, seed: int = 0
                ) -> tuple[Tensor, Tensor]:
    """Projection-free Lagrangian perceptual attack.

    Maximises ``margin(x') - lambda max(0, d(x', x) - eps)`` over ``x' in [0, 1]^n`` by gradient
    ascent with l2-normalised steps; ``lambda = lam0 10^k`` in phase ``k`` (``phases`` phases of
    ``steps`` steps); the step decays linearly from ``step0`` to ``step0 / 10`` within each phase
    (default ``step0``: the l2 size of a perturbation that reaches ``d = eps`` along the first
    gradient, estimated per sample). Start: ``x + N(0, 0.01^2)`` clipped to the box.

    Returns ``(final, best_feasible)``: the final iterate (what the projection-free attack returns)
    and, per sample, the feasible misclassified iterate of largest margin seen (the final iterate
    where there is none).
    """
    g = torch.Generator().manual_seed(seed)
    x = x.detach().to(torch.float64)
    B = x.shape[0]
    col = (B,) + (1,) * (x.dim() - 1)
    xa = (x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    m64 = model_as(model, torch.float64)
    best = xa.clone()
    best_m = torch.full((B,), -math.inf, dtype=torch.float64)
    if step0 is None:
        # step size scale: how far (l2) one has to move along the gradient to reach d = eps,
        # from a short probe step (d is ~linear in the step for small steps)
        xv = xa.clone().requires_grad_(True)
        with torch.enable_grad():
            mval = margin_loss(m64(xv), y)
            (gr,) = torch.autograd.grad(mval.sum(), xv)
        u = gr / gr.reshape(B, -1).norm(dim=1).clamp(min=1e-12).reshape(col)
        probe = 0.05
        with torch.no_grad():
            dp = dist((x + probe * u).clamp(0, 1), x).to(torch.float64).clamp(min=1e-12)
        step0_v = (probe * eps / dp).clamp(max=1.0)
    else:
        step0_v = torch.full((B,), float(step0), dtype=torch.float64)
    for k in range(phases):
        lam = lam0 * 10.0 ** k
        for i in range(steps):
            eta = step0_v * (1.0 - 0.9 * i / max(steps - 1, 1))
            xv = xa.clone().requires_grad_(True)
            with torch.enable_grad():
                mval = margin_loss(m64(xv), y)
                d = dist(xv, x).to(torch.float64)
                obj = mval - lam * torch.relu(d - eps)
                (gr,) = torch.autograd.grad(obj.sum(), xv)
            with torch.no_grad():
                feas = (d <= eps) & (mval >= 0)
                better = feas & (mval > best_m)
                best = torch.where(better.reshape(col), xv.detach(), best)
                best_m = torch.where(better, mval.detach(), best_m)
                nrm = gr.reshape(B, -1).norm(dim=1).clamp(min=1e-12).reshape(col)
                xa = (xa + eta.reshape(col) * gr / nrm).clamp(0, 1)
    with torch.no_grad():
        mval = margin_loss(m64(xa), y)
        d = dist(xa, x).to(torch.float64)
        feas = (d <= eps) & (mval >= 0)
        better = feas & (mval > best_m)
        best = torch.where(better.reshape(col), xa, best)
        found = torch.isfinite(best_m) | better
        best = torch.where(found.reshape(col), best, xa)
    return xa, best


# ----------------------------------------------------------------------------------------------
# PPGD (written from Laidlaw, Singla, Feizi 2021, section 4; no code copied)
# ----------------------------------------------------------------------------------------------
def perceptual_embedding(dist: Any, x: Tensor) -> Tensor:
    """The feature embedding ``phi`` of an unsquared :class:`adv.Perceptual` distance, ``(B, ...) -> (B, m)``.

    ``phi(x)`` concatenates, over the feature maps ``l``, the unit-normalised channel vectors
    ``u_l(x)`` (each position's channel vector divided by its l2 norm + 1e-10, as
    :class:`adv.Perceptual` does) divided by ``sqrt(H_l W_l)``, flattened, so that
    ``dist(x, x') = ||phi(x) - phi(x')||_2`` exactly (the distance is a mean over positions of
    squared channel differences, summed over maps).
    """
    if getattr(dist, "squared", False):
        raise ValueError("perceptual_embedding needs the unsquared distance (Perceptual(squared=False))")
    maps = dist.features(x)
    if isinstance(maps, Tensor):
        maps = [maps]
    parts = []
    for f in maps:
        f = f.reshape(f.shape[0], f.shape[1], -1)  # (B, C, P)
        u = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + _PERCEPTUAL_EPS)
        parts.append((u / math.sqrt(f.shape[2])).reshape(f.shape[0], -1).to(x.dtype))
    return torch.cat(parts, dim=1)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row inner product of two ``(B, ...)`` tensors, ``(B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _col(v: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcastable against ``like``."""
    return v.reshape((v.shape[0],) + (1,) * (like.dim() - 1))


class PerceptualLinearisation:
    """Jacobian products of :func:`perceptual_embedding` at a point ``x0`` (``(B, ...)``), batched.

    One forward pass of ``phi`` at ``x0`` builds the graph; ``vjp(r) = J^T r`` is one backward pass
    through it, and ``jvp(w) = J w`` uses the double-backward trick (``J^T u`` is linear in a dummy
    ``u``, built once with ``create_graph=True``; its vector-Jacobian product with ``w`` is ``J w``).
    ``gram(w) = J^T J w`` is one of each. Rows never mix: ``phi``'s row ``b`` depends on the input
    row ``b`` only (the digits CNN has no batch-norm), and every product is a gradient of a sum of
    per-row terms.
    """

    def __init__(self, dist: Any, x0: Tensor) -> None:
        self.x = x0.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            self.phi = perceptual_embedding(dist, self.x)
            self.u = torch.zeros_like(self.phi, requires_grad=True)
            (self.jtu,) = torch.autograd.grad(self.phi, self.x, grad_outputs=self.u, create_graph=True)

    def jvp(self, w: Tensor) -> Tensor:
        """``J w``: ``(B, ...) -> (B, m)``."""
        (out,) = torch.autograd.grad(self.jtu, self.u, grad_outputs=w.detach(), retain_graph=True)
        return out

    def vjp(self, r: Tensor) -> Tensor:
        """``J^T r``: ``(B, m) -> (B, ...)``."""
        (out,) = torch.autograd.grad(self.phi, self.x, grad_outputs=r.detach(), retain_graph=True)
        return out

    def gram(self, w: Tensor) -> Tensor:
        """``J^T J w``: ``(B, ...) -> (B, ...)`` (one JVP, one VJP)."""
        return self.vjp(self.jvp(w))


def cg_solve(matvec: Any, b: Tensor, damping: Tensor, iters: int) -> Tensor:
    """Batched conjugate gradient for ``(A + damping I) v = b`` from ``v = 0``, ``iters`` iterations.

    ``matvec(w) = A w`` on ``(B, ...)`` tensors (``A`` symmetric positive semi-definite per row);
    ``damping`` is ``(B,)``; every scalar (step, conjugation coefficient) is per row. A row whose
    residual or curvature vanishes stops moving (its step is 0).
    """
    lam = _col(damping.to(b.dtype), b)
    v = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = _rowdot(r, r)
    for _ in range(iters):
        ap = matvec(p) + lam * p
        pap = _rowdot(p, ap)
        ok = (pap > 0) & (rs > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        v = v + _col(alpha, b) * p
        r = r - _col(alpha, b) * ap
        rs_new = _rowdot(r, r)
        beta = torch.where(ok, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + _col(beta, b) * p
        rs = rs_new
    return v


def ppgd_delta(lin: PerceptualLinearisation, v: Tensor, eta: Tensor | float) -> Tensor:
    """The step ``eta v / ||J v||_2`` per row (0 where ``J v`` vanishes).

    With ``v = (J^T J)^{-1} g`` this maximises ``g . delta`` subject to ``||J delta||_2 <= eta``:
    ``g . w = <J v, J w> <= ||J v|| ||J w||`` (Cauchy-Schwarz in the ``J^T J`` inner product).
    """
    nrm = lin.jvp(v).reshape(v.shape[0], -1).norm(dim=1)
    eta_t = torch.as_tensor(eta, dtype=v.dtype).expand(v.shape[0])
    scale = torch.where(nrm > 1e-300, eta_t / torch.where(nrm > 1e-300, nrm, torch.ones_like(nrm)),
                        torch.zeros_like(nrm))
    return _col(scale, v) * v


def ppgd_damping(lin: PerceptualLinearisation, like: Tensor, rel: float, gen: torch.Generator) -> Tensor:
    """``rel`` times an estimate of the mean diagonal of ``J^T J`` per row: ``||J z||^2 / n`` for one
    Rademacher probe ``z`` (Hutchinson's trace estimator, unbiased for ``trace(J^T J) / n``)."""
    if rel <= 0:
        return torch.zeros(like.shape[0], dtype=like.dtype)
    z = torch.randint(0, 2, like.shape, generator=gen).to(like.dtype) * 2 - 1
    n = like[0].numel()
    return rel * lin.jvp(z).pow(2).reshape(like.shape[0], -1).sum(dim=1) / n


def ppgd_project(dist: Any, x: Tensor, xa: Tensor, eps: float, *, iters: int = 10, overshoot: float = 1e-4,
                 halvings: int = 20, out_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Bring every row of ``xa`` (float64, in ``[0, 1]``) back into ``{x' : dist(x', x) <= eps}``.

    Rows already inside are untouched. For the others, up to ``iters`` Newton steps on the
    linearised distance, ``x' <- clip(x' - (d - eps (1 - overshoot)) grad_d / ||grad_d||^2, 0, 1)``
    (each aims slightly inside the ball); rows still outside then fall back to a bisection
    (``halvings`` halvings) on the segment from ``x`` (feasible, ``d = 0``) to the current point,
    keeping the feasible end, so the result is always inside the ball. When ``out_dtype`` is given
    (the dtype the points are returned in), every candidate is rounded to it before it is measured,
    so the rounded point is the one proven feasible.

    Returns ``(points, distances)`` (float64).
    """
    if out_dtype is None or out_dtype == torch.float64:
        def rnd(t: Tensor) -> Tensor:
            return t
    else:
        def rnd(t: Tensor) -> Tensor:
            return t.to(out_dtype).to(torch.float64)
    xa = rnd(xa.detach().clamp(0, 1))
    with torch.no_grad():
        d = dist(xa, x).to(torch.float64)
    for _ in range(iters):
        out = d > eps
        if not bool(out.any()):
            break
        idx = out.nonzero().squeeze(1)
        xv = xa[idx].clone().requires_grad_(True)
        with torch.enable_grad():
            dv = dist(xv, x[idx]).to(torch.float64)
            (gd,) = torch.autograd.grad(dv.sum(), xv)
        with torch.no_grad():
            gn2 = gd.reshape(idx.numel(), -1).pow(2).sum(dim=1).clamp(min=1e-300)
            step = (dv.detach() - eps * (1.0 - overshoot)) / gn2
            new = rnd((xv.detach() - _col(step, gd) * gd).clamp(0, 1))
            xa = xa.index_copy(0, idx, new)
            d = d.index_copy(0, idx, dist(new, x[idx]).to(torch.float64))
    out = d > eps
    if bool(out.any()):
        idx = out.nonzero().squeeze(1)
        base, dirn = x[idx], xa[idx] - x[idx]
        lo = torch.zeros(idx.numel(), dtype=torch.float64)
        hi = torch.ones(idx.numel(), dtype=torch.float64)
        with torch.no_grad():
            for _ in range(halvings):
                mid = 0.5 * (lo + hi)
                ok = dist(rnd(base + _col(mid, dirn) * dirn), base).to(torch.float64) <= eps
                lo = torch.where(ok, mid, lo)
                hi = torch.where(ok, hi, mid)
            new = rnd(base + _col(lo, dirn) * dirn)
            xa = xa.index_copy(0, idx, new)
            d = d.index_copy(0, idx, dist(new, base).to(torch.float64))
    return xa, d


def ppgd(model: nn.Module, dist: Any, x: Tensor, y: Tensor, eps: float, *, steps: int = 40, cg_iters: int = 5,
         step_scale: float = 2.0, proj_iters: int = 10, damping: float = 1e-6, seed: int = 0
         ) -> tuple[Tensor, Tensor]:
    """Perceptual Projected Gradient Descent (Laidlaw et al. 2021, section 4), batched, float64.

    ``dist`` must be an unsquared :class:`adv.Perceptual` whose ``features`` run in float64 (a
    float64 copy of the model). Start: ``x + N(0, 0.01^2)`` clipped to the box, projected. Each of
    the ``steps`` steps, per row:

    1. ``g`` = gradient of the margin loss (positive = misclassified) at the iterate;
    2. ``v`` ~ ``(J^T J + lambda I)^{-1} g`` by ``cg_iters`` conjugate-gradient iterations,
       ``J`` the Jacobian of :func:`perceptual_embedding` at the iterate (products by
       :class:`PerceptualLinearisation`), ``lambda = damping`` x the mean diagonal of ``J^T J``
       (one-probe Hutchinson estimate, :func:`ppgd_damping`): a relative Tikhonov term that only
       guards the solve against a singular ``J^T J``;
    3. the step ``delta = eta v / ||J v||`` (the maximiser of ``g . delta`` over
       ``||J delta|| <= eta`` when the solve is exact), ``eta = step_scale eps / steps``
       (the paper's practice of a step proportional to ``eps / T``; the default 2 lets the path
       reach the boundary by half-way and then move along it); ``x' = clip(x' + delta, 0, 1)``;
    4. the projection :func:`ppgd_project` (``proj_iters`` Newton steps, then bisection).

    Returns ``(final, best_feasible)`` in ``x``'s dtype, every point inside the ball (after the
    rounding to ``x``'s dtype): the final iterate and, per sample, the misclassified iterate of
    largest margin seen (the final iterate where there is none).
    """
    gen = torch.Generator().manual_seed(seed)
    out_dtype = x.dtype
    x = x.detach().to(torch.float64)
    B = x.shape[0]
    col = (B,) + (1,) * (x.dim() - 1)
    m64 = model_as(model, torch.float64)
    eta = step_scale * eps / steps
    xa = (x + 0.01 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    xa, d = ppgd_project(dist, x, xa, eps, iters=proj_iters, out_dtype=out_dtype)
    best = xa.clone()
    best_m = torch.full((B,), -math.inf, dtype=torch.float64)

    def record(pts: Tensor, mval: Tensor, dval: Tensor) -> None:
        nonlocal best, best_m
        better = (dval <= eps) & (mval >= 0) & (mval > best_m)
        best = torch.where(better.reshape(col), pts, best)
        best_m = torch.where(better, mval, best_m)

    for _ in range(steps):
        xv = xa.clone().requires_grad_(True)
        with torch.enable_grad():
            mval = margin_loss(m64(xv), y)
            (g,) = torch.autograd.grad(mval.sum(), xv)
        record(xa, mval.detach(), d)
        lin = PerceptualLinearisation(dist, xa)
        lam = ppgd_damping(lin, xa, damping, gen)
        v = cg_solve(lin.gram, g, lam, cg_iters)
        delta = ppgd_delta(lin, v, eta)
        del lin
        xa = (xa + delta).clamp(0, 1)
        xa, d = ppgd_project(dist, x, xa, eps, iters=proj_iters, out_dtype=out_dtype)
    with torch.no_grad():
        mval = margin_loss(m64(xa), y)
    record(xa, mval, d)
    found = torch.isfinite(best_m)
    best = torch.where(found.reshape(col), best, xa)
    return xa.to(out_dtype), best.to(out_dtype)


def aa_published(model: nn.Module, norm: str, eps: float, steps: int, queries: int, seed: int) -> Any:
    """AutoAttack's standard components at the published budget (APGD-CE, APGD-T, FAB-T with
    ``steps`` iterations, Square with ``queries`` queries), composed from torchattacks' classes;
    ``norm`` is ``"Linf"`` or ``"L2"``."""
    return ta.MultiAttack([
        ta.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
        ta.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, n_classes=10, seed=seed),
        ta.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, multi_targeted=True, n_classes=10, seed=seed),
        ta.Square(model, norm=norm, eps=eps, n_queries=queries, n_restarts=1, seed=seed),
    ])


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def section_max(model: nn.Module, x: Tensor, y: Tensor, dist_name: str, eps: float, args: argparse.Namespace,
                summary: dict[str, Any]) -> list[str]:
    n = x.shape[0]
    log(f"[max] {dist_name} eps={eps}: adv.evaluate (apgd-ce, apgd-margin, pwcf-margin) on {n} images")
    captured: list[Any] = []
    orig = adv.api.attack

    def spy(*a: Any, **k: Any) -> Any:  # records PWCF's own diagnostics; changes nothing
        r = orig(*a, **k)
        captured.append(r)
        return r

    adv.api.attack = spy
    try:
        rep = adv.evaluate(model, x, y, dist_name, eps, attacks=("apgd-ce", "apgd-margin", "pwcf-margin"),
                           seed=args.seed)
    finally:
        adv.api.attack = orig
    pw = captured[-1] if captured else None
    rows = []
    succ_all = rep.union_success.clone()
    names = {"apgd-ce": "adv.apgd CE (100 it)", "apgd-margin": "adv.apgd margin (100 it)",
             "pwcf-margin": "PWCF margin (adv.attack defaults)"}
    for a in rep.attacks:
        r, _ = judged_row(names[a], model, x, y, rep.x_adv[a], dist_name, eps, rep.seconds[a])
        rows.append(r)
    mean, med = stats(torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool))
    rows.append(["union of the three (adv.evaluate)", pct(rep.robust_accuracy["union"]), int(rep.union_success.sum()),
                 "-", "-", "-", "-", sum(rep.seconds.values()) / n])
    ra = {a: rep.robust_accuracy[a] for a in rep.attacks}
    ra["union"] = rep.robust_accuracy["union"]
    extra_notes = []
    if pw is not None:
        extra_notes.append(f"PWCF diagnostics: status codes {status_hist(pw.status)} (-1: not run); mean iterations "
                           f"{float(pw.iterations.double().mean()):.0f}; restarts used {status_hist(pw.restarts_used)}; "
                           f"continued {int(pw.continued.sum())}.")
    aa_rows = []
    if ta is not None and dist_name in ("linf", "l2"):
        norm = DIST_NAMES[dist_name]
        for loss in ("ce", "dlr"):
            log(f"[max] torchattacks APGD-{loss} {dist_name}")
            atk = ta.APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, loss=loss, seed=args.seed)
            t = time.perf_counter()
            xa = atk(x, y)
            r, s = judged_row(f"torchattacks APGD-{loss.upper()} (100 steps)", model, x, y, xa, dist_name, eps,
                              time.perf_counter() - t)
            rows.append(r)
            ra[f"ta-apgd-{loss}"] = 1 - float(s.double().mean())
            succ_all |= s
        if not args.no_autoattack:
            log(f"[max] torchattacks AutoAttack standard {dist_name}")
            atk = ta.AutoAttack(model, norm=norm, eps=eps, version="standard", n_classes=10, seed=args.seed)
            t = time.perf_counter()
            xa = atk(x, y)
            r, s = judged_row("torchattacks AutoAttack standard (as shipped: 10 steps)", model, x, y, xa, dist_name,
                              eps, time.perf_counter() - t)
            aa_rows.append(r)
            succ_all |= s
            summary.setdefault("aa_time", {})[dist_name] = r[-1]
            log(f"[max] AutoAttack standard components at the published budget {dist_name}")
            steps = args.aa_steps
            atk = aa_published(model, norm, eps, steps, args.square_queries, args.seed)
            t = time.perf_counter()
            xa = atk(x, y)
            r, s = judged_row(f"AutoAttack standard components, {steps} it / {args.square_queries} queries", model,
                              x, y, xa, dist_name, eps, time.perf_counter() - t)
            aa_rows.append(r)
            succ_all |= s
            summary.setdefault("aa100_time", {})[dist_name] = r[-1]
    elif ta is None:
        extra_notes.append(f"torchattacks not importable ({TA_ERROR}): its baselines are skipped.")
    else:
        extra_notes.append("torchattacks' APGD and AutoAttack support only l-infinity and l2: no torchattacks "
                           "row for l1.")
    rows.extend(aa_rows)
    rows.append(["union of every attack above", pct(1 - float(succ_all.double().mean())), int(succ_all.sum()),
                 "-", "-", "-", "-", "-"])
    summary.setdefault("max", {})[dist_name] = dict(eps=eps, robust=ra, pwcf_time=rows[2][-1])
    head = ["attack", "robust accuracy", "broken", "violations", "box violations", "mean distance (broken)",
            "median distance (broken)", "s / image"]
    return [f"### {dist_name}, eps = {eps}\n", md_table(head, rows)] + [f"- {s}\n" for s in extra_notes]


def fab_min(model: nn.Module, x: Tensor, y: Tensor, dist_name: str, restarts: int, steps: int, seed: int
            ) -> tuple[Tensor, float]:
    """FAB as a minimal-distortion attack; the smallest judged radius per image over the runs."""
    n = x.shape[0]
    atk = ta.FAB(model, norm=DIST_NAMES[dist_name], eps=FAB_BIG[dist_name], steps=steps, n_restarts=1,
                 n_classes=10, seed=seed)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    torch.manual_seed(seed)
    t = time.perf_counter()
    for r in range(restarts):
        with torch.no_grad():
            xa = atk.attack_single_run(x.clone(), y.clone(), use_rand_start=r > 0)
        best = torch.minimum(best, judged_radius(model, x, y, xa, dist_name))
    return best, time.perf_counter() - t


def judged_radius(model: nn.Module, x: Tensor, y: Tensor, xa: Tensor, dist_name: str) -> Tensor:
    """The judge's distance of each returned point that the model misclassifies, inf elsewhere."""
    v = adv.judge(model, x, y, xa.detach().to(x.dtype), dist_name, math.inf)
    return torch.where(v.misclassified & v.finite, v.distance, torch.full_like(v.distance, math.inf))


def baseline_row(rows: list[list[Any]], name: str, radius: Tensor, secs_per_image: float) -> Tensor:
    """Append a baseline's table row (found, mean and median radius, time); returns its found mask."""
    found = torch.isfinite(radius)
    mean, med = stats(radius, found)
    rows.append([name, int(found.sum()), mean, med, secs_per_image])
    return found


def paired(ours: Tensor, theirs: Tensor, found: Tensor) -> dict[str, Any]:
    """Radii of two methods on the images both found: means, ratio, how often ours is smaller /
    larger by more than 0.1 %, mean paired difference."""
    mo, _ = stats(ours, found)
    mt, _ = stats(theirs, found)
    diff = (ours - theirs)[found]
    rel = diff / theirs[found]
    return dict(n=int(found.sum()), ours=mo, theirs=mt, ratio=(mo / mt if mo and mt else None),
                smaller=int((rel < -1e-3).sum()), larger=int((rel > 1e-3).sum()),
                diff=float(diff.mean()) if diff.numel() else None)


def fmn_min(model: nn.Module, x: Tensor, y: Tensor, dist_name: str, steps: int, alphas: list[float]
            ) -> tuple[Tensor, float]:
    """FMN as run by its library, once per initial step size; the smallest judged radius per image."""
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    t = time.perf_counter()
    for a in alphas:
        xa = FMN(model, x.clone(), y.clone(), norm=FMN_NORMS[dist_name], steps=steps, α_init=a)
        best = torch.minimum(best, judged_radius(model, x, y, xa, dist_name))
    return best, time.perf_counter() - t


def section_min(model: nn.Module, x: Tensor, y: Tensor, dist_name: str, args: argparse.Namespace,
                summary: dict[str, Any]) -> list[str]:
    n = x.shape[0]
    log(f"[min] {dist_name}: adv.min_distortion on {n} images")
    t = time.perf_counter()
    res = adv.min_distortion(model, x, y, dist_name, seed=args.seed)
    tp = time.perf_counter() - t
    # the radius must be what the judge confirms at the returned point
    v = adv.judge(model, x, y, res.x_adv, dist_name, res.radius)
    assert bool((v.success == res.success).all()), "min_distortion radius not confirmed by the judge"
    rows = []
    found_p = torch.isfinite(res.radius)
    mean, med = stats(res.radius, found_p)
    rows.append(["adv.min_distortion defaults (PWCF, then APGD bisection)", int(found_p.sum()), mean, med, tp / n])
    alone = res.pwcf_radius
    found_a = torch.isfinite(alone)
    mean_a, med_a = stats(alone, found_a)
    rows.append(["PWCF alone (the same run's radius before the APGD bisection)", int(found_a.sum()), mean_a, med_a,
                 "-"])
    shrunk = found_p & found_a & (res.radius < alone)
    note = [f"PWCF status codes {status_hist(res.status)}; mean iterations {float(res.iterations.double().mean()):.0f}; "
            f"the APGD bisection shrank {int(shrunk.sum())} of {int(found_a.sum())} radii."]
    entry: dict[str, Any] = dict(pwcf_mean=mean, pwcf_time=tp / n)
    if ta is not None:
        log(f"[min] {dist_name}: FAB x{args.fab_restarts}")
        rf, tf = fab_min(model, x, y, dist_name, args.fab_restarts, args.fab_steps, args.seed)
        found_f = baseline_row(rows, f"torchattacks FAB ({args.fab_restarts} runs x {args.fab_steps} steps, min over "
                               "runs)", rf, tf / n)
        c = paired(res.radius, rf, found_p & found_f)
        note.append(f"on the {c['n']} images both found: min_distortion mean {fmt(c['ours'], 5)}, FAB mean "
                    f"{fmt(c['theirs'], 5)}, ratio = {fmt(c['ratio'], 5)}; mean paired difference "
                    f"{fmt(c['diff'], 4)}; smaller than FAB's by > 0.1 % on {c['smaller']} images, larger by "
                    f"> 0.1 % on {c['larger']}.")
        ca = paired(alone, rf, found_a & found_f)
        note.append(f"PWCF alone on the {ca['n']} images both found: PWCF/FAB = {fmt(ca['ratio'], 5)}; smaller by "
                    f"> 0.1 % on {ca['smaller']} images, larger by > 0.1 % on {ca['larger']}.")
        entry.update(fab_mean=c["theirs"], pwcf_mean_both=c["ours"], ratio=c["ratio"], ratio_alone=ca["ratio"])
    else:
        note.append(f"torchattacks not importable ({TA_ERROR}): no FAB baseline.")
    if FMN is not None and args.fmn_steps > 0:
        alphas = [float(a) for a in args.fmn_alphas.split(",") if a.strip()]
        log(f"[min] {dist_name}: FMN {args.fmn_steps} steps, alpha_init {alphas}")
        rm, tm = fmn_min(model, x, y, dist_name, args.fmn_steps, alphas)
        found_m = baseline_row(rows, f"FMN ({FMN_INFO}; {args.fmn_steps} steps, alpha_init in {{{args.fmn_alphas}}}, "
                               "min over runs)", rm, tm / n)
        cm = paired(res.radius, rm, found_p & found_m)
        note.append(f"against FMN on the {cm['n']} images both found: min_distortion/FMN = {fmt(cm['ratio'], 5)}; "
                    f"smaller by > 0.1 % on {cm['smaller']} images, larger by > 0.1 % on {cm['larger']}.")
        entry.update(fmn_mean=cm["theirs"], ratio_fmn=cm["ratio"])
    elif FMN is None:
        note.append(f"adv-lib not importable ({FMN_INFO}): no FMN baseline.")
    summary.setdefault("min", {})[dist_name] = entry
    head = ["method", "found", "mean radius", "median radius", "s / image"]
    return [f"### {dist_name}\n", md_table(head, rows)] + [f"- {s}\n" for s in note]


def section_perceptual(model: nn.Module, x: Tensor, y: Tensor, eps: float, args: argparse.Namespace,
                       summary: dict[str, Any]) -> list[str]:
    n = x.shape[0]
    feat_model = model_as(model, torch.float64)
    dist = adv.Perceptual(adv.classifier_features(feat_model))
    log(f"[perceptual] eps={eps}: PWCF on {n} images")
    t = time.perf_counter()
    res = adv.attack(model, x, y, dist, eps, loss="margin", seed=args.seed)
    tp = time.perf_counter() - t
    v = adv.judge(model, x, y, res.x_adv, dist, eps)
    rows = []
    viol = int((v.finite & v.misclassified & ~v.within).sum())
    mean, med = stats(v.distance, v.success)
    rows.append(["PWCF margin (adv.attack defaults)", int(v.success.sum()), viol, mean, med, tp / n])
    log(f"[perceptual] LPA-style penalty attack ({args.lpa_phases} x {args.lpa_steps} steps)")
    t = time.perf_counter()
    final, best = lpa_penalty(model, dist, x, y, eps, phases=args.lpa_phases, steps=args.lpa_steps, seed=args.seed)
    tl = time.perf_counter() - t
    out = {}
    for name, pts in (("final iterate", final), ("best feasible iterate", best)):
        vl = adv.judge(model, x, y, pts.to(x.dtype), dist, eps)
        viol_l = int((vl.finite & vl.misclassified & ~vl.within).sum())
        mean_l, med_l = stats(vl.distance, vl.success)
        rows.append([f"LPA-style penalty, {name} ({args.lpa_phases}x{args.lpa_steps} steps)", int(vl.success.sum()),
                     viol_l, mean_l, med_l, tl / n])
        out[name] = int(vl.success.sum())
    log(f"[perceptual] PPGD ({args.ppgd_steps} steps, {args.ppgd_cg} CG iterations)")
    t = time.perf_counter()
    final, best = ppgd(model, dist, x, y, eps, steps=args.ppgd_steps, cg_iters=args.ppgd_cg,
                       step_scale=args.ppgd_step_scale, proj_iters=args.ppgd_proj_iters, seed=args.seed)
    tq = time.perf_counter() - t
    out_q: dict[str, Any] = {}
    for name, pts in (("final iterate", final), ("best feasible iterate", best)):
        vq = adv.judge(model, x, y, pts.to(x.dtype), dist, eps)
        viol_q = int((vq.finite & vq.misclassified & ~vq.within).sum())
        mean_q, med_q = stats(vq.distance, vq.success)
        rows.append([f"PPGD, {name} ({args.ppgd_steps} steps, {args.ppgd_cg} CG)", int(vq.success.sum()), viol_q,
                     mean_q, med_q, tq / n])
        out_q[name] = int(vq.success.sum())
        out_q[f"{name} violations"] = viol_q
    out_q.update(steps=args.ppgd_steps, cg=args.ppgd_cg, step_scale=args.ppgd_step_scale,
                 proj_iters=args.ppgd_proj_iters, time=tq / n)
    summary["perceptual"] = dict(eps=eps, pwcf=int(v.success.sum()), pwcf_viol=viol, lpa=out, ppgd=out_q)
    head = ["attack", "successes (judged)", "violations", "mean distance (successes)", "median distance", "s / image"]
    note = [f"distance: adv.Perceptual(adv.classifier_features(float64 copy of the model)), unsquared, bound {eps}; "
            f"PWCF status codes {status_hist(res.status)}.",
            f"PPGD: step bound eta = {args.ppgd_step_scale:g} * eps / {args.ppgd_steps} = "
            f"{args.ppgd_step_scale * eps / args.ppgd_steps:.4g} on the linearised distance, {args.ppgd_cg} CG "
            f"iterations for (J^T J + 1e-6 mean diag(J^T J) I) v = grad, projection by up to {args.ppgd_proj_iters} "
            "Newton steps then bisection (every iterate feasible); start x + N(0, 0.01^2)."]
    return [f"### perceptual, eps = {eps}, {n} images\n", md_table(head, rows)] + [f"- {s}\n" for s in note]


def targets_md(summary: dict[str, Any]) -> list[str]:
    rows = []
    for d, e in summary.get("max", {}).items():
        r = e["robust"]
        base = [k for k in ("apgd-ce", "apgd-margin", "ta-apgd-ce", "ta-apgd-dlr") if k in r]
        worst = max(r[k] for k in base)
        best_apgd = min(r[k] for k in base)
        ok = r["pwcf-margin"] <= best_apgd + 1e-12
        rows.append([f"{d}: PWCF-margin robust acc <= every APGD", f"PWCF {pct(r['pwcf-margin'])}; APGD " +
                     ", ".join(f"{k} {pct(r[k])}" for k in base), "met" if ok else "not met"])
        in_range = 0.3 <= worst <= 0.8 or 0.3 <= best_apgd <= 0.8
        rows.append([f"{d}: budget gives APGD robust acc in [30 %, 80 %]", f"{pct(best_apgd)} .. {pct(worst)}",
                     "yes" if in_range else "no"])
        u_ok = r["union"] < min(r["pwcf-margin"], r["apgd-ce"], r["apgd-margin"])
        rows.append([f"{d}: union < each of its attacks", f"union {pct(r['union'])}", "met" if u_ok else "not met"])
    for d, e in summary.get("min", {}).items():
        if e.get("ratio") is None:
            continue
        lim = 1.005 if d == "linf" else 1.0
        alone = f" (PWCF alone {e['ratio_alone']:.4f})" if e.get("ratio_alone") is not None else ""
        rows.append([f"{d}: min_distortion mean radius <= {'1.005 x ' if d == 'linf' else ''}FAB's",
                     f"ratio = {e['ratio']:.4f}{alone}", "met" if e["ratio"] <= lim else "not met"])
    if "perceptual" in summary:
        p = summary["perceptual"]
        lpa = max(p["lpa"].values())
        rows.append(["perceptual: PWCF successes > LPA-style, no PWCF violation",
                     f"PWCF {p['pwcf']} (violations {p['pwcf_viol']}); LPA best {lpa}",
                     "met" if p["pwcf"] > lpa and p["pwcf_viol"] == 0 else "not met"])
        if "ppgd" in p:
            q = p["ppgd"]
            qb = q["best feasible iterate"]
            rows.append(["perceptual: PWCF successes >= PPGD (best feasible), no PWCF violation",
                         f"PWCF {p['pwcf']} (violations {p['pwcf_viol']}); PPGD best feasible {qb}, final iterate "
                         f"{q['final iterate']}", "met" if p["pwcf"] >= qb and p["pwcf_viol"] == 0 else "not met"])
    for d, e in summary.get("max", {}).items():
        for key, label in (("aa_time", "AutoAttack standard as shipped"), ("aa100_time", "AutoAttack at 100 it")):
            if d in summary.get(key, {}):
                aa = summary[key][d]
                rows.append([f"{d}: PWCF s/image <= {label}", f"PWCF {fmt(e['pwcf_time'])} s, AA {fmt(aa)} s",
                             "met" if e["pwcf_time"] <= aa else "not met"])
    return ["## Targets\n", md_table(["target", "measured", "verdict"], rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="adv")
    ap.add_argument("--quick", action="store_true", help="20 images (10 for min / perceptual), 2 FAB runs, "
                    "1000 Square queries")
    ap.add_argument("--n", type=int, default=None, help="images attacked (default 100; 20 with --quick)")
    ap.add_argument("--n-min", type=int, default=None,
                    help="images of the minimal-distortion section, the first of the --n (default 50; 10 with --quick)")
    ap.add_argument("--n-perceptual", type=int, default=None,
                    help="images of the perceptual section, the first of the --n (default 50; 10 with --quick)")
    ap.add_argument("--model", default="adversarial", choices=["adversarial", "standard"])
    ap.add_argument("--sections", default="max,min,perceptual")
    ap.add_argument("--threats", default="linf,l2,l1")
    ap.add_argument("--eps-linf", type=float, default=0.15)
    ap.add_argument("--eps-l2", type=float, default=0.75)
    ap.add_argument("--eps-l1", type=float, default=1.5)
    ap.add_argument("--eps-perceptual", type=float, default=0.35)
    ap.add_argument("--fab-restarts", type=int, default=None, help="FAB runs per image (default 5; 2 with --quick)")
    ap.add_argument("--fab-steps", type=int, default=100)
    ap.add_argument("--fmn-steps", type=int, default=1000, help="FMN steps (0: no FMN baseline)")
    ap.add_argument("--fmn-alphas", default="1,10", help="FMN initial step sizes, one run each (default 1,10)")
    ap.add_argument("--name", default=None, help="results file stem (default adv, or adv_quick with --quick)")
    ap.add_argument("--aa-steps", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=None, help="default 5000; 1000 with --quick")
    ap.add_argument("--no-autoattack", action="store_true")
    ap.add_argument("--stall-iters", type=int, default=None,
                    help="adv.runner.STALL_ITERS for the PWCF attacks: a margin restart stops after this many "
                         f"iterations without progress far from success (default: the library's, "
                         f"{adv.runner.STALL_ITERS}; 0: off)")
    ap.add_argument("--lpa-phases", type=int, default=5)
    ap.add_argument("--lpa-steps", type=int, default=40)
    ap.add_argument("--ppgd-steps", type=int, default=40, help="PPGD steps (default 40)")
    ap.add_argument("--ppgd-cg", type=int, default=5, help="PPGD conjugate-gradient iterations per step (default 5)")
    ap.add_argument("--ppgd-step-scale", type=float, default=2.0,
                    help="PPGD step bound eta = scale * eps / steps on the linearised distance (default 2)")
    ap.add_argument("--ppgd-proj-iters", type=int, default=10,
                    help="PPGD Newton projection steps before the bisection fallback (default 10)")
    args = ap.parse_args()
    if args.fmn_steps < 0:
        ap.error(f"--fmn-steps must be >= 0, got {args.fmn_steps}")
    if args.stall_iters is not None:
        if args.stall_iters < 0:
            ap.error(f"--stall-iters must be >= 0, got {args.stall_iters}")
        adv.runner.STALL_ITERS = args.stall_iters
    for flag in ("--ppgd-steps", "--ppgd-cg", "--ppgd-proj-iters"):
        val = getattr(args, flag[2:].replace("-", "_"))
        if val < 1:
            ap.error(f"{flag} must be a positive integer (>= 1), got {val}")
    if not (math.isfinite(args.ppgd_step_scale) and args.ppgd_step_scale > 0):
        ap.error(f"--ppgd-step-scale must be a finite number > 0, got {args.ppgd_step_scale}")
    try:
        alphas = [float(a) for a in args.fmn_alphas.split(",") if a.strip()]
    except ValueError:
        ap.error(f"--fmn-alphas must be comma-separated numbers, got {args.fmn_alphas!r}")
    if not alphas or any(not (a > 0) for a in alphas):
        ap.error(f"--fmn-alphas must list positive step sizes, got {args.fmn_alphas!r}")
    if args.dtype != "float64":
        ap.error("--dtype: the attacks run in float64 (the model is float32; the solver casts)")
    args.n = args.n or (20 if args.quick else 100)
    args.n_min = min(args.n, args.n_min or (10 if args.quick else 50))
    args.n_perceptual = min(args.n, args.n_perceptual or (10 if args.quick else 50))
    args.fab_restarts = args.fab_restarts or (2 if args.quick else 5)
    args.square_queries = args.square_queries or (1000 if args.quick else 5000)
    device, _ = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_adv.py runs on the CPU (the zoo models are tiny)")
    t_start = time.perf_counter()
    model = default_model(args.model)
    x, y = subset(model, args.n)
    eps = {"linf": args.eps_linf, "l2": args.eps_l2, "l1": args.eps_l1}
    secs = [s.strip() for s in args.sections.split(",") if s.strip()]
    threats = [s.strip() for s in args.threats.split(",") if s.strip()]
    summary: dict[str, Any] = {}
    body = [
        f"Model: `adv.zoo.default_model({args.model!r})` (DigitsCNN, recipe {RECIPE_VERSION}); clean test accuracy "
        f"{pct(accuracy(model))} on the 360 test images. Attacked: the first {x.shape[0]} correctly classified "
        "test images (split order). Every success is the verdict of `adv.judge` (float64, clipped point); "
        "'violations' = returned points the model misclassifies but that lie outside the budget; "
        "'box violations' = returned points with a pixel outside [0, 1] (the judge clips them).\n",
    ]
    if "max" in secs:
        body.append("## Max-loss attacks (robust accuracy, lower is stronger)\n")
        for d in threats:
            body += section_max(model, x, y, d, eps[d], args, summary)
    if "min" in secs:
        body.append(f"## Minimal distortion (radius, lower is better; the first {args.n_min} images)\n")
        for d in ("l2", "l1", "linf"):
            if d in threats:
                body += section_min(model, x[: args.n_min], y[: args.n_min], d, args, summary)
    if "perceptual" in secs:
        body.append("## Perceptual threat model\n")
        body += section_perceptual(model, x[: args.n_perceptual], y[: args.n_perceptual], args.eps_perceptual, args,
                                   summary)
    body += targets_md(summary)
    body.append(f"\nScript wall time: {time.perf_counter() - t_start:.0f} s.\n")
    extra = {"adv.runner.STALL_ITERS": adv.runner.STALL_ITERS,
             "torchattacks": getattr(ta, "__version__", "not importable"),
             "FMN": FMN_INFO if FMN is not None else "not importable"}
    name = args.name or ("adv_quick" if args.quick else "adv")  # a quick run never overwrites the full results
    write_results(out_path(args, name, device), "Robustness evaluation: PWCF vs APGD, FAB, AutoAttack, LPA, PPGD (digits)",
                  device, body, extra)


if __name__ == "__main__":
    main()
