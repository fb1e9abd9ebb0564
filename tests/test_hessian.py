"""Property tests of the inverse-Hessian approximations in ``ncvx_core/hessian.py`` (spec section 4).

All tests are batched (B >= 2) with mixed update masks; data are drawn from a torch generator
seeded by Hypothesis so every example is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ncvx_core.hessian import BFGS, LBFGS, LBFGSState, damp, regularize, state_put, state_rows

DT = torch.float64
CPU = torch.device("cpu")

seeds = st.integers(0, 2**31 - 1)


batch = st.integers(2, 5)
dims = st.integers(1, 6)


# ----------------------------------------------------------------------------------------------
# helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=DT)


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=DT)


def _spd(g: torch.Generator, B: int, n: int, lo: float = 0.5, hi: float = 2.0) -> torch.Tensor:
    """(B, n, n) exactly symmetric positive definite matrices with eigenvalues in [lo, hi]."""
    Q, _ = torch.linalg.qr(_randn(g, B, n, n))
    lam = lo + (hi - lo) * _rand(g, B, n)
    M = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
    return 0.5 * (M + M.transpose(1, 2))


def _mask(g: torch.Generator, B: int, p: float = 0.6, at_least_one: bool = True) -> torch.Tensor:
    m = _rand(g, B) < p
    if at_least_one and not bool(m.any()):
        m[0] = True
    return m


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _bmv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.bmm(M, v.unsqueeze(2)).squeeze(2)


def _is_pd(H: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky_ex(H).info == 0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _ref_bfgs(H: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Textbook product form of the inverse BFGS update (one problem)."""
    rho = 1.0 / (s @ y)
    n = len(s)
    V = np.eye(n) - rho * np.outer(y, s)
    return V.T @ H @ V + rho * np.outer(s, s)


def _two_loop(pairs: list[tuple[np.ndarray, np.ndarray]], gamma: float, v: np.ndarray) -> np.ndarray:
    """Naive single-problem, single-vector L-BFGS two-loop recursion (pairs oldest first)."""
    q = v.copy()
    alphas = []
    for s, y in reversed(pairs):
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q = q - a * y
    r = gamma * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        b = (y @ r) / (s @ y)
        r = r + s * (a - b)
    return r


def _two_loop_dense(pairs, gamma: float, n: int) -> np.ndarray:
    return np.stack([_two_loop(pairs, gamma, e) for e in np.eye(n)], axis=1)


def _requests(g: torch.Generator, B: int, n: int):
    """One batch of update requests ``(s, y, mask, neg)``: positive curvature except where ``neg``
    (about 30 %, y flipped), mask with about 60 % set (possibly none)."""
    s = _randn(g, B, n)
    y = _bmv(_spd(g, B, n), s)
    mask = _mask(g, B, at_least_one=False)
    neg = _rand(g, B) < 0.3
    return s, torch.where(neg.unsqueeze(1), -y, y), mask, neg


def _states_equal_rows(a, b, rows) -> bool:
    """Tensor fields equal on ``rows``; other fields (flags) equal outright."""
    return all(torch.equal(fa[rows], fb[rows]) if isinstance(fa, torch.Tensor) else fa == fb for fa, fb in zip(a, b))


# ----------------------------------------------------------------------------------------------
# full-memory BFGS
@given(seed=seeds, B=batch, n=dims, damped_case=st.booleans(), scale=st.booleans())
def test_bfgs_accepted_update_symmetric_pd_and_inverse_secant(seed, B, n, damped_case, scale):
    g = _gen(seed)
    H0 = _spd(g, B, n)
    s = _randn(g, B, n)
    if damped_case:
        delta = [1e-4, 0.01, 0.2, 0.5][seed % 4]
        # s'y = t * s'H0 s with t < delta: damping must fire, including s'y < 0
        sHs = _bdot(s, _bmv(H0, s))
        t = -2.0 + (delta / 2 + 2.0) * _rand(g, B)
        y = _randn(g, B, n)
        y = y + ((t * sHs - _bdot(s, y)) / _bdot(s, s)).unsqueeze(1) * s
    else:
        delta = 1e-4
        y = _bmv(_spd(g, B, n), s)  # s'y >= 0.5 |s|^2 >> delta s'H s
    mask = _mask(g, B)
    bfgs = BFGS(damping=delta)
    st0 = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=scale)
    st1, info = bfgs.update(st0, s, y, mask)

    y_used, sty_used, damped = damp(s, y, _bmv(H0, s), delta)
    assert torch.equal(damped, torch.full((B,), damped_case))
    assert bool((sty_used > 0).all())
    assert torch.equal(info.code, torch.where(mask, 0, -1).to(torch.int8))
    assert torch.equal(info.damped, damped & mask)

    H1 = st1.H
    assert torch.equal(H1[~mask], H0[~mask])
    Hm = H1[mask]
    scale_ = Hm.abs().amax()
    assert float((Hm - Hm.transpose(1, 2)).abs().amax()) <= 1e-13 * float(scale_)
    assert bool(_is_pd(Hm).all())
    assert bool((torch.linalg.eigvalsh(Hm) > 0).all())
    # inverse secant equation with the damped y
    res = _bmv(Hm, y_used[mask]) - s[mask]
    bound = 1e-10 * (torch.linalg.matrix_norm(Hm, ord=2) * y_used[mask].norm(dim=1) + s[mask].norm(dim=1))
    assert bool((res.norm(dim=1) <= bound).all()), (res.norm(dim=1), bound)


