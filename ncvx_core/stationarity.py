"""Stationarity measure (spec section 5): smooth check, neighbourhood gradient cache and the
gradient-sampling termination QP, batched over problems."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .qp import BoxQP, QPSolver, QPStatus
from .utils import bmask, bmm, device_constant

__all__ = ["GradientCache", "init_cache", "cache_insert", "stationarity_qp"]


class GradientCache(NamedTuple):
    """Ring buffer of the last L points and their raw gradients, per problem.

    Shapes: ``X, G (B, L, n)``; ``Ji (B, L, p, n)``; ``Je (B, L, q, n)``; ``filled (B, L)`` bool;
    ``next (B,)`` long, the slot written next (the oldest once the buffer is full); ``lo, hi (B, L)``
    lower and upper bounds on the distance of each slot's point to the problem's most recently
    inserted point.
    """

    X: Tensor
    G: Tensor
    Ji: Tensor
    Je: Tensor
    filled: Tensor
    next: Tensor
    lo: Tensor
    hi: Tensor


def init_cache(B: int, L: int, n: int, p: int, q: int, dtype: torch.dtype, device: torch.device) -> GradientCache:
    # the sample buffers are only read at filled slots (and masked elsewhere): left uninitialised,
    # their pages are touched only when written
    zl = torch.zeros(B, L, dtype=dtype, device=device)
    return GradientCache(
        torch.empty(B, L, n, dtype=dtype, device=device), torch.empty(B, L, n, dtype=dtype, device=device),
        torch.empty(B, L, p, n, dtype=dtype, device=device), torch.empty(B, L, q, n, dtype=dtype, device=device),
        torch.zeros(B, L, dtype=torch.bool, device=device), torch.zeros(B, dtype=torch.long, device=device),
        zl, zl.clone(),
    )


# relative slack of the distance bounds: a slot whose bounds are within it of evaldist is measured
_BOUND_SLACK = 1e-9
_EXACT_BYTES = 1 << 27  # 128 MiB of point differences per block in cache_insert(exact=True)


def cache_insert(cache: GradientCache, rows: Tensor, x: Tensor, g: Tensor, Ji: Tensor, Je: Tensor,
                 evaldist: float, *, exact: bool = False, mask: Tensor | None = None) -> Tensor:
    """Insert the new points of problems ``rows`` into the cache (in place) and return their
    neighbourhoods.

    The neighbourhood is every cached point within Euclidean distance ``evaldist`` of ``x``,
    including ``x`` itself. Distances are tracked by bounds, as GRANSO does with its upper bounds:
    with ``e = ||x - x_last||`` (x_last the previously inserted point), each slot's distance lies in
    ``[lo - e, hi + e]`` (triangle inequality); only slots whose bounds straddle ``evaldist`` are
    measured exactly, so the stored points are read only where the answer is in doubt and the set is
    the exact one. ``x, g (k, n)``, ``Ji (k, p, n)``, ``Je (k, q, n)``; returns ``nb (k, L)`` bool.
    Only the inserted slots and the bounds are written: the cache is never copied.

    ``exact=True`` measures every filled slot instead (reads the problems' whole point cache, no
    host synchronisation; the neighbourhoods are the same): the solver's choice with ``sync_free``.
    ``mask (k,)`` bool: insert only where true (the other rows of the cache are rewritten with
    their own values; their returned neighbourhoods mean nothing).
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != rows.shape):
        raise ValueError(f"mask must be None or a bool tensor of shape {tuple(rows.shape)}, got "
                         f"{(mask.dtype, tuple(mask.shape)) if isinstance(mask, Tensor) else type(mask).__name__}")
    B, L, n = cache.X.shape
    slot = cache.next[rows]
    last = torch.remainder(slot - 1, L)
    filled = cache.filled[rows]
    e = torch.linalg.vector_norm(x - cache.X[rows, last], dim=1).unsqueeze(1)  # (k, 1)
    lo = (cache.lo[rows] - e).clamp(min=0)
    hi = cache.hi[rows] + e
    if exact:
        # (k, L) distances, a block of slots at a time so the differences stay under _EXACT_BYTES
        k = rows.shape[0]
        step = max(1, _EXACT_BYTES // max(1, k * n * x.element_size()))
        d = torch.cat([torch.linalg.vector_norm(x.unsqueeze(1) - cache.X[rows, j:j + step], dim=2)
                       for j in range(0, L, step)], dim=1).to(lo.dtype)
        lo = torch.where(filled, d, lo)
        hi = torch.where(filled, d, hi)
    else:
        doubt = filled & (hi > evaldist * (1 - _BOUND_SLACK)) & (lo <= evaldist * (1 + _BOUND_SLACK))
        pairs = torch.nonzero(doubt)  # one small host sync: sizes the exact measurements
        if pairs.shape[0]:
            r, j = pairs[:, 0], pairs[:, 1]
            d = torch.linalg.vector_norm(x[r] - cache.X[rows[r], j], dim=1).to(lo.dtype)
            lo[r, j] = d
            hi[r, j] = d
    # (k, L); a comparison, not one_hot, which reads the index range back to the host
    onehot = torch.arange(L, device=slot.device) == slot.unsqueeze(1)
    nb = (filled & (hi <= evaldist) & ~onehot) | onehot
    lo = torch.where(onehot, 0.0, lo)
    hi = torch.where(onehot, 0.0, hi)
    nxt = (slot + 1) % L
    if mask is not None:  # the rows left out keep their slots and bounds
        m1 = mask.unsqueeze(1)
        lo = torch.where(m1, lo, cache.lo[rows])
        hi = torch.where(m1, hi, cache.hi[rows])
        x = torch.where(m1, x, cache.X[rows, slot])
        g = torch.where(m1, g, cache.G[rows, slot])
        Ji = torch.where(m1.unsqueeze(2), Ji, cache.Ji[rows, slot])
        Je = torch.where(m1.unsqueeze(2), Je, cache.Je[rows, slot])
        nxt = torch.where(mask, nxt, slot)
    cache.lo[rows] = lo
    cache.hi[rows] = hi
    cache.X[rows, slot] = x
    cache.G[rows, slot] = g
    cache.Ji[rows, slot] = Ji
    cache.Je[rows, slot] = Je
    cache.filled[rows, slot] = cache.filled[rows, slot] | (True if mask is None else mask)
    cache.next[rows] = nxt
    return nb


class StationarityResult(NamedTuple):
    """``stat (k,)`` measure (inf if every QP attempt failed), ``n_grads (k,)`` samples used,
    ``fallback (k,)`` int8: 0 first QP solved, 2 solved with H replaced by I inside the QP, -1 failed."""

    stat: Tensor
    n_grads: Tensor
    fallback: Tensor


def stationarity_qp(
    apply_H: Callable[[Tensor], Tensor],
    cache: GradientCache,
    rows: Tensor,
    nb: Tensor,
    ci: Tensor,
    ce: Tensor,
    mu: Tensor,
    *,
    qp: QPSolver,
    l2: bool = True,
    qp_tol: float = 1e-12,
    strict: bool = False,
    size: int | None = None,
    fallback: bool = True,
) -> StationarityResult:
    """Termination QP over the neighbourhood samples (spec 5.3), with the redundant bound
    sigma <= mu and the constant term -f * sum(sigma) dropped.

    Args:
        apply_H: ``V (k, n, c) -> H V`` (the H before this iteration's update).
        cache, rows, nb: the cache of all problems, the positions ``rows (k,)`` of the k problems in
            it and their ``(k, L)`` neighbourhood masks (only the neighbourhood samples are read).
        ci, ce: constraint values at the current points, ``(k, p)`` and ``(k, q)``; ``mu (k,)``.
        strict: no host read (``strict_sync``): one QP call with every QP padded to ``size``
            samples (None: the cache size ``L``). A neighbourhood of more samples keeps the current
            point's and the first others by slot: the measure over fewer samples is never smaller,
            so it can delay a termination but never cause one. With ``fallback``, the fallback QP
            (H replaced by I) is solved in the same call as the first, for every problem; without
            it, a problem whose first QP fails gets ``inf`` (fallback -1).
    """
    counts = nb.sum(dim=1)
    L = cache.X.shape[1]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or an int >= 1, got {size!r}")
    if strict:
        lmax = L if size is None else min(size, L)
        return _stationarity_group(apply_H, cache, rows, nb, ci, ce, mu, lmax, qp, l2, qp_tol,
                                   together=fallback, strict=True)
    # a problem's QP is padded (with fixed variables) to a size that depends on its own
    # neighbourhood only (qp_buckets), so its answer does not depend on the batch it is solved in;
    # the possible sizes are known on the host, and one small read says which occur (sizes the QPs)
    cands = qp_buckets(L)
    table = device_constant(("qp_buckets", L, cands), counts.device,
                            lambda d: torch.tensor(cands, dtype=counts.dtype, device=d))
    bucket = table[torch.searchsorted(table, counts.clamp(1, L))]
    occurs = (bucket.unsqueeze(1) == table).any(0).tolist()
    sizes = [c for c, o in zip(cands, occurs) if o]
    if len(sizes) == 1:
        return _stationarity_group(apply_H, cache, rows, nb, ci, ce, mu, int(sizes[0]), qp, l2, qp_tol)
    stat = torch.empty(counts.shape[0], dtype=ci.dtype, device=ci.device)
    n_grads = torch.empty_like(counts)
    fallback = torch.empty(counts.shape[0], dtype=torch.int8, device=ci.device)
    for size in sizes:
        sel = torch.nonzero(bucket == size).flatten()
        res = _stationarity_group(_rows_apply(apply_H, sel), cache, rows[sel], nb[sel], ci[sel], ce[sel],
                                  mu[sel], int(size), qp, l2, qp_tol)
        stat[sel], n_grads[sel], fallback[sel] = res.stat, res.n_grads, res.fallback
    return StationarityResult(stat, n_grads, fallback)


def qp_buckets(L: int) -> tuple[int, ...]:
    """Sample counts the termination QPs are padded to, for a cache of ``L`` samples: 1, 4, 16, 64,
    ... capped at ``L``, where a last rung above ``L / 1.5`` is replaced by ``L`` (e.g. ``L = 74``:
    1, 4, 16, 74 instead of 1, 4, 16, 64, 74).

    Each size is one QP call per pass, whose cost on small batches is mostly a fixed per-call
    overhead, while padding costs flops that grow with the cube of the size: a floor of 16 samples
    (one call fewer) made the digits attack 6 % faster at B = 256 but the minimal-distortion problem
    10 % slower at B = 1024 (ad hoc, side by side), so the ladder starts at 4."""
    out = [1]
    c = 4
    while c < L and 1.5 * c <= L:
        out.append(c)
        c *= 4
    if L > 1:
        out.append(L)
    return tuple(out)


def _rows_apply(apply_H: Callable[..., Tensor], rows: Tensor) -> Callable[[Tensor], Tensor]:
    """``apply_H`` restricted to ``rows``: apply_H takes an optional row index."""
    return lambda V: apply_H(V, rows)


def _stationarity_group(apply_H: Callable[..., Tensor], cache: GradientCache, rows: Tensor, nb: Tensor, ci: Tensor,
                        ce: Tensor, mu: Tensor, lmax: int, qp: QPSolver, l2: bool, qp_tol: float,
                        together: bool = False, strict: bool = False) -> StationarityResult:
    k, L = nb.shape
    n = cache.X.shape[2]
    p, q = ci.shape[1], ce.shape[1]
    w = 1 + p + q
    counts = nb.sum(dim=1)
    key = (~nb).to(torch.int8)
    if strict:  # the current point's sample (the last inserted) first: kept when lmax truncates
        cur = torch.remainder(cache.next[rows] - 1, L)
        key = torch.where(torch.arange(L, device=nb.device) == cur.unsqueeze(1), -1, key).to(torch.int8)
        counts = counts.clamp(max=lmax)
    order = torch.argsort(key, dim=1, stable=True)[:, :lmax]  # neighbourhood first
    valid = torch.arange(lmax, device=nb.device).unsqueeze(0) < counts.unsqueeze(1)  # (k, lmax)
    r2 = rows.unsqueeze(1)
    G = cache.G[r2, order]  # (k, lmax, n): only the samples used are read
    Ji = cache.Ji[r2, order]
    Je = cache.Je[r2, order]
    blocks = torch.cat([Je, G.unsqueeze(2), Ji], dim=2)  # (k, lmax, w, n): [nu (q), sigma, lambda (p)]
    blocks = torch.where(valid.view(k, lmax, 1, 1), blocks, 0.0)
    M = blocks.reshape(k, lmax * w, n)
    m = lmax * w
    f64 = torch.float64
    dev = nb.device
    lo1 = torch.cat([-torch.ones(q, dtype=f64, device=dev), torch.zeros(1 + p, dtype=f64, device=dev)])
    hi1 = torch.cat([torch.ones(q, dtype=f64, device=dev), torch.full((1,), torch.inf, dtype=f64, device=dev),
                     torch.ones(p, dtype=f64, device=dev)])
    vmask = valid.unsqueeze(2).expand(k, lmax, w)
    lo = torch.where(vmask, lo1.view(1, 1, w), 0.0).reshape(k, m)
    hi = torch.where(vmask, hi1.view(1, 1, w), 0.0).reshape(k, m)
    lin1 = -torch.cat([ce.double(), torch.zeros(k, 1, dtype=f64, device=dev), ci.double()], dim=1)  # (k, w)
    lin = torch.where(vmask, lin1.unsqueeze(1), 0.0).reshape(k, m)
    sig = torch.zeros(w, dtype=torch.bool, device=dev)
    sig[q] = True
    eq_mask = (vmask & sig.view(1, 1, w)).reshape(k, m)
    HM = apply_H(M.transpose(1, 2))  # (k, n, m); the (k, m, n) layout of M is what H's products read
    M64, HM64 = M.double(), HM.double()
    finite = torch.isfinite(M64).flatten(1).all(1) & torch.isfinite(HM64).flatten(1).all(1) & torch.isfinite(lin).all(1)

    def solve(Qm: Tensor, twice: bool = False) -> tuple[Tensor, Tensor]:
        """``Qm (k, m, m)``, or ``(2k, m, m)`` with ``twice``: two QPs per problem."""
        rep = (lambda t: torch.cat([t, t])) if twice else (lambda t: t)
        Qm = 0.5 * (Qm + Qm.transpose(1, 2))
        ok = rep(finite) & torch.isfinite(Qm).flatten(1).all(1)
        Qm = torch.where(bmask(ok, Qm), Qm, 0.0)
        linm = torch.where(bmask(ok, rep(lin)), rep(lin), 0.0)
        kk = Qm.shape[0]
        if lmax == 1:
            # one sample: the equality fixes sigma = mu, leaving a box QP over the p + q constraint
            # multipliers (solved exactly by face enumeration when p + q <= 3)
            # integer indices made on the device: boolean-mask indexing (or a tensor of host
            # numbers) would synchronise
            free = torch.cat([torch.arange(q, device=dev), torch.arange(q + 1, w, device=dev)])
            sigma = rep(mu.double())
            Qf = Qm.index_select(1, free).index_select(2, free)
            qf = linm.index_select(1, free) + Qm[:, :, q].index_select(1, free) * sigma.unsqueeze(1)
            z1 = torch.empty(kk, w, dtype=f64, device=dev)
            z1[:, q] = sigma
            if w > 1:
                res = qp.solve(BoxQP(Q=Qf, q=qf, lo=rep(lo).index_select(1, free), hi=rep(hi).index_select(1, free)),
                               tol=qp_tol)
                z1[:, free] = res.w
                return z1, ok & (res.status != QPStatus.FAILED)
            return z1, ok
        res = qp.solve(BoxQP(Q=Qm, q=linm, lo=rep(lo), hi=rep(hi), eq_mask=rep(eq_mask), r=rep(mu.double())),
                       tol=qp_tol)
        return res.w, ok & (res.status != QPStatus.FAILED)

    # the fallback QP (H replaced by I): in the same call as the first (twice the rows, no read of
    # whether it is needed), or after it for the problems whose first QP failed (not in strict mode)
    z2 = ok2 = None
    if together:
        z12, ok12 = solve(torch.cat([bmm(M64, HM64), bmm(M64, M64.transpose(1, 2))]), twice=True)
        z, z2, ok1, ok2 = z12[:k], z12[k:], ok12[:k], ok12[k:]
    else:
        z, ok1 = solve(bmm(M64, HM64))
        if not strict and bool((~ok1 & finite).any()):
            z2, ok2 = solve(bmm(M64, M64.transpose(1, 2)))
    fallback = torch.where(ok1, 0, -1).to(torch.int8)
    if z2 is not None and ok2 is not None:
        z = torch.where(bmask(ok1, z), z, z2)
        fallback = fallback.masked_fill(~ok1 & ok2, 2)
    # d = -H M z as a row, z^T (HM)^T: n is the contiguous dimension of (HM)^T when H's product
    # returns the row layout (the built-in approximations)
    dvec = -bmm(z.unsqueeze(1), HM64.transpose(1, 2))[:, 0]
    stat = dvec.norm(dim=1) if l2 else dvec.abs().amax(dim=1)
    stat = torch.where(fallback >= 0, stat, torch.inf).to(ci.dtype)
    return StationarityResult(stat, counts, fallback)
