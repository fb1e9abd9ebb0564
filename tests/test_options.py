"""Tests of ``ncvx_core/options.py``: defaults (spec section 7), name checking and range checking."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ncvx_core.errors import NcvxError, OptionError
from ncvx_core.options import SolverOptions

SPEC_DEFAULTS = {
    "mu0": 1.0,
    "H0": None,
    "checkH0": True,
    "scaleH0": True,
    "bfgs_damping": 1e-4,
    "limited_mem_size": 0,
    "limited_mem_fixed_scaling": True,
    "limited_mem_warm_start": None,
    "prescaling_threshold": math.inf,
    "opt_tol": 1e-8,
    "rel_tol": 0.0,
    "step_tol": 1e-12,
    "viol_ineq_tol": 1e-6,
    "viol_eq_tol": 1e-6,
    "ngrad": None,  # None means min(100, 2n, n + 10), resolved by the solver
    "evaldist": 1e-4,
    "maxit": 1000,
    "maxclocktime": math.inf,
    "fvalquit": -math.inf,
    "halt_on_quadprog_error": False,
    "halt_on_linesearch_bracket": True,
    "min_fallback_level": 0,
    "max_fallback_level": 3,
    "max_random_attempts": 5,
    "steering_l1_model": True,
    "steering_ineq_margin": 1e-6,
    "steering_maxit": 10,
    "steering_c_viol": 0.1,
    "steering_c_mu": 0.9,
    "stat_l2_model": True,
    "regularize_threshold": math.inf,
    "regularize_max_eigenvalues": False,
    "wolfe1": 1e-4,
    "wolfe2": 0.5,
    "linesearch_nondescent_maxit": 0,
    "linesearch_reattempts": 0,
    "linesearch_reattempts_x0": 10,
    "linesearch_c_mu": 0.5,
    "linesearch_c_mu_x0": 0.5,
    "linesearch_maxit": math.inf,
    "init_step_size": 1.0,
    "is_backtrack_linesearch": False,
    "search_direction_rescaling": False,
    "disable_terminationcode_6": False,
    "globalAD": True,
    "print_level": 1,
    "print_frequency": 1,
    "print_width": 14,
    "print_ascii": False,
    "print_use_orange": True,
    "halt_log_fn": None,
    "debug_mode": False,
}


@pytest.mark.parametrize("name", sorted(SPEC_DEFAULTS))
def test_default_matches_spec(name):
    value = getattr(SolverOptions(), name)
    expected = SPEC_DEFAULTS[name]
    if expected is None or isinstance(expected, bool):
        assert value is expected
    else:
        assert not isinstance(value, bool)
        assert value == expected


@pytest.mark.parametrize(
    "wrong, right",
    [("maxiter", "maxit"), ("opttol", "opt_tol"), ("viol_ineq_tols", "viol_ineq_tol"), ("wolf1", "wolfe1"),
     ("MAXIT", "maxit"), ("steering_cmu", "steering_c_mu"), ("limited_memory_size", "limited_mem_size")],
)
def test_unknown_option_suggests_closest(wrong, right):
    with pytest.raises(OptionError) as ei:
        SolverOptions(**{wrong: 1})
    msg = str(ei.value)
    assert repr(wrong) in msg
    assert f"did you mean {right!r}" in msg
    assert isinstance(ei.value, NcvxError) and isinstance(ei.value, ValueError)


def test_unknown_option_without_close_match():
    with pytest.raises(OptionError, match="zzzzqqq"):
        SolverOptions(zzzzqqq=3)


def test_x0_as_an_option_points_to_solve():
    """GRANSO takes x0 among its options; here it is an argument of solve."""
    with pytest.raises(OptionError, match=r"solve\(problem, x0, options\)"):
        SolverOptions(x0=1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(wolfe1=0.3, wolfe2=0.2), "wolfe2"),
        (dict(wolfe1=0.6), "wolfe1"),
        (dict(wolfe2=1.0), "wolfe2"),
        (dict(steering_c_mu=1), "steering_c_mu"),
        (dict(steering_c_mu=0.0), "steering_c_mu"),
        (dict(steering_c_viol=1.5), "steering_c_viol"),
        (dict(maxit=-1), "maxit"),
        (dict(maxit=10.5), "maxit"),
        (dict(print_level=7), "print_level"),
        (dict(print_width=8), "print_width"),
        (dict(mu0=-1), "mu0"),
        (dict(mu0=math.inf), "mu0"),
        (dict(mu0=math.nan), "mu0"),
        (dict(opt_tol=True), "opt_tol"),
        (dict(maxit=True), "maxit"),
        (dict(mu0=True), "mu0"),
        (dict(viol_ineq_tol=-1e-6), "viol_ineq_tol"),
        (dict(opt_tol="1e-8"), "opt_tol"),
        (dict(bfgs_damping=1.5), "bfgs_damping"),
        (dict(limited_mem_size=-3), "limited_mem_size"),
        (dict(min_fallback_level=3, max_fallback_level=2), "max_fallback_level"),
        (dict(max_fallback_level=5), "max_fallback_level"),
        (dict(linesearch_c_mu=1.0), "linesearch_c_mu"),
        (dict(linesearch_maxit=0), "linesearch_maxit"),
        (dict(init_step_size=0.0), "init_step_size"),
        (dict(regularize_threshold=0.5), "regularize_threshold"),
        (dict(scaleH0=1), "scaleH0"),
        (dict(halt_log_fn=3), "halt_log_fn"),
    ],
)
def test_out_of_range_values_name_the_option(kwargs, name):
    with pytest.raises(OptionError) as ei:
        SolverOptions(**kwargs)
    assert repr(name) in str(ei.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(wolfe1=0.0, wolfe2=0.0),
        dict(wolfe1=0.5, wolfe2=0.5),
        dict(viol_ineq_tol=0.0, viol_eq_tol=0.0, opt_tol=0.0),
        dict(linesearch_maxit=5),
        dict(linesearch_maxit=math.inf),
        dict(steering_ineq_margin=math.inf),
        dict(maxit=0),
        dict(mu0=0.0),
        dict(mu0=torch.tensor([1.0, 0.5])),
        dict(print_level=0),
        dict(print_level=3),
        dict(ngrad=7),
        dict(fvalquit=2.5),
        dict(halt_log_fn=lambda *a: False),
    ],
)
def test_valid_values_accepted(kwargs):
    o = SolverOptions(**kwargs)
    for k, v in kwargs.items():
        assert getattr(o, k) is v or getattr(o, k) == v


def test_positional_arguments_raise_type_error():
    with pytest.raises(TypeError):
        SolverOptions(1.0)


def test_replace_validates_and_copies():
    o = SolverOptions(maxit=50)
    o2 = o.replace(opt_tol=1e-5)
    assert o2.opt_tol == 1e-5 and o2.maxit == 50
    assert o.opt_tol == 1e-8  # original untouched
    with pytest.raises(OptionError, match="maxit"):
        o.replace(maxit=-1)
    with pytest.raises(OptionError, match="wolfe2"):
        o.replace(wolfe1=0.4, wolfe2=0.3)
    with pytest.raises(OptionError, match="maxit"):
        o.replace(maxiter=5)


def test_options_are_frozen():
    o = SolverOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.maxit = 5  # type: ignore[misc]
    assert SolverOptions(maxit=7).as_dict()["maxit"] == 7


def test_sync_free_is_none_or_a_bool():
    assert SolverOptions().sync_free is None
    assert SolverOptions(sync_free=True).sync_free is True
    with pytest.raises(OptionError, match=r"'sync_free' must be None or a bool, got 'yes'"):
        SolverOptions(sync_free="yes")
    from ncvx_core.linesearch import WeakWolfe
    with pytest.raises(ValueError, match="sync_free must be None or a bool, got 1"):
        WeakWolfe(sync_free=1)  # type: ignore[arg-type]


def test_linesearch_armijo_after_is_none_or_a_positive_int_for_the_weak_wolfe_search():
    assert SolverOptions().linesearch_armijo_after is None
    assert SolverOptions(linesearch_armijo_after=3).linesearch_armijo_after == 3
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(OptionError, match="linesearch_armijo_after"):
            SolverOptions(linesearch_armijo_after=bad)
    with pytest.raises(OptionError, match="is_backtrack_linesearch"):
        SolverOptions(linesearch_armijo_after=3, is_backtrack_linesearch=True)


def test_linesearch_previous_step_is_a_bool_for_the_weak_wolfe_search():
    assert SolverOptions().linesearch_previous_step is False
    with pytest.raises(OptionError, match="linesearch_previous_step"):
        SolverOptions(linesearch_previous_step=1)
    with pytest.raises(OptionError, match="is_backtrack_linesearch"):
        SolverOptions(linesearch_previous_step=True, is_backtrack_linesearch=True)