@given(seed=seeds, B=batch, n=dims)
def test_bfgs_matches_textbook_formula_and_initial_scaling(seed, B, n):
    g = _gen(seed)
    H0 = _spd(g, B, n)
    bfgs = BFGS(damping=0.0)
    st_scaled = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=True)
    st_plain = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=False)
    ref_s = [H0[b].numpy().copy() for b in range(B)]
    ref_p = [H0[b].numpy().copy() for b in range(B)]
    pending = [True] * B
    for _step in range(4):
        # a non-positive-curvature request must not consume the initial scaling
        s, y, mask, neg = _requests(g, B, n)
        st_scaled, info_s = bfgs.update(st_scaled, s, y, mask)
        st_plain, info_p = bfgs.update(st_plain, s, y, mask)
        exp_code = torch.where(mask, torch.where(neg, 2, 0), -1).to(torch.int8)
        assert torch.equal(info_s.code, exp_code)
        assert torch.equal(info_p.code, exp_code)
        for b in range(B):
            if not mask[b] or neg[b]:
                continue
            sb, yb = s[b].numpy(), y[b].numpy()
            if pending[b]:
                gamma = (sb @ yb) / (yb @ yb)
                ref_s[b] = gamma * ref_s[b]
                pending[b] = False
            ref_s[b] = _ref_bfgs(ref_s[b], sb, yb)
            ref_p[b] = _ref_bfgs(ref_p[b], sb, yb)
        assert st_scaled.scale_pending.tolist() == pending
        assert not bool(st_plain.scale_pending.any())
        for b in range(B):
            assert _rel(st_scaled.H[b], torch.from_numpy(ref_s[b])) < 1e-10
            assert _rel(st_plain.H[b], torch.from_numpy(ref_p[b])) < 1e-10


@given(seed=seeds, B=batch, n=dims)
def test_bfgs_identity_start_scaling_matches_textbook_formula(seed, B, n):
    """Without H0 the state starts at I and the pending scaling is applied to the diagonal only;
    the iterates must equal the dense textbook recursion (gamma I, then BFGS) problem by problem."""
    g = _gen(seed)
    bfgs = BFGS(damping=0.0)
    st = bfgs.init(B, n, DT, CPU, scaleH0=True)
    assert st.h0_identity
    ref = [np.eye(n) for _ in range(B)]
    pending = [True] * B
    for _step in range(4):
        s, y, mask, neg = _requests(g, B, n)
        st, info = bfgs.update(st, s, y, mask)
        assert torch.equal(info.code, torch.where(mask, torch.where(neg, 2, 0), -1).to(torch.int8))
        for b in range(B):
            if not mask[b] or neg[b]:
                continue
            sb, yb = s[b].numpy(), y[b].numpy()
            if pending[b]:
                ref[b] = (sb @ yb) / (yb @ yb) * ref[b]
                pending[b] = False
            ref[b] = _ref_bfgs(ref[b], sb, yb)
        assert st.scale_pending.tolist() == pending
        for b in range(B):
            if pending[b]:  # never updated: still exactly I
                assert torch.equal(st.H[b], torch.eye(n, dtype=DT))
            else:
                assert _rel(st.H[b], torch.from_numpy(ref[b])) < 1e-10


