"""Instance generators and independent numpy references for the QP-layer tests.

Nothing here imports the code under test except the :class:`BoxQP` container: the oracle
(face enumeration on the bordered KKT system), the projection (sort-based, exact) and the scaled
KKT residual are written separately in numpy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st

from ncvx_core.qp import BoxQP

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# instances (numpy, one problem at a time)
# --------------------------------------------------------------------------------------------


@dataclass
class NpQP:
    """One problem in numpy: Q (m, m), q (m,), lo (m,), hi (m,), mask (m,) bool, r float."""

    Q: np.ndarray
    q: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    mask: np.ndarray
    r: float

    @property
    def m(self) -> int:
        return int(self.q.shape[0])


def _spd(rng: np.random.Generator, n: int, log_cond: float) -> np.ndarray:
    """Random SPD matrix with condition number 10**log_cond."""
    X = rng.standard_normal((n, n))
    U, _ = np.linalg.qr(X)
    ev = np.logspace(0.0, -log_cond, n) if n > 1 else np.ones(1)
    return (U * ev) @ U.T


def _columns(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    """(n, k) gradient columns: iid, with duplicated / zero / nearly collinear columns."""
    A = rng.standard_normal((n, k))
    if kind == "dup" and k >= 2:
        j = rng.integers(1, k)
        A[:, j] = A[:, rng.integers(0, j)]
    elif kind == "zero":
        A[:, rng.integers(0, k)] = 0.0
    elif kind == "collinear":
        base = rng.standard_normal((n, 1))
        A = base + 10.0 ** rng.uniform(-8, -1) * A
    elif kind == "allzero":
        A[:] = 0.0
    return A


def steering_np(rng: np.random.Generator, *, m: int, n: int, kind: str, log_cond: float,
                n_eq: int, scale: float) -> NpQP:
    """Steering dual: Q = A^T H A, lo = -1 (equality constraints) / 0, hi = 1, box only."""
    A = _columns(rng, n, m, kind)
    H = _spd(rng, n, log_cond) * scale
    Q = A.T @ H @ A
    Q = 0.5 * (Q + Q.T)
    g = rng.standard_normal(n)
    mu = rng.choice([1.0, 1e-2, 0.0])
    c = rng.standard_normal(m) * rng.choice([1.0, 1e-3, 10.0])
    q = mu * (A.T @ (H @ g)) - c
    lo = np.where(np.arange(m) < n_eq, -1.0, 0.0)
    hi = np.ones(m)
    return NpQP(Q, q, lo, hi, np.zeros(m, dtype=bool), 0.0)


def termination_np(rng: np.random.Generator, *, l: int, p: int, n: int, log_cond: float,
                   r: float, pieces: int, noise: float, redundant_hi: bool) -> NpQP:
    """Termination QP: variables [sigma (l), lambda (l p)], sum(sigma) = r, Q = M^T H M."""
    base = rng.standard_normal((n, pieces))
    G = base[:, rng.integers(0, pieces, size=l)] + noise * rng.standard_normal((n, l))
    cons = rng.standard_normal((n, p))
    J = np.concatenate([cons + noise * rng.standard_normal((n, p)) for _ in range(l)], axis=1) \
        if p > 0 else np.zeros((n, 0))
    M = np.concatenate([G, J], axis=1)
    H = _spd(rng, n, log_cond)
    Q = M.T @ H @ M
    Q = 0.5 * (Q + Q.T)
    f = rng.standard_normal()
    ci = -np.abs(rng.standard_normal(p)) * rng.choice([1.0, 1e-3])
    q = -np.concatenate([np.full(l, f), np.tile(ci, l)])
    m = l * (1 + p)
    lo = np.zeros(m)
    hi = np.ones(m)
    hi[:l] = r if redundant_hi else np.inf
    mask = np.zeros(m, dtype=bool)
    mask[:l] = True
    return NpQP(Q, q, lo, hi, mask, float(r))


def pad(p: NpQP, m: int) -> NpQP:
    """Pad to m variables with fixed (lo = hi = 0), unused slots."""
    k = m - p.m
    if k == 0:
        return p
    Q = np.zeros((m, m))
    Q[: p.m, : p.m] = p.Q
    return NpQP(Q, np.concatenate([p.q, np.zeros(k)]), np.concatenate([p.lo, np.zeros(k)]),
                np.concatenate([p.hi, np.zeros(k)]), np.concatenate([p.mask, np.zeros(k, bool)]),
                p.r)


def permute(p: NpQP, perm: np.ndarray) -> NpQP:
    return NpQP(p.Q[np.ix_(perm, perm)], p.q[perm], p.lo[perm], p.hi[perm], p.mask[perm], p.r)


def to_boxqp(probs: list[NpQP], *, with_eq: bool | None = None) -> BoxQP:
    """Stack problems of equal m into a BoxQP (eq fields present iff any mask or with_eq)."""
    Q = torch.tensor(np.stack([p.Q for p in probs]), dtype=F64)
    q = torch.tensor(np.stack([p.q for p in probs]), dtype=F64)
    lo = torch.tensor(np.stack([p.lo for p in probs]), dtype=F64)
    hi = torch.tensor(np.stack([p.hi for p in probs]), dtype=F64)
    use_eq = any(p.mask.any() for p in probs) if with_eq is None else with_eq
    if not use_eq:
        return BoxQP(Q, q, lo, hi)
    mask = torch.tensor(np.stack([p.mask for p in probs]), dtype=torch.bool)
    r = torch.tensor([p.r for p in probs], dtype=F64)
    return BoxQP(Q, q, lo, hi, mask, r)


# --------------------------------------------------------------------------------------------
# hypothesis strategies
# --------------------------------------------------------------------------------------------

KINDS = ["iid", "dup", "zero", "collinear", "allzero"]


@st.composite
def steering_problem(draw: st.DrawFn, max_m: int = 3, min_m: int = 1) -> NpQP:
    seed = draw(st.integers(0, 2**32 - 1))
    m = draw(st.integers(min_m, max_m))
    n = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(KINDS))
    log_cond = draw(st.sampled_from([0.0, 2.0, 5.0, 8.0]))
    n_eq = draw(st.integers(0, m))
    scale = draw(st.sampled_from([1.0, 1e-4, 1e4]))
    rng = np.random.default_rng(seed)
    return steering_np(rng, m=m, n=n, kind=kind, log_cond=log_cond, n_eq=n_eq, scale=scale)


@st.composite
def box_problem(draw: st.DrawFn, max_m: int = 3) -> NpQP:
    """Generic box QP: random offsets, some fixed variables, some hi = +inf (then Q is made
    strongly convex on those variables so the problem stays bounded)."""
    p = draw(steering_problem(max_m=max_m))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    m = p.m
    lo = p.lo + rng.uniform(-2, 2, size=m) * draw(st.sampled_from([0.0, 1.0]))
    width = 10.0 ** rng.uniform(-3, 1, size=m)
    hi = lo + width
    fixed = rng.random(m) < draw(st.sampled_from([0.0, 0.3]))
    hi[fixed] = lo[fixed]
    inf = (rng.random(m) < draw(st.sampled_from([0.0, 0.5]))) & ~fixed
    Q = p.Q.copy()
    if inf.any():
        hi[inf] = np.inf
        Q[inf, inf] += 1.0 + np.abs(np.diag(Q)).max(initial=0.0)
    return NpQP(Q, p.q, lo, hi, np.zeros(m, dtype=bool), 0.0)


@st.composite
def termination_problem(draw: st.DrawFn, max_m: int = 6) -> NpQP:
    seed = draw(st.integers(0, 2**32 - 1))
    l = draw(st.integers(1, max(1, max_m)))
    pmax = max(0, max_m // l - 1)
    p = draw(st.integers(0, min(2, pmax)))
    n = draw(st.integers(1, 6))
    r = draw(st.sampled_from([1.0, 1e-6, 1e-12, 0.0, 0.37]))
    rng = np.random.default_rng(seed)
    return termination_np(
        rng, l=l, p=p, n=n, log_cond=draw(st.sampled_from([0.0, 3.0, 8.0])), r=r,
        pieces=draw(st.integers(1, 3)), noise=draw(st.sampled_from([0.0, 1e-8, 1e-3, 1.0])),
        redundant_hi=draw(st.booleans()),
    )


@st.composite
def mixed_batch(draw: st.DrawFn, max_m: int = 6, max_b: int = 4) -> list[NpQP]:
    """A batch mixing termination QPs (with the equality), steering QPs (box only) and generic
    box QPs, padded to a common m with fixed slots and randomly permuted."""
    b = draw(st.integers(1, max_b))
    probs = []
    for _ in range(b):
        which = draw(st.sampled_from(["term", "term", "steer", "box"]))
        if which == "term":
            probs.append(draw(termination_problem(max_m=max_m)))
        elif which == "steer":
            probs.append(draw(steering_problem(max_m=max_m)))
        else:
            probs.append(draw(box_problem(max_m=max_m)))
    m = max(p.m for p in probs) + draw(st.integers(0, 1))
    m = min(max(m, 1), max_m + 1)
    out = []
    for p in probs:
        pp = pad(p, m)
        perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(m)
        out.append(permute(pp, perm))
    return out


# --------------------------------------------------------------------------------------------
# independent numpy references
# --------------------------------------------------------------------------------------------


def var_scale(p: NpQP) -> np.ndarray:
    """Per-variable natural scale: masked -> equality slack, finite box -> width, else 1."""
    s = np.where(np.isfinite(p.hi) & (p.hi > p.lo), p.hi - p.lo, 1.0)
    if p.mask.any():
        slack = p.r - p.lo[p.mask].sum()
        s[p.mask] = slack if slack > 0 else 1.0
    return s


def obj_scale(p: NpQP) -> float:
    """Largest coefficient of the problem after scaling the variables by var_scale (>= tiny)."""
    s = var_scale(p)
    free = p.hi > p.lo
    Qs = (s[:, None] * p.Q * s[None, :])[np.ix_(free, free)]
    qs = (s * (p.Q @ p.lo + p.q))[free]
    g = max(np.abs(Qs).max(initial=0.0), np.abs(qs).max(initial=0.0))
    return g if g > 0 else 1.0


def np_project(w: np.ndarray, p: NpQP) -> np.ndarray:
    """Exact Euclidean projection onto box ∩ {sum(w[mask]) = r}, by sorting breakpoints."""
    x = np.clip(w, p.lo, p.hi)
    if not p.mask.any():
        return x
    M = p.mask
    wm, lm, hm = w[M], p.lo[M], p.hi[M]

    def g(t: float) -> float:
        return float(np.clip(wm - t, lm, hm).sum())

    bps = np.concatenate([wm - lm, (wm - hm)[np.isfinite(hm)]])
    bps = np.unique(bps)
    vals = np.array([g(t) for t in bps])  # nonincreasing in t
    r = p.r
    if r >= vals[0]:
        # above the largest value at the smallest breakpoint: only reachable with +inf bounds
        t0 = bps[0]
        nfree = np.sum((wm - t0 >= lm) & (hm == np.inf))
        t = t0 - (r - vals[0]) / max(nfree, 1)
    elif r <= vals[-1]:
        t = bps[-1]
    else:
        k = np.searchsorted(-vals, -r)  # first index with vals[k] <= r
        t1, t2, v1, v2 = bps[k - 1], bps[k], vals[k - 1], vals[k]
        t = t1 + (v1 - r) * (t2 - t1) / (v1 - v2) if v1 != v2 else t1
    x[M] = np.clip(wm - t, lm, hm)
    return x


def np_kkt_scaled(p: NpQP, w: np.ndarray) -> float:
    """Projected-gradient residual in scaled units: variables (w - lo) / s, objective / gamma."""
    s = var_scale(p)
    gam = obj_scale(p)
    grad = s * (p.Q @ w + p.q) / gam
    u = (w - p.lo) / s
    up = NpQP(np.zeros_like(p.Q), np.zeros_like(p.q), np.zeros_like(p.lo), (p.hi - p.lo) / s,
              p.mask, (p.r - p.lo[p.mask].sum()) / s[p.mask][0] if p.mask.any() else 0.0)
    return float(np.abs(u - np_project(u - grad, up)).max(initial=0.0))


def np_objective(p: NpQP, w: np.ndarray) -> float:
    return float(0.5 * w @ p.Q @ w + p.q @ w)


def oracle(p: NpQP, feas_tol: float = 1e-9) -> tuple[float, np.ndarray]:
    """Exact minimum by enumerating faces of the box and solving the bordered KKT system of
    each face with a pseudo-inverse (min-norm least squares).  Every feasible candidate is a
    feasible point, and some optimum (an extreme point of the optimal set) is the unique primal
    part of its face's KKT system, so the smallest feasible candidate objective is the optimum.
    Works in the scaled variables ``(w - lo) / var_scale`` (so that e.g. r = 1e-12 is resolved).
    """
    sc = var_scale(p)
    gam = obj_scale(p)
    ps = NpQP(
        Q=sc[:, None] * p.Q * sc[None, :] / gam,
        q=sc * (p.Q @ p.lo + p.q) / gam,
        lo=np.zeros(p.m),
        hi=(p.hi - p.lo) / sc,
        mask=p.mask,
        r=(p.r - p.lo[p.mask].sum()) / sc[p.mask][0] if p.mask.any() else 0.0,
    )
    _, u = _oracle_scaled(ps, feas_tol)
    w = np.clip(p.lo + sc * u, p.lo, p.hi)
    return np_objective(p, w), w


def _oracle_scaled(p: NpQP, feas_tol: float) -> tuple[float, np.ndarray]:
    m = p.m
    states: list[tuple[int, ...]] = []
    for i in range(m):
        if p.hi[i] == p.lo[i]:
            states.append((0,))
        elif np.isinf(p.hi[i]):
            states.append((0, 2))
        else:
            states.append((0, 1, 2))
    codes = np.array(list(itertools.product(*states)), dtype=np.int8).reshape(-1, m)
    nf = codes.shape[0]
    free = codes == 2
    hi_f = np.where(np.isfinite(p.hi), p.hi, p.lo)
    wA = np.where(codes == 1, hi_f, p.lo)
    wA = np.where(free, 0.0, wA)
    a = p.mask.astype(float)
    has_eq = bool(p.mask.any())
    K = np.zeros((nf, m + 1, m + 1))
    rhs = np.zeros((nf, m + 1))
    ff = free[:, :, None] & free[:, None, :]
    K[:, :m, :m] = np.where(ff, p.Q[None], 0.0)
    idx = np.arange(m)
    K[:, idx, idx] = np.where(free, K[:, idx, idx], 1.0)
    rhs[:, :m] = np.where(free, -(p.q[None] + wA @ p.Q.T), wA)
    if has_eq:
        aF = np.where(free, a[None], 0.0)
        K[:, :m, m] = aF
        K[:, m, :m] = aF
        rhs[:, m] = p.r - (np.where(free, 0.0, wA) * a).sum(-1)
    else:
        K[:, m, m] = 1.0
    sol = np.einsum("fij,fj->fi", np.linalg.pinv(K, rcond=1e-15), rhs)
    x = np.where(free, sol[:, :m], wA)
    s = np.ones(m)
    viol = np.maximum(p.lo - x, 0.0) / s
    viol = np.maximum(viol, np.maximum(x - p.hi, 0.0) / s)
    ok = (viol <= feas_tol).all(-1)
    if has_eq:
        ok &= np.abs(x[:, p.mask].sum(-1) - p.r) <= feas_tol * s[p.mask][0] * max(1, p.mask.sum())
    ok &= np.isfinite(x).all(-1)
    x = np.clip(x, p.lo, p.hi)
    f = 0.5 * np.einsum("fi,ij,fj->f", x, p.Q, x) + x @ p.q
    f = np.where(ok, f, np.inf)
    k = int(np.argmin(f))
    return float(f[k]), x[k]
