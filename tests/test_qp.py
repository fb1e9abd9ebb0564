"""Tests of the batched QP layer (ncvx_core.qp).

Backends are checked against independent numpy references (tests/strategies_qp.py): an exact
face-enumeration oracle on the bordered KKT system, a sort-based exact projection and a scaled
projected-gradient KKT residual.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies_qp import (
    NpQP,
    box_problem,
    mixed_batch,
    np_kkt_scaled,
    np_objective,
    np_project,
    obj_scale,
    oracle,
    pad,
    steering_np,
    steering_problem,
    termination_np,
    termination_problem,
    to_boxqp,
    var_scale,
)
from torch import Tensor

from ncvx_core.qp import (
    QP_SOLVERS,
    AutoQPSolver,
    BoxQP,
    EnumQPSolver,
    IPMQPSolver,
    QPResult,
    QPSolver,
    QPStatus,
    get_qp_solver,
    ipm_qp_layer,
    kkt_residual,
    project_feasible,
    qp_objective,
    validate_qp,
)

HAVE_QPTH = importlib.util.find_spec("qpth") is not None
F64 = torch.float64
#: examples per property test; raise with QP_TEST_EXAMPLES=500 for a stress run
N_EXAMPLES = int(os.environ.get("QP_TEST_EXAMPLES", "40"))
SETTINGS = settings(
    deadline=None, max_examples=N_EXAMPLES, suppress_health_check=[HealthCheck.too_slow]
)

FEAS_TOL = 1e-9
KKT_TOL = 1e-6
OBJ_TOL = 1e-8


def _solvers(box_only_small: bool) -> list[QPSolver]:
    out: list[QPSolver] = [IPMQPSolver(), AutoQPSolver()]
    if box_only_small:
        out.insert(0, EnumQPSolver())
    return out


def check_result(
    probs: list[NpQP], res: QPResult, *, name: str, strict_status: bool = True
) -> None:
    """Feasibility, KKT residual, objective vs the oracle, status."""
    w = res.w.numpy()
    assert res.w.dtype == F64 and res.status.dtype == torch.int8 and res.iters.dtype == torch.int32
    assert np.isfinite(w).all(), name
    for i, p in enumerate(probs):
        s = var_scale(p)
        wi = w[i]
        viol = max(np.max(np.maximum(p.lo - wi, 0) / s), np.max(np.maximum(wi - p.hi, 0) / s))
        assert viol <= FEAS_TOL, (name, i, "bound violation", viol)
        if p.mask.any():
            ev = abs(wi[p.mask].sum() - p.r) / s[p.mask][0]
            assert ev <= FEAS_TOL, (name, i, "equality violation", ev)
        kkt = np_kkt_scaled(p, wi)
        f_ref, _ = oracle(p) if p.m <= 7 else (None, None)
        if strict_status:
            assert res.status[i].item() == QPStatus.SOLVED, (name, i, res.status[i].item(), kkt)
        if res.status[i].item() != QPStatus.FAILED:
            assert kkt <= KKT_TOL, (name, i, "kkt", kkt)
        if f_ref is not None:
            gap = (np_objective(p, wi) - f_ref) / obj_scale(p)
            assert abs(gap) <= OBJ_TOL, (name, i, "objective gap", gap)


# --------------------------------------------------------------------------------------------
# correctness against the oracle
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(steering_problem(max_m=3), min_size=1, max_size=4))
def test_steering_small_all_backends(probs: list[NpQP]) -> None:
    m = max(p.m for p in probs)
    probs = [p for p in probs if p.m == m] or probs[:1]
    qp = to_boxqp(probs)
    for solver in _solvers(True):
        check_result(probs, solver.solve(qp), name=solver.name)


@SETTINGS
@given(st.lists(box_problem(max_m=3), min_size=1, max_size=4))
def test_generic_box_small_all_backends(probs: list[NpQP]) -> None:
    m = max(p.m for p in probs)
    probs = [p for p in probs if p.m == m] or probs[:1]
    qp = to_boxqp(probs)
    for solver in _solvers(True):
        check_result(probs, solver.solve(qp), name=solver.name)


@SETTINGS
@given(st.lists(steering_problem(max_m=7, min_m=4), min_size=1, max_size=3))
def test_steering_larger_ipm(probs: list[NpQP]) -> None:
    m = max(p.m for p in probs)
    probs = [p for p in probs if p.m == m] or probs[:1]
    qp = to_boxqp(probs)
    for solver in _solvers(False):
        check_result(probs, solver.solve(qp), name=solver.name)


@SETTINGS
@given(st.lists(termination_problem(max_m=6), min_size=1, max_size=3))
def test_termination_ipm(probs: list[NpQP]) -> None:
    m = max(p.m for p in probs)
    probs = [pad(p, m) for p in probs]
    qp = to_boxqp(probs)
    for solver in _solvers(False):
        check_result(probs, solver.solve(qp), name=solver.name)


@SETTINGS
@given(mixed_batch(max_m=6, max_b=4))
def test_mixed_batches(probs: list[NpQP]) -> None:
    qp = to_boxqp(probs)
    small_box = qp.m <= 3 and not any(p.mask.any() for p in probs)
    for solver in _solvers(small_box):
        check_result(probs, solver.solve(qp), name=solver.name)


@SETTINGS
@given(st.lists(steering_problem(max_m=3), min_size=1, max_size=6))
def test_enum_ipm_agree(probs: list[NpQP]) -> None:
    m = max(p.m for p in probs)
    probs = [p for p in probs if p.m == m]
    qp = to_boxqp(probs)
    re, ri = EnumQPSolver().solve(qp), IPMQPSolver().solve(qp)
    gam = torch.tensor([obj_scale(p) for p in probs], dtype=F64)
    gap = (qp_objective(qp, re.w) - qp_objective(qp, ri.w)).abs() / gam
    assert gap.max().item() <= OBJ_TOL


def test_termination_realistic_sizes() -> None:
    """m = l(1+p) up to 100, rank-deficient, clustered samples, tiny r; kkt-certified."""
    rng = np.random.default_rng(7)
    probs = []
    for l, p, n in [(10, 0, 20), (25, 1, 20), (50, 1, 30)]:
        for r in (1.0, 1e-6):
            for pieces, noise in [(1, 1e-8), (3, 1e-3), (2, 1.0)]:
                probs.append(termination_np(rng, l=l, p=p, n=n, log_cond=6.0, r=r,
                                            pieces=pieces, noise=noise, redundant_hi=False))
    m = max(p.m for p in probs)
    probs = [pad(p, m) for p in probs]
    res = IPMQPSolver().solve(to_boxqp(probs))
    check_result(probs, res, name="ipm", strict_status=False)
    assert (res.status == QPStatus.SOLVED).float().mean().item() >= 0.9
    assert (res.status != QPStatus.FAILED).all()


def test_l1_termination_fixed_sigma() -> None:
    """l = 1: the single sigma is fixed at r by the equality (with the redundant bound)."""
    rng = np.random.default_rng(3)
    probs = [termination_np(rng, l=1, p=3, n=4, log_cond=2.0, r=r, pieces=1, noise=0.0,
                            redundant_hi=True) for r in (1.0, 1e-6, 0.0)]
    res = IPMQPSolver().solve(to_boxqp(probs))
    check_result(probs, res, name="ipm")
    assert res.w[:, 0].tolist() == [1.0, 1e-6, 0.0]


def test_zero_hessian_and_zero_problem() -> None:
    m = 3
    Q = torch.zeros(3, m, m, dtype=F64)
    q = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 3.0, 1e-300]], dtype=F64)
    lo = torch.tensor([[-1.0, 0.0, 0.0]] * 3, dtype=F64)
    hi = torch.ones(3, m, dtype=F64)
    qp = BoxQP(Q, q, lo, hi)
    for s in _solvers(True):
        res = s.solve(qp)
        assert (res.status == QPStatus.SOLVED).all(), s.name
        np.testing.assert_allclose(res.w[0].numpy()[:2], [-1.0, 1.0], atol=1e-9)  # w3 arbitrary
        np.testing.assert_allclose(res.w[2].numpy()[:2], [1.0, 0.0], atol=1e-9)


@settings(deadline=None, max_examples=max(1, N_EXAMPLES // 2))
@given(mixed_batch(max_m=6, max_b=4), st.integers(1, 6))
def test_status_is_honest_when_iterations_run_out(probs: list[NpQP], max_iter: int) -> None:
    """With too few iterations the IPM must not claim SOLVED unless the answer is certified."""
    qp = to_boxqp(probs)
    res = IPMQPSolver(max_iter=max_iter, polish=False).solve(qp)
    assert torch.isfinite(res.w).all()
    assert (res.iters <= max_iter).all()
    k_doc = kkt_residual(qp, res.w, scaled=True)  # the documented status measure
    for i, p in enumerate(probs):
        st_ = res.status[i].item()
        if st_ == QPStatus.FAILED:
            assert k_doc[i].item() > KKT_TOL, (i, k_doc[i].item())
        else:
            assert k_doc[i].item() <= KKT_TOL, (i, st_, k_doc[i].item())
            # independent check (test's own scaling and projection)
            assert np_kkt_scaled(p, res.w[i].numpy()) <= 10 * KKT_TOL, i


def test_too_few_iterations_reports_failure() -> None:
    rng = np.random.default_rng(9)
    probs = [termination_np(rng, l=10, p=1, n=8, log_cond=6.0, r=1.0, pieces=3, noise=1e-3,
                            redundant_hi=False) for _ in range(4)]
    res = IPMQPSolver(max_iter=2, polish=False).solve(to_boxqp(probs))
    assert (res.status != QPStatus.SOLVED).all()
    assert (res.iters == 2).all()


# --------------------------------------------------------------------------------------------
# batch invariance, permutation, NaN isolation, active mask
# --------------------------------------------------------------------------------------------


def _same_answer(qa: BoxQP, wa: Tensor, qb: BoxQP, wb: Tensor) -> Tensor:
    """``(B,)``: the same solution (to 1e-10), or, where the minimiser is not unique, two optimal
    ones: both with a scaled KKT residual <= 1e-9 and the same objective (1e-12 relative). On a
    face of minimisers (e.g. ``Q = c 11^T`` and ``q = c' 1`` on the simplex: every feasible point
    is optimal) the point the solver ends at follows the last bits of its arithmetic, and a CPU's
    vector kernels can reduce a row differently for batches of different shapes."""
    same = (wa - wb).abs().amax(-1) <= 1e-10
    fa, fb = qp_objective(qa, wa), qp_objective(qb, wb)
    optimal = ((kkt_residual(qa, wa, scaled=True) <= 1e-9) & (kkt_residual(qb, wb, scaled=True) <= 1e-9)
               & ((fa - fb).abs() <= 1e-12 * fa.abs().clamp(min=1.0)))
    return same | optimal


def _invariance(solver: QPSolver, probs: list[NpQP], perm: list[int]) -> None:
    qp = to_boxqp(probs)
    res = solver.solve(qp)
    for i, p in enumerate(probs):
        q1 = to_boxqp([p], with_eq=qp.eq_mask is not None)
        single = solver.solve(q1)
        assert bool(_same_answer(q1, res.w[i:i + 1], q1, single.w)[0]), (solver.name, i)
        assert res.status[i] == single.status[0]
    qperm = to_boxqp([probs[j] for j in perm], with_eq=qp.eq_mask is not None)
    resp = solver.solve(qperm)
    assert bool(_same_answer(qperm, resp.w, qperm, res.w[perm]).all())


@SETTINGS
@given(st.lists(steering_problem(max_m=3, min_m=3), min_size=2, max_size=5), st.randoms())
def test_batch_invariance_enum_ipm_box(probs: list[NpQP], rnd) -> None:  # type: ignore[no-untyped-def]
    perm = list(range(len(probs)))
    rnd.shuffle(perm)
    for s in (EnumQPSolver(), IPMQPSolver(), AutoQPSolver()):
        _invariance(s, probs, perm)


@settings(deadline=None, max_examples=max(1, N_EXAMPLES // 2))
@given(mixed_batch(max_m=6, max_b=5), st.randoms())
def test_batch_invariance_ipm_mixed(probs: list[NpQP], rnd) -> None:  # type: ignore[no-untyped-def]
    perm = list(range(len(probs)))
    rnd.shuffle(perm)
    _invariance(IPMQPSolver(), probs, perm)
    _invariance(AutoQPSolver(), probs, perm)


def test_compaction_does_not_change_results() -> None:
    rng = np.random.default_rng(11)
    probs = [termination_np(rng, l=8, p=1, n=6, log_cond=4.0, r=1.0, pieces=2,
                            noise=10.0 ** -k, redundant_hi=False) for k in range(8)]
    qp = to_boxqp(probs)
    a = IPMQPSolver(compaction=True).solve(qp)
    b = IPMQPSolver(compaction=False).solve(qp)
    assert torch.allclose(a.w, b.w, rtol=0, atol=1e-12)
    assert torch.equal(a.iters, b.iters)


def test_host_read_interval_does_not_change_results() -> None:
    """check_every > 1 reads the running count less often; converged problems stay frozen in
    between, so solutions and iteration counts are those of check_every = 1."""
    rng = np.random.default_rng(12)
    probs = [termination_np(rng, l=8, p=1, n=6, log_cond=4.0, r=1.0, pieces=2,
                            noise=10.0 ** -k, redundant_hi=False) for k in range(8)]
    qp = to_boxqp(probs)
    a = IPMQPSolver().solve(qp)
    assert int(a.iters.max()) > int(a.iters.min())  # problems converge at different iterations
    for k in (2, 3):
        b = IPMQPSolver(check_every=k).solve(qp)
        assert torch.allclose(a.w, b.w, rtol=0, atol=1e-12), k
        assert torch.equal(a.iters, b.iters) and torch.equal(a.status, b.status), k
    with pytest.raises(ValueError, match="check_every must be an int >= 1, got 0"):
        IPMQPSolver(check_every=0)


@pytest.mark.parametrize("where", ["Q", "q", "Qinf"])
@pytest.mark.parametrize("solver_name", ["enum", "ipm", "auto"])
def test_nan_isolation(where: str, solver_name: str) -> None:
    rng = np.random.default_rng(5)
    probs = [steering_np(rng, m=3, n=4, kind="iid", log_cond=2.0, n_eq=1, scale=1.0)
             for _ in range(4)]
    qp = to_boxqp(probs)
    Q, q = qp.Q.clone(), qp.q.clone()
    if where == "Q":
        Q[1, 0, 1] = float("nan")
    elif where == "q":
        q[1, 2] = float("nan")
    else:
        Q[1, 2, 2] = float("inf")
    bad = BoxQP(Q, q, qp.lo, qp.hi)
    s = get_qp_solver(solver_name)
    res = s.solve(bad)
    ref = s.solve(qp)
    assert res.status[1].item() == QPStatus.FAILED
    assert torch.isfinite(res.w).all()
    assert (res.w[1] >= qp.lo[1]).all() and (res.w[1] <= qp.hi[1]).all()
    keep = [0, 2, 3]
    assert torch.equal(res.w[keep], ref.w[keep])
    assert torch.equal(res.status[keep], ref.status[keep])


def test_nan_isolation_equality() -> None:
    rng = np.random.default_rng(6)
    probs = [termination_np(rng, l=3, p=1, n=4, log_cond=2.0, r=1.0, pieces=2, noise=1e-2,
                            redundant_hi=False) for _ in range(3)]
    qp = to_boxqp(probs)
    assert qp.r is not None
    r = qp.r.clone()
    r[2] = float("nan")
    Q = qp.Q.clone()
    Q[0] = float("nan")
    bad = BoxQP(Q, qp.q, qp.lo, qp.hi, qp.eq_mask, r)
    s = IPMQPSolver()
    res, ref = s.solve(bad), s.solve(qp)
    assert res.status[0] == QPStatus.FAILED and res.status[2] == QPStatus.FAILED
    assert torch.isfinite(res.w).all()
    assert torch.equal(res.w[1], ref.w[1])
    # problem 0 has valid constraints: its w is feasible
    assert abs(res.w[0, :3].sum().item() - 1.0) < 1e-12


def test_infeasible_equality_is_failed_not_raised() -> None:
    m = 3
    Q = torch.eye(m, dtype=F64).expand(2, m, m).clone()
    q = torch.zeros(2, m, dtype=F64)
    lo = torch.zeros(2, m, dtype=F64)
    hi = torch.ones(2, m, dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    r = torch.tensor([5.0, 1.0], dtype=F64)  # first: sum of two vars in [0,1] cannot be 5
    res = IPMQPSolver().solve(BoxQP(Q, q, lo, hi, mask, r))
    assert res.status.tolist() == [QPStatus.FAILED, QPStatus.SOLVED]
    assert torch.isfinite(res.w).all()
    np.testing.assert_allclose(res.w[1].numpy(), [1 / 3] * 3, atol=1e-10)


@pytest.mark.parametrize("solver_name", ["enum", "ipm", "auto"])
def test_active_mask(solver_name: str) -> None:
    rng = np.random.default_rng(8)
    probs = [steering_np(rng, m=2, n=3, kind="iid", log_cond=1.0, n_eq=1, scale=1.0)
             for _ in range(3)]
    qp = to_boxqp(probs)
    s = get_qp_solver(solver_name)
    act = torch.tensor([True, False, True])
    res = s.solve(qp, active=act)
    full = s.solve(qp)
    assert res.iters[1].item() == 0 and res.status[1].item() == QPStatus.SOLVED
    assert torch.equal(res.w[1], project_feasible(qp, torch.zeros_like(qp.q))[1])
    assert torch.allclose(res.w[act], full.w[act], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="active"):
        s.solve(qp, active=torch.ones(2, dtype=torch.bool))


# --------------------------------------------------------------------------------------------
# helpers: projection, kkt residual, validation, registry
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(mixed_batch(max_m=6, max_b=4), st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1.0, 1e3]),
       st.booleans())
def test_project_feasible_matches_exact(probs: list[NpQP], seed: int, mag: float, ties: bool) -> None:
    qp = to_boxqp(probs)
    rng = np.random.default_rng(seed)
    wn = rng.standard_normal((qp.B, qp.m)) * mag
    if ties:  # many equal entries and breakpoints
        wn = np.round(wn / mag * 2) * mag / 2
    w = torch.tensor(wn, dtype=F64)
    got = project_feasible(qp, w).numpy()
    for i, p in enumerate(probs):
        ref = np_project(w[i].numpy(), p)
        scale = max(1.0, np.abs(w[i].numpy()).max())
        np.testing.assert_allclose(got[i], ref, rtol=0, atol=1e-12 * scale)
        if p.mask.any():
            assert abs(got[i][p.mask].sum() - p.r) <= 1e-12 * max(scale, 1.0)


def test_project_feasible_handles_nonfinite_w() -> None:
    rng = np.random.default_rng(1)
    p = termination_np(rng, l=3, p=1, n=3, log_cond=0.0, r=1.0, pieces=1, noise=0.0,
                       redundant_hi=False)
    qp = to_boxqp([p])
    w = torch.tensor([[float("nan"), float("inf"), 0.2, -float("inf"), 5.0, 0.5]], dtype=F64)
    x = project_feasible(qp, w)
    assert torch.isfinite(x).all()
    assert abs(x[0, :3].sum().item() - 1.0) < 1e-14


@SETTINGS
@given(mixed_batch(max_m=5, max_b=3))
def test_kkt_residual_zero_at_oracle_and_matches_numpy(probs: list[NpQP]) -> None:
    qp = to_boxqp(probs)
    sols = torch.tensor(np.stack([oracle(p)[1] for p in probs]), dtype=F64)
    sols = project_feasible(qp, sols)
    k = kkt_residual(qp, sols, scaled=True)
    k_np = torch.tensor([np_kkt_scaled(p, sols[i].numpy()) for i, p in enumerate(probs)], dtype=F64)
    assert (k <= 1e-6).all() and (k_np <= 1e-6).all()
    # an arbitrary point: the unscaled residual matches its definition with the exact projection
    w = project_feasible(qp, torch.zeros_like(qp.q) + 0.3) + 0.01
    ku = kkt_residual(qp, w)
    for i, p in enumerate(probs):
        wi = w[i].numpy()
        ref = np.abs(wi - np_project(wi - (p.Q @ wi + p.q), p)).max()
        assert ku[i].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    k2 = kkt_residual(qp, w, scaled=True)
    assert k2.shape == (qp.B,) and torch.isfinite(k2).all() and (k2 > 0).all()


def test_kkt_residual_unscaled_simple() -> None:
    Q = torch.eye(2, dtype=F64).unsqueeze(0)
    q = torch.tensor([[-3.0, 0.5]], dtype=F64)
    lo = torch.zeros(1, 2, dtype=F64)
    hi = torch.ones(1, 2, dtype=F64)
    qp = BoxQP(Q, q, lo, hi)
    assert kkt_residual(qp, torch.tensor([[1.0, 0.0]], dtype=F64)).item() == 0.0
    assert kkt_residual(qp, torch.tensor([[0.5, 0.0]], dtype=F64)).item() == pytest.approx(0.5)


def test_validate_qp_names_fields() -> None:
    B, m = 2, 3
    good = BoxQP(torch.zeros(B, m, m, dtype=F64), torch.zeros(B, m, dtype=F64),
                 torch.zeros(B, m, dtype=F64), torch.ones(B, m, dtype=F64))
    validate_qp(good)
    with pytest.raises(ValueError, match=r"BoxQP\.q.*\(2, 3\).*\(2, 4\)"):
        validate_qp(BoxQP(good.Q, torch.zeros(B, m + 1, dtype=F64), good.lo, good.hi))
    with pytest.raises(ValueError, match=r"BoxQP\.lo.*float64.*float32"):
        validate_qp(BoxQP(good.Q, good.q, good.lo.float(), good.hi))
    with pytest.raises(ValueError, match=r"BoxQP\.Q"):
        validate_qp(BoxQP(torch.zeros(B, m, m + 1, dtype=F64), good.q, good.lo, good.hi))
    with pytest.raises(ValueError, match=r"BoxQP\.r"):
        validate_qp(BoxQP(good.Q, good.q, good.lo, good.hi, torch.zeros(B, m, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"BoxQP\.eq_mask.*bool"):
        validate_qp(BoxQP(good.Q, good.q, good.lo, good.hi, torch.zeros(B, m, dtype=F64),
                          torch.zeros(B, dtype=F64)))
    with pytest.raises(ValueError, match=r"BoxQP\.hi"):
        validate_qp(BoxQP(good.Q, good.q, good.lo, np.ones((B, m))))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"BoxQP\.r.*\(2,\)"):
        validate_qp(BoxQP(good.Q, good.q, good.lo, good.hi, torch.zeros(B, m, dtype=torch.bool),
                          torch.zeros(B, 1, dtype=F64)))
    for s in (EnumQPSolver(), IPMQPSolver()):
        with pytest.raises(ValueError, match=r"BoxQP\.lo"):
            s.solve(BoxQP(good.Q, good.q, good.lo[:1], good.hi))


def test_registry() -> None:
    assert set(QP_SOLVERS) >= {"auto", "enum", "ipm", "qpth"}
    assert isinstance(get_qp_solver("auto"), AutoQPSolver)
    assert isinstance(get_qp_solver("IPM"), IPMQPSolver)
    inst = EnumQPSolver()
    assert get_qp_solver(inst) is inst
    assert isinstance(inst, QPSolver)
    with pytest.raises(ValueError, match="'ipm'") as ei:
        get_qp_solver("ipn")
    assert "auto" in str(ei.value) and "enum" in str(ei.value)
    with pytest.raises(ValueError, match="'enum'"):
        get_qp_solver("enumerate")
    with pytest.raises(TypeError):
        get_qp_solver(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_qp_solver(IPMQPSolver)  # type: ignore[arg-type]  # a class, not an instance


def test_enum_supports_and_refuses() -> None:
    e = EnumQPSolver()
    qp4 = BoxQP(torch.zeros(1, 4, 4, dtype=F64), torch.zeros(1, 4, dtype=F64),
                torch.zeros(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64))
    assert not e.supports(qp4)
    with pytest.raises(ValueError):
        e.solve(qp4)
    m = 2
    base = dict(Q=torch.zeros(2, m, m, dtype=F64), q=torch.zeros(2, m, dtype=F64),
                lo=torch.zeros(2, m, dtype=F64), hi=torch.ones(2, m, dtype=F64))
    no_eq = BoxQP(**base, eq_mask=torch.zeros(2, m, dtype=torch.bool), r=torch.zeros(2, dtype=F64))
    assert e.supports(no_eq)
    eq = BoxQP(**base, eq_mask=torch.tensor([[False, False], [True, True]]),
               r=torch.ones(2, dtype=F64))
    assert not e.supports(eq)
    res = AutoQPSolver().solve(eq)  # split between enum and ipm
    np.testing.assert_allclose(res.w.numpy(), [[0.0, 0.0], [0.5, 0.5]], atol=1e-10)


def test_no_autograd_and_device() -> None:
    rng = np.random.default_rng(2)
    probs = [steering_np(rng, m=5, n=3, kind="dup", log_cond=3.0, n_eq=2, scale=1.0)]
    qp = to_boxqp(probs)
    Q = qp.Q.clone().requires_grad_(True)
    res = IPMQPSolver().solve(BoxQP(Q, qp.q, qp.lo, qp.hi))
    assert not res.w.requires_grad
    assert res.w.device == qp.q.device


# --------------------------------------------------------------------------------------------
# qpth (optional)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_QPTH, reason="qpth not installed")
@settings(deadline=None, max_examples=max(1, N_EXAMPLES // 3))
@given(mixed_batch(max_m=6, max_b=4))
def test_qpth_honest_status(probs: list[NpQP]) -> None:
    s = get_qp_solver("qpth")
    qp = to_boxqp(probs)
    res = s.solve(qp)
    w = res.w.numpy()
    assert np.isfinite(w).all()
    for i, p in enumerate(probs):
        s_ = var_scale(p)
        assert np.max(np.maximum(p.lo - w[i], 0) / s_) <= FEAS_TOL
        assert np.max(np.maximum(w[i] - p.hi, 0) / s_) <= FEAS_TOL
        kkt = np_kkt_scaled(p, w[i])
        st_ = res.status[i].item()
        if st_ == QPStatus.SOLVED:
            assert kkt <= 1e-8
            f_ref, _ = oracle(p)
            assert abs(np_objective(p, w[i]) - f_ref) / obj_scale(p) <= 1e-7
        elif st_ == QPStatus.INACCURATE:
            assert kkt <= 2e-6


@pytest.mark.skipif(not HAVE_QPTH, reason="qpth not installed")
def test_qpth_nan_problem_does_not_poison_batch() -> None:
    rng = np.random.default_rng(4)
    probs = [steering_np(rng, m=4, n=6, kind="iid", log_cond=1.0, n_eq=1, scale=1.0)
             for _ in range(3)]
    qp = to_boxqp(probs)
    Q = qp.Q.clone()
    Q[0, 0, 0] = float("nan")
    res = get_qp_solver("qpth").solve(BoxQP(Q, qp.q, qp.lo, qp.hi))
    assert res.status[0] == QPStatus.FAILED
    assert torch.isfinite(res.w).all()
    assert (res.status[1:] != QPStatus.FAILED).all()


def test_qpth_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("qpth"):
            raise ImportError("no qpth")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from ncvx_core.qp import QpthQPSolver

    with pytest.raises(ImportError, match="pip install qpth"):
        QpthQPSolver()


# --------------------------------------------------------------------------------------------
# optional differentiable layer
# --------------------------------------------------------------------------------------------


def _layer_problem(seed: int, B: int = 2, m: int = 5) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, m, m, dtype=F64, generator=g)
    Q = (A @ A.mT + 0.5 * torch.eye(m, dtype=F64)).requires_grad_()
    q = (3 * torch.randn(B, m, dtype=F64, generator=g)).requires_grad_()
    lo = torch.zeros(B, m, dtype=F64).requires_grad_()
    hi = torch.ones(B, m, dtype=F64).requires_grad_()
    r = torch.full((B,), 1.3, dtype=F64).requires_grad_()
    return Q, q, lo, hi, r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ipm_layer_gradcheck(seed: int) -> None:
    """Finite differences vs implicit differentiation (well-conditioned, strictly
    complementary instances; one problem with and one without the equality)."""
    Q, q, lo, hi, r = _layer_problem(seed)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True

    def fn(Q: Tensor, q: Tensor, lo: Tensor, hi: Tensor, r: Tensor) -> Tensor:
        return ipm_qp_layer(Q, q, lo, hi, mask, r)

    assert torch.autograd.gradcheck(fn, (Q, q, lo, hi, r), eps=1e-6, atol=1e-6, rtol=1e-4)
    w = fn(Q, q, lo, hi, r)
    ref = IPMQPSolver().solve(BoxQP(Q.detach(), q.detach(), lo.detach(), hi.detach(), mask,
                                    r.detach()))
    assert torch.equal(w.detach(), ref.w)


@pytest.mark.skipif(not HAVE_QPTH, reason="qpth not installed")
def test_ipm_layer_matches_qpth_gradients() -> None:
    from qpth.qp import QPFunction

    B, m = 4, 6
    Q, q, lo, hi, r = _layer_problem(7, B, m)
    mask = torch.zeros(B, m, dtype=torch.bool)
    mask[:, :3] = True
    c = torch.randn(B, m, dtype=F64, generator=torch.Generator().manual_seed(1))
    w = ipm_qp_layer(Q, q, lo, hi, mask, r)
    (w * c).sum().backward()
    ours = [t.grad.clone() for t in (Q, q, lo, hi, r)]  # type: ignore[union-attr]
    for t in (Q, q, lo, hi, r):
        t.grad = None
    G = torch.cat([-torch.eye(m, dtype=F64), torch.eye(m, dtype=F64)]).expand(B, 2 * m, m)
    h = torch.cat([-lo, hi], -1)
    z = QPFunction(verbose=-1, check_Q_spd=False, eps=1e-14, maxIter=50)(
        0.5 * (Q + Q.mT), q, G, h, mask.to(F64).unsqueeze(1), r.unsqueeze(1)
    )
    assert torch.allclose(z, w, atol=1e-8)
    (z * c).sum().backward()
    theirs = [t.grad.clone() for t in (Q, q, lo, hi, r)]  # type: ignore[union-attr]
    for name, a, b in zip(["Q", "q", "lo", "hi", "r"], ours, theirs, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * max(1.0, b.abs().max().item())), name