def test_bfgs_update_that_would_overflow_is_rejected_with_code_3():
    bfgs = BFGS(damping=0.0)
    st0 = bfgs.init(2, 3, DT, CPU, scaleH0=False)
    s = torch.tensor([[1e200, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=DT)
    y = torch.tensor([[1e-200, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=DT)  # s'y = 1 but s s' / s'y = 1e400
    st1, info = bfgs.update(st0, s, y, torch.tensor([True, True]))
    assert info.code.tolist() == [3, 0]
    assert torch.equal(st1.H[0], st0.H[0])
    assert bool(torch.isfinite(st1.H).all())


def test_bfgs_first_update_scales_by_gamma_exactly_once():
    n = 3
    bfgs = BFGS(damping=0.0)
    st0 = bfgs.init(2, n, DT, CPU, scaleH0=True)
    s = torch.tensor([[1.0, 0, 0], [0, 2.0, 0]], dtype=DT)
    y = 4.0 * s  # gamma = s'y / y'y = 1/4; H0 = I -> gamma I satisfies the secant already
    st1, info = bfgs.update(st0, s, y, torch.tensor([True, True]))
    assert info.code.tolist() == [0, 0]
    # (gamma I) updated with a pair it already satisfies stays gamma I
    assert torch.allclose(st1.H, 0.25 * torch.eye(n, dtype=DT).expand(2, n, n), rtol=0, atol=1e-15)
    # the second update is not scaled: same pair again leaves H unchanged
    st2, _ = bfgs.update(st1, s, y, torch.tensor([True, True]))
    assert torch.allclose(st2.H, st1.H, rtol=0, atol=1e-15)
    # without initial scaling H0 = I is updated, not scaled
    st0p = bfgs.init(2, n, DT, CPU, scaleH0=False)
    st1p, _ = bfgs.update(st0p, s, y, torch.tensor([True, True]))
    assert torch.allclose(st1p.H[0, 0, 0], torch.tensor(0.25, dtype=DT))
    assert torch.allclose(st1p.H[0, 1, 1], torch.tensor(1.0, dtype=DT))


@given(seed=seeds, B=batch, n=dims, identity=st.booleans(), scale=st.booleans())
def test_bfgs_inplace_mode_matches_the_copying_update(seed, B, n, identity, scale):
    """In-place states (one product and one rank-2 update per problem, written into H) give the
    same H and codes as the batched copying update; skipped problems keep H bit for bit."""
    g = _gen(seed)
    H0 = None if identity else _spd(g, B, n)
    ref, inp = BFGS(inplace_min_n=None), BFGS(inplace_min_n=1)
    st_r = ref.init(B, n, DT, CPU, H0=H0, scaleH0=scale)
    st_i = inp.init(B, n, DT, CPU, H0=H0, scaleH0=scale)
    assert st_i.inplace and not st_r.inplace
    H_storage = st_i.H
    for _step in range(4):
        s = _randn(g, B, n)
        y = _bmv(_spd(g, B, n), s)
        y = torch.where((_rand(g, B) < 0.3).unsqueeze(1), -y, y)
        mask = _mask(g, B, at_least_one=False)
        V = _randn(g, B, n, 3)
        # the per-problem product equals the batched one on the same H, up to rounding relative
        # to |H| |V|
        err = (inp.matmul(st_i, V) - torch.bmm(st_i.H, V)).flatten(1).norm(dim=1)
        scale_hv = st_i.H.flatten(1).norm(dim=1) * V.flatten(1).norm(dim=1)
        assert bool((err <= 1e-13 * scale_hv).all())
        before = st_i.H.clone()
        st_r, info_r = ref.update(st_r, s, y, mask)
        st_i, info_i = inp.update(st_i, s, y, mask)
        assert st_i.H is H_storage  # written in place
        assert torch.equal(info_i.code, info_r.code) and torch.equal(info_i.damped, info_r.damped)
        assert torch.equal(st_i.scale_pending, st_r.scale_pending)
        skipped = info_i.code < 0
        skipped |= info_i.code >= 2
        assert torch.equal(st_i.H[skipped], before[skipped])
        assert _rel(st_i.H, st_r.H) < 1e-12


@given(seed=seeds, B=batch, n=dims, inplace=st.booleans(), scale=st.booleans(), c=st.integers(1, 3))
def test_bfgs_update_apply_returns_the_updated_product(seed, B, n, inplace, scale, c):
    """``update_apply`` gives the same state and codes as ``update`` and ``H+ X`` equal to the
    product with the updated H (damped, skipped and scaled problems included)."""
    g = _gen(seed)
    H0 = _spd(g, B, n)
    bfgs = BFGS(damping=0.2, inplace_min_n=1 if inplace else None)
    st_a = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=scale)
    st_b = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=scale)
    for _step in range(3):
        s, y, mask, _neg = _requests(g, B, n)
        X = _randn(g, B, n, c)
        st_a, info_a, HX = bfgs.update_apply(st_a, s, y, mask, X)
        st_b, info_b = bfgs.update(st_b, s, y, mask)
        assert torch.equal(info_a.code, info_b.code) and torch.equal(st_a.H, st_b.H)
        err = (HX - torch.bmm(st_a.H, X)).flatten(1).norm(dim=1)
        assert bool((err <= 1e-12 * st_a.H.flatten(1).norm(dim=1) * X.flatten(1).norm(dim=1)).all())


@given(seed=seeds, B=st.integers(3, 6), n=dims)
def test_bfgs_inplace_views_touch_only_their_rows(seed, B, n):
    g = _gen(seed)
    inp, ref = BFGS(inplace_min_n=1), BFGS(inplace_min_n=None)
    H0 = _spd(g, B, n)
    full = inp.init(B, n, DT, CPU, H0=H0, scaleH0=True)
    full_r = ref.init(B, n, DT, CPU, H0=H0, scaleH0=True)
    idx = torch.tensor(sorted(torch.randperm(B, generator=g)[: B - 1].tolist()))
    view = state_rows(full, idx)
    assert view.H is full.H and view.rows == tuple(idx.tolist())
    k = idx.numel()
    s = _randn(g, k, n)
    y = _bmv(_spd(g, k, n), s)
    mask = torch.ones(k, dtype=torch.bool)
    V = _randn(g, k, n, 2)
    assert torch.allclose(inp.matmul(view, V), torch.bmm(H0[idx], V), rtol=1e-12, atol=1e-12)
    untouched = torch.ones(B, dtype=torch.bool)
    untouched[idx] = False
    view, info = inp.update(view, s, y, mask)
    sub_r, info_r = ref.update(state_rows(full_r, idx), s, y, mask)
    assert torch.equal(info.code, info_r.code)
    assert torch.equal(full.H[untouched], H0[untouched])
    assert _rel(full.H[idx], sub_r.H) < 1e-12
    assert torch.equal(inp.dense(view), full.H[idx])
    merged = state_put(full, idx, view)
    assert merged.H is full.H
    expect = full.scale_pending.clone()
    expect[idx] = view.scale_pending
    assert torch.equal(merged.scale_pending, expect)
    # nested views compose their positions
    inner = state_rows(view, torch.tensor([k - 1]))
    assert inner.rows == (int(idx[-1]),)


SKIP_KINDS = ["neg_curv", "masked", "ok"]


@given(seed=seeds, B=st.integers(3, 6), n=dims, kinds=st.lists(st.sampled_from(SKIP_KINDS), min_size=6, max_size=6),
       pending=st.booleans())
def test_bfgs_skipped_updates_leave_state_bit_identical(seed, B, n, kinds, pending):
    g = _gen(seed)
    kinds = kinds[:B]
    H0 = _spd(g, B, n)
    s = _randn(g, B, n)
    y = _bmv(_spd(g, B, n), s)
    mask = torch.ones(B, dtype=torch.bool)
    for b, kind in enumerate(kinds):
        if kind == "neg_curv":
            y[b] = -y[b] if b % 2 else torch.zeros(n, dtype=DT)  # s'y < 0 or s'y = 0
        elif kind == "masked":
            mask[b] = False
    bfgs = BFGS(damping=0.0)
    st0 = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=pending)
    st1, info = bfgs.update(st0, s, y, mask)
    exp = {"neg_curv": 2, "masked": -1, "ok": 0}
    assert info.code.tolist() == [exp[k] for k in kinds]
    skipped = torch.tensor([k != "ok" for k in kinds])
    assert _states_equal_rows(st0, st1, skipped)
    ok = ~skipped
    if bool(ok.any()):
        assert not torch.equal(st1.H[ok], st0.H[ok])
        assert not bool(st1.scale_pending[ok].any())


@given(seed=seeds, B=st.integers(2, 5), n=st.integers(2, 6), where=st.sampled_from(["s", "y"]),
       val=st.sampled_from([math.nan, math.inf, -math.inf]), pending=st.booleans(),
       damping=st.sampled_from([0.0, 1e-4]))
def test_bfgs_nonfinite_step_is_code_3_and_leaves_state_bit_identical(seed, B, n, where, val, pending, damping):
    g = _gen(seed)
    H0 = _spd(g, B, n)
    s = _randn(g, B, n)
    y = _bmv(_spd(g, B, n), s)
    (s if where == "s" else y)[0, 1] = val
    bfgs = BFGS(damping=damping)
    st0 = bfgs.init(B, n, DT, CPU, H0=H0, scaleH0=pending)
    st1, info = bfgs.update(st0, s, y, torch.ones(B, dtype=torch.bool))
    assert int(info.code[0]) == 3
    assert torch.equal(st1.H[0], st0.H[0])
    assert torch.equal(st1.scale_pending[0], st0.scale_pending[0])
    assert bool(torch.isfinite(st1.H).all())
    assert info.code[1:].tolist() == [0] * (B - 1)
    assert not bool(st1.scale_pending[1:].any())


def test_bfgs_nan_step_gives_code_3():
    bfgs = BFGS()
    st0 = bfgs.init(2, 3, DT, CPU, scaleH0=False)
    s = torch.tensor([[math.nan, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=DT)
    y = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=DT)
    _, info = bfgs.update(st0, s, y, torch.tensor([True, True]))
    assert info.code.tolist() == [3, 0]


def test_bfgs_nonfinite_rejection_keeps_scale_pending():
    bfgs = BFGS()
    st0 = bfgs.init(2, 3, DT, CPU, scaleH0=True)
    s = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]], dtype=DT)
    y = torch.tensor([[1.0, 2.0, math.inf], [1.0, 0.0, 0.0]], dtype=DT)  # s'y = +inf
    st1, info = bfgs.update(st0, s, y, torch.tensor([True, False]))
    assert info.code.tolist() == [3, -1]
    assert torch.equal(st1.H, st0.H)
    assert torch.equal(st1.scale_pending, st0.scale_pending)


# ----------------------------------------------------------------------------------------------
# damping
@given(seed=seeds, B=batch, n=dims, delta=st.sampled_from([1e-4, 1e-2, 0.2, 0.5, 0.9]))
def test_damp_exact_curvature_and_passthrough(seed, B, n, delta):
    g = _gen(seed)
    H = _spd(g, B, n)
    s = _randn(g, B, n)
    y = _randn(g, B, n) * (1 + 3 * _rand(g, B, 1))
    h = _bmv(H, s)
    sty, sth = _bdot(s, y), _bdot(s, h)
    y_new, sty_new, damped = damp(s, y, h, delta)
    assert torch.equal(damped, sty < delta * sth)
    # undamped rows: y untouched and the returned s'y is the plain inner product
    assert torch.equal(y_new[~damped], y[~damped])
    assert torch.equal(sty_new[~damped], sty[~damped])
    # damped rows: the returned s'y is delta * s'Hs exactly, and y_new realises it
    assert torch.equal(sty_new[damped], delta * sth[damped])
    real = _bdot(s, y_new)
    scale = sty.abs() + sth.abs()
    assert bool(((real - delta * sth).abs() <= 1e-12 * scale)[damped].all())
    # delta = 0 disables damping
    y0, sty0, d0 = damp(s, y, h, 0.0)
    assert torch.equal(y0, y) and torch.equal(sty0, sty) and not bool(d0.any())


@given(seed=seeds, B=batch, n=dims, delta=st.sampled_from([1e-4, 1e-2, 0.2, 0.5]), scale=st.booleans())
def test_bfgs_damped_single_update_positive_definite_for_any_y(seed, B, n, delta, scale):
    g = _gen(seed)
    bfgs = BFGS(damping=delta)
    state = bfgs.init(B, n, DT, CPU, H0=_spd(g, B, n), scaleH0=scale)
    s = _randn(g, B, n)
    y = 3 * _randn(g, B, n)  # arbitrary, frequently s'y < 0
    mask = _mask(g, B)
    state, info = bfgs.update(state, s, y, mask)
    assert torch.equal(info.code, torch.where(mask, 0, -1).to(torch.int8))
    assert bool(_is_pd(state.H).all())


@given(seed=seeds, B=batch, n=dims, delta=st.sampled_from([0.2, 0.5]), steps=st.integers(1, 6))
def test_bfgs_damped_sequence_stays_positive_definite(seed, B, n, delta, steps):
    # with a small delta, adversarial y can legitimately grow cond(H) by ~1/delta per step, so
    # sequences are only checked with Nocedal-Wright-sized damping
    g = _gen(seed)
    bfgs = BFGS(damping=delta)
    state = bfgs.init(B, n, DT, CPU, scaleH0=bool(seed % 2))
    for _ in range(steps):
        s = _randn(g, B, n)
        y = 3 * _randn(g, B, n)
        state, info = bfgs.update(state, s, y, _mask(g, B))
        assert bool(((info.code == 0) | (info.code == -1)).all()), info.code
        assert bool(_is_pd(state.H).all())
        asym = (state.H - state.H.transpose(1, 2)).abs().amax(dim=(1, 2))
        assert bool((asym <= 1e-10 * state.H.abs().amax(dim=(1, 2))).all())  # round-off only


# ----------------------------------------------------------------------------------------------
# L-BFGS
def _run_lbfgs(seed, B, n, m, K, *, p_mask=0.7, damping=0.0, scaleH0=True, fixed=True, neg_p=0.0):
    """Feed K random updates; return (lbfgs, state, per-problem accepted pair lists, per-step data)."""
    g = _gen(seed)
    lb = LBFGS(m, damping=damping, scaleH0=scaleH0, fixed_scaling=fixed)
    state = lb.init(B, n, DT, CPU)
    pairs = [[] for _ in range(B)]
    steps = []
    for _ in range(K):
        s = _randn(g, B, n) * (0.2 + 2 * _rand(g, B, 1))
        y = _bmv(_spd(g, B, n, 0.3, 3.0), s)
        neg = _rand(g, B) < neg_p
        y = torch.where(neg.unsqueeze(1), -y, y)
        mask = _mask(g, B, p_mask, at_least_one=False)
        state, info = lb.update(state, s, y, mask)
        exp = torch.where(mask, torch.where(neg, 2, 0), -1).to(torch.int8)
        assert torch.equal(info.code, exp)
        for b in range(B):
            if mask[b] and not neg[b]:
                pairs[b].append((s[b].numpy().copy(), y[b].numpy().copy()))
        steps.append((s, y, mask & ~neg))
    return lb, state, pairs, steps


def _expected_gamma(pairs, scaleH0, fixed):
    if not scaleH0 or not pairs:
        return 1.0
    s, y = pairs[0] if fixed else pairs[-1]
    return float((s @ y) / (y @ y))


@given(seed=seeds, B=batch, n=dims, m=st.integers(1, 5), K=st.integers(0, 9), c=st.integers(1, 3),
       scaleH0=st.booleans(), fixed=st.booleans())
def test_lbfgs_matmul_equals_naive_two_loop(seed, B, n, m, K, c, scaleH0, fixed):
    lb, state, pairs, _ = _run_lbfgs(seed, B, n, m, K, scaleH0=scaleH0, fixed=fixed, neg_p=0.2)
    V = _randn(_gen(seed + 1), B, n, c)
    HV = lb.matmul(state, V)
    Hd = lb.dense(state)
    for b in range(B):
        kept = pairs[b][-m:]
        gamma = _expected_gamma(pairs[b], scaleH0, fixed)
        assert int(state.count[b]) == len(kept)
        assert math.isclose(float(state.gamma[b]), gamma, rel_tol=1e-14)
        ref = _two_loop_dense(kept, gamma, n)
        assert _rel(Hd[b], torch.from_numpy(ref)) < 1e-10
        refV = ref @ V[b].numpy()
        assert _rel(HV[b], torch.from_numpy(refV)) < 1e-10


@given(seed=seeds, B=st.integers(2, 5), n=dims, m=st.integers(1, 5), K=st.integers(0, 9), c=st.integers(1, 3))
def test_lbfgs_matmul_of_a_problem_does_not_depend_on_its_batch(seed, B, n, m, K, c):
    """H V of each problem, bit for bit the same alone as in its batch (the products with S and Y
    run on row blocks; a single column is padded, as utils.bmm pads it)."""
    lb, state, _, _ = _run_lbfgs(seed, B, n, m, K, scaleH0=True, fixed=True, neg_p=0.2)
    V = _randn(_gen(seed + 2), B, n, c)
    HV = lb.matmul(state, V)
    assert HV.shape == (B, n, c)
    for b in range(B):
        one = lb.matmul(state_rows(state, torch.tensor([b])), V[b:b + 1])
        assert torch.equal(one[0], HV[b])


@given(seed=seeds, B=batch, n=dims, m=st.integers(1, 5), K=st.integers(0, 12), damping=st.sampled_from([0.0, 1e-4, 0.3]))
def test_lbfgs_updated_inner_products_equal_recomputed_ones(seed, B, n, m, K, damping):
    """The state's S Y^T and Y Y^T, shifted and extended by one row and column per stored pair,
    equal the products of the memories recomputed from scratch (masked and rejected pairs included)."""
    from ncvx_core.hessian import _inner

    lb, state, _, _ = _run_lbfgs(seed, B, n, m, K, damping=damping, neg_p=0.3 if damping == 0 else 0.0)
    SY, YY = _inner(state.S, state.Y)
    torch.testing.assert_close(state.SY, SY, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.YY, YY, rtol=1e-12, atol=1e-12)
    V = _randn(_gen(seed + 2), B, n, 2)
    torch.testing.assert_close(lb.matmul(state, V), lb.matmul(state._replace(SY=None, YY=None), V),
                               rtol=1e-10, atol=1e-12)


@given(seed=seeds, B=batch, n=dims, K=st.integers(1, 7))
def test_lbfgs_equals_full_bfgs_when_memory_suffices(seed, B, n, K):
    lb, state, pairs, steps = _run_lbfgs(seed, B, n, K, K, scaleH0=False)
    bfgs = BFGS(damping=0.0)
    fs = bfgs.init(B, n, DT, CPU, scaleH0=False)
    for s, y, mask in steps:
        fs, _ = bfgs.update(fs, s, y, mask)
    Hl = lb.dense(state)
    for b in range(B):
        assert _rel(Hl[b], fs.H[b]) < 1e-10


@given(seed=seeds, B=batch, n=dims, m=st.integers(1, 4))
def test_lbfgs_fifo_keeps_only_last_m_pairs(seed, B, n, m):
    K = m + 3
    lb, state, pairs, steps = _run_lbfgs(seed, B, n, m, K, p_mask=1.0)
    assert state.count.tolist() == [m] * B
    # fresh memory fed only the last m pairs, then given the same gamma
    fresh = LBFGS(m, damping=0.0, scaleH0=False)
    fst = fresh.init(B, n, DT, CPU)
    for s, y, mask in steps[-m:]:
        fst, info = fresh.update(fst, s, y, mask)
    fst = fst._replace(gamma=state.gamma.clone())
    assert _rel(lb.dense(state), fresh.dense(fst)) < 1e-12
    assert torch.equal(fst.S, state.S) and torch.equal(fst.Y, state.Y)


@given(seed=seeds, B=batch, n=dims, m=st.integers(1, 5), K=st.integers(1, 8), damping=st.sampled_from([0.0, 1e-4, 0.3]))
def test_lbfgs_secant_on_newest_pair(seed, B, n, m, K, damping):
    lb, state, pairs, _ = _run_lbfgs(seed, B, n, m, K, damping=damping, neg_p=0.3 if damping == 0 else 0.0)
    Hy = lb.matmul(state, state.Y[:, -1:, :].transpose(1, 2)).squeeze(2)
    s = state.S[:, -1, :]
    has = state.count > 0
    res = (Hy - s).norm(dim=1)
    assert bool((res[has] <= 1e-10 * (s.norm(dim=1)[has] + Hy.norm(dim=1)[has])).all()), res


@given(seed=seeds, B=batch, n=dims, delta=st.sampled_from([1e-4, 0.2]))
def test_lbfgs_stores_damped_pair(seed, B, n, delta):
    lb, state, _, _ = _run_lbfgs(seed, B, n, 3, 2, p_mask=1.0)
    lb = LBFGS(3, damping=delta)
    g = _gen(seed + 7)
    s = _randn(g, B, n)
    y = -_randn(g, B, n).abs() * s.sign()  # s'y < 0: damped for every problem
    h = lb.matmul(state, s.unsqueeze(2)).squeeze(2)
    y_exp, _, damped = damp(s, y, h, delta)
    st1, info = lb.update(state, s, y, torch.ones(B, dtype=torch.bool))
    assert bool(damped.all()) and bool(info.damped.all())
    assert info.code.tolist() == [0] * B
    assert torch.equal(st1.Y[:, -1], y_exp)
    assert torch.equal(st1.S[:, -1], s)


LB_SKIPS = ["neg_curv", "masked", "nan_s", "inf_s", "nan_y", "inf_y", "ok"]


@given(seed=seeds, n=st.integers(1, 5), kinds=st.lists(st.sampled_from(LB_SKIPS), min_size=2, max_size=7),
       damping=st.sampled_from([0.0, 1e-4]), prefill=st.integers(0, 4))
def test_lbfgs_skipped_updates_leave_state_bit_identical(seed, n, kinds, damping, prefill):
    B = len(kinds)
    lb0, state, _, _ = _run_lbfgs(seed, B, n, 3, prefill, p_mask=0.5)
    lb = LBFGS(3, damping=damping)
    g = _gen(seed + 3)
    s = _randn(g, B, n)
    y = _bmv(_spd(g, B, n), s)
    mask = torch.ones(B, dtype=torch.bool)
    exp = []
    for b, kind in enumerate(kinds):
        if kind == "neg_curv":
            if damping > 0:  # damping would repair it; use s'y = 0 with h = 0 impossible: mask instead
                kind = "masked"
            else:
                y[b] = -y[b]
        if kind == "masked":
            mask[b] = False
        elif kind.endswith("_s"):
            s[b, b % n] = math.nan if kind.startswith("nan") else math.inf
        elif kind.endswith("_y"):
            y[b, b % n] = math.nan if kind.startswith("nan") else -math.inf
        exp.append({"neg_curv": 2, "masked": -1, "ok": 0}.get(kind, 3))
    st1, info = lb.update(state, s, y, mask)
    assert info.code.tolist() == exp
    skipped = torch.tensor([e != 0 for e in exp])
    assert _states_equal_rows(state, st1, skipped)
    for f in st1:
        if f.is_floating_point():
            assert bool(torch.isfinite(f).all())
    ok = ~skipped
    assert torch.equal(st1.count[ok], (state.count[ok] + 1).clamp(max=3))


@given(seed=seeds, B=batch, n=dims, m=st.integers(1, 5), K=st.integers(0, 8), fixed=st.booleans(),
       more=st.integers(1, 4))
def test_lbfgs_warm_start_reproduces_state_and_continuation(seed, B, n, m, K, fixed, more):
    lb, state, _, _ = _run_lbfgs(seed, B, n, m, K, fixed=fixed)
    warm = lb.init(B, n, DT, CPU, warm_start=state)
    V = _randn(_gen(seed + 11), B, n, 2)
    assert torch.allclose(lb.matmul(warm, V), lb.matmul(state, V), rtol=1e-13, atol=1e-13)
    for name in ("S", "Y", "rho", "gamma", "count", "scale_pending"):
        assert torch.equal(getattr(warm, name), getattr(state, name)), name
    # continuing from the warm start = continuing the original run
    g = _gen(seed + 5)
    a_st, b_st = state, warm
    for _ in range(more):
        s = _randn(g, B, n)
        y = _bmv(_spd(g, B, n), s)
        mask = _mask(g, B)
        a_st, ia = lb.update(a_st, s, y, mask)
        b_st, ib = lb.update(b_st, s, y, mask)
        assert torch.equal(ia.code, ib.code)
    assert torch.allclose(lb.dense(a_st), lb.dense(b_st), rtol=1e-12, atol=1e-13)
    assert torch.equal(a_st.gamma, b_st.gamma)


@given(seed=seeds, n=dims, k=st.integers(1, 6), m=st.integers(1, 6), gamma=st.floats(0.1, 10))
def test_lbfgs_warm_start_from_dict_keeps_first_m_pairs(seed, n, k, m, gamma):
    g = _gen(seed)
    S = _randn(g, k, n)
    Y = _bmv(_spd(g, k, n), S)
    pairs = [(S[j].numpy(), Y[j].numpy()) for j in range(k)]
    lb = LBFGS(m, damping=0.0)
    # reference layout: one problem, (n, k) columns, oldest first; broadcast over B = 3 problems
    warm = lb.init(3, n, DT, CPU, warm_start={"S": S.T.clone(), "Y": Y.T.clone(), "gamma": gamma})
    assert warm.count.tolist() == [min(k, m)] * 3
    assert torch.allclose(warm.gamma, torch.full((3,), gamma, dtype=DT))
    ref = _two_loop_dense(pairs[:m], gamma, n)
    Hd = lb.dense(warm)
    for b in range(3):
        assert _rel(Hd[b], torch.from_numpy(ref)) < 1e-10


def test_lbfgs_warm_start_with_invalid_pair_ignores_it():
    # regression: the dead pair's rho was zeroed but its S/Y columns kept and mixed into H
    S = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)  # pairs as rows
    Y = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=DT)  # the second pair has s'y = -1
    lb = LBFGS(3, damping=0.0)
    try:
        warm = lb.init(1, 2, DT, CPU, warm_start={"S": S.T.clone(), "Y": Y.T.clone(), "gamma": 1.0})
    except ValueError:
        return  # rejecting the invalid pair is acceptable too
    ref = _two_loop_dense([(S[0].numpy(), Y[0].numpy())], 1.0, 2)  # = diag(1/2, 1)
    assert _rel(lb.dense(warm)[0], torch.from_numpy(ref)) < 1e-12


@given(seed=seeds, B=st.integers(2, 5), n=dims, m=st.integers(1, 4), K=st.integers(1, 6),
       bad_step=st.integers(0, 5), val=st.sampled_from([math.nan, math.inf]))
def test_lbfgs_nonfinite_problem_does_not_affect_others(seed, B, n, m, K, bad_step, val):
    bad = seed % B
    g = _gen(seed)
    lb = LBFGS(m, damping=1e-4)
    full = lb.init(B, n, DT, CPU)
    keep = torch.tensor([b for b in range(B) if b != bad])
    part = lb.init(B - 1, n, DT, CPU)
    bad_step = bad_step % K
    for k in range(K):
        s = _randn(g, B, n)
        y = _bmv(_spd(g, B, n), s)
        mask = _mask(g, B)
        if k == bad_step:
            s[bad, 0] = val
            mask[bad] = True
        before = tuple(f[bad].clone() for f in full)
        full, info = lb.update(full, s, y, mask)
        part, info_p = lb.update(part, s[keep], y[keep], mask[keep])
        assert torch.equal(info.code[keep], info_p.code)
        if k == bad_step:
            assert int(info.code[bad]) == 3
            assert all(torch.equal(a, b[bad]) for a, b in zip(before, full))
        for a, b in zip(full, part):
            assert torch.equal(a[keep], b)
    V = _randn(g, B, n, 2)
    HV = lb.matmul(full, V)
    assert bool(torch.isfinite(HV).all())
    assert torch.allclose(HV[keep], lb.matmul(part, V[keep]), rtol=1e-14, atol=1e-14)


@given(seed=seeds, B=st.integers(2, 5), n=dims, K=st.integers(1, 5))
def test_bfgs_nonfinite_problem_does_not_affect_others(seed, B, n, K):
    bad = seed % B
    g = _gen(seed)
    bfgs = BFGS()
    full = bfgs.init(B, n, DT, CPU)
    keep = torch.tensor([b for b in range(B) if b != bad])
    part = bfgs.init(B - 1, n, DT, CPU)
    for k in range(K):
        s = _randn(g, B, n)
        y = _bmv(_spd(g, B, n), s)
        mask = _mask(g, B)
        if k == 0:
            y[bad, 0] = math.nan
        full, info = bfgs.update(full, s, y, mask)
        part, info_p = bfgs.update(part, s[keep], y[keep], mask[keep])
        assert torch.equal(info.code[keep], info_p.code)
        assert torch.equal(full.H[keep], part.H)
    assert bool(torch.isfinite(full.H).all())


def test_lbfgs_initial_state_is_identity_and_rejects_bad_arguments():
    lb = LBFGS(4)
    st0 = lb.init(3, 5, DT, CPU)
    V = _randn(_gen(0), 3, 5, 2)
    assert torch.equal(lb.matmul(st0, V), V)
    assert isinstance(st0, LBFGSState)
    with pytest.raises(ValueError):
        LBFGS(0)
    with pytest.raises(ValueError):
        lb.init(3, 5, DT, CPU, H0=torch.eye(5, dtype=DT))
    with pytest.raises(ValueError):
        BFGS().init(3, 5, DT, CPU, warm_start=st0)


# ----------------------------------------------------------------------------------------------
# regularisation
@given(seed=seeds, B=st.integers(2, 6), n=st.integers(2, 6), log_kappa=st.floats(1.0, 6.0),
       max_eig=st.booleans())
def test_regularize_symmetric_and_condition_bounded(seed, B, n, log_kappa, max_eig):
    g = _gen(seed)
    kappa = 10.0**log_kappa
    Q, _ = torch.linalg.qr(_randn(g, B, n, n))
    # half of the problems well conditioned (cond <= kappa / 2), the others cond >= 2 kappa
    ill = _rand(g, B) < 0.5
    top = 10 ** (4 * _rand(g, B) - 2)
    spread = torch.where(ill, 2 * kappa * 10 ** (2 * _rand(g, B)), 1 + (kappa / 2 - 1) * _rand(g, B))
    u = _rand(g, B, n)
    u[:, 0], u[:, 1] = 0.0, 1.0
    lam = top.unsqueeze(1) * spread.unsqueeze(1) ** (-u)  # eigenvalues in [top/spread, top]
    H = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
    H = 0.5 * (H + H.transpose(1, 2))
    Hr, changed = regularize(H, kappa, max_eigenvalues=max_eig)
    assert torch.equal(changed, ill)
    assert torch.equal(Hr[~ill], H[~ill])
    # a non-finite matrix is passed through unchanged and does not disturb the others
    Hn = H.clone()
    Hn[0, 0, 0] = math.nan
    Hrn, changed_n = regularize(Hn, kappa, max_eigenvalues=max_eig)
    assert not bool(changed_n[0]) and torch.equal(changed_n[1:], ill[1:])
    assert torch.equal(Hrn[1:], Hr[1:]) and bool(torch.isnan(Hrn[0, 0, 0]))
    err = (Hr - Hr.transpose(1, 2)).abs().amax(dim=(1, 2))
    assert bool((err <= 1e-13 * Hr.abs().amax(dim=(1, 2))).all())
    lam_r = torch.linalg.eigvalsh(0.5 * (Hr + Hr.transpose(1, 2)))
    cond = lam_r.abs().amax(1) / lam_r.abs().amin(1)
    assert bool((cond[ill] <= kappa * (1 + 1e-6)).all()), (cond, kappa)
    assert bool((lam_r > 0).all())
    # only the offending end of the spectrum moves
    diff = torch.linalg.eigvalsh(Hr - H) if not max_eig else torch.linalg.eigvalsh(H - Hr)
    assert bool((diff >= -1e-9 * top.unsqueeze(1)).all())
    if max_eig:
        assert torch.allclose(lam_r[:, 0], lam.amin(1), rtol=1e-5)
    else:
        assert torch.allclose(lam_r[:, -1], lam.amax(1), rtol=1e-9)


def test_regularize_repairs_tiny_negative_eigenvalue():
    Q, _ = torch.linalg.qr(_randn(_gen(1), 1, 3, 3))
    lam = torch.tensor([[-1e-12, 1.0, 2.0]], dtype=DT)
    H = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
    H = torch.cat([0.5 * (H + H.transpose(1, 2)), torch.eye(3, dtype=DT).unsqueeze(0)])
    Hr, changed = regularize(H, 1e3)
    assert changed.tolist() == [True, False]
    ev = torch.linalg.eigvalsh(Hr[0])
    assert bool((ev >= 2e-3 * (1 - 1e-9)).all()), ev
    assert math.isclose(float(ev[-1]), 2.0, rel_tol=1e-12)


def test_regularize_max_eigenvalues_falls_back_to_raising_on_zero_eigenvalue():
    H = torch.diag_embed(torch.tensor([[0.0, 1.0, 2.0], [1e-3, 1.0, 2.0]], dtype=DT))
    Hr, changed = regularize(H, 100.0, max_eigenvalues=True)
    assert changed.tolist() == [True, True]
    # exact zero eigenvalue: raise the small ones to lambda_max / kappa
    assert torch.allclose(torch.diagonal(Hr[0]), torch.tensor([0.02, 1.0, 2.0], dtype=DT), rtol=1e-12)
    # otherwise: lower the large ones to kappa * lambda_min
    assert torch.allclose(torch.diagonal(Hr[1]), torch.tensor([1e-3, 0.1, 0.1], dtype=DT), rtol=1e-12)


def test_inplace_options_and_inputs_are_checked():
    for bad in (0, -3, 2.5, True, "256"):
        with pytest.raises(ValueError, match="inplace_min_n"):
            BFGS(inplace_min_n=bad)
    bfgs = BFGS(inplace_min_n=1)
    st0 = bfgs.init(2, 3, DT, CPU)
    s = torch.ones(2, 3, dtype=DT)
    for X in (torch.ones(2, 3, dtype=DT), torch.ones(3, 3, 1, dtype=DT), torch.ones(2, 3, 1, dtype=torch.float32),
              "x"):
        with pytest.raises(ValueError, match="X must be"):
            bfgs.update_apply(st0, s, s, torch.ones(2, dtype=torch.bool), X)
    for idx in (torch.tensor([0.0]), torch.tensor([[0]]), [0]):
        with pytest.raises(ValueError, match="idx must be"):
            state_rows(st0, idx)
        with pytest.raises(ValueError, match="idx must be"):
            state_put(st0, idx, st0)
