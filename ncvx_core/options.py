"""Validated solver options with the GRANSO names and defaults (spec section 7)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import OptionError

__all__ = ["SolverOptions"]

_INF = math.inf


@dataclass(frozen=True)
class SolverOptions:
    """Options of :func:`ncvx_core.solve`.

    Every GRANSO option keeps its name and default (see ``docs/options.md``). Construct with keyword
    arguments only; an unknown name raises :class:`~ncvx_core.errors.OptionError` suggesting the
    closest valid name, and every value is range-checked at construction.

    Per-problem tensors (``mu0`` may be a float or a ``(B,)`` tensor; ``H0`` an ``(n, n)`` or
    ``(B, n, n)`` tensor) are broadcast over the batch by :func:`~ncvx_core.solve`.
    """

    # --- start point / warm start -------------------------------------------------------------
    mu0: Any = 1.0
    H0: Any = None
    checkH0: bool = True
    scaleH0: bool = True
    bfgs_damping: float = 1e-4
    limited_mem_size: int = 0
    limited_mem_fixed_scaling: bool = True
    limited_mem_warm_start: Any = None
    prescaling_threshold: float = _INF
    prescaling_info_msg: bool = True
    # --- tolerances ---------------------------------------------------------------------------
    opt_tol: float = 1e-8
    rel_tol: float = 0.0
    step_tol: float = 1e-12
    viol_ineq_tol: float = 1e-6
    viol_eq_tol: float = 1e-6
    ngrad: int | None = None
    evaldist: float = 1e-4
    maxit: int = 1000
    maxclocktime: float = _INF
    fvalquit: float = -_INF
    # --- fallbacks ----------------------------------------------------------------------------
    halt_on_quadprog_error: bool = False
    halt_on_linesearch_bracket: bool = True
    min_fallback_level: int = 0
    max_fallback_level: int = 3
    max_random_attempts: int = 5
    # --- steering -----------------------------------------------------------------------------
    steering_l1_model: bool = True
    steering_ineq_margin: float = 1e-6
    steering_maxit: int = 10
    steering_c_viol: float = 0.1
    steering_c_mu: float = 0.9
    # --- stationarity / regularisation --------------------------------------------------------
    stat_l2_model: bool = True
    regularize_threshold: float = _INF
    regularize_max_eigenvalues: bool = False
    quadprog_info_msg: bool = True
    QPsolver: str = "auto"
    # --- line search --------------------------------------------------------------------------
    wolfe1: float = 1e-4
    wolfe2: float = 0.5
    linesearch_nondescent_maxit: int = 0
    linesearch_reattempts: int = 0
    linesearch_reattempts_x0: int = 10
    linesearch_c_mu: float = 0.5
    linesearch_c_mu_x0: float = 0.5
    linesearch_maxit: float = _INF
    init_step_size: float = 1.0
    is_backtrack_linesearch: bool = False
    linesearch_speculation: int = 8
    linesearch_previous_step: bool = False
    linesearch_armijo_after: int | None = None
    search_direction_rescaling: bool = False
    disable_terminationcode_6: bool = False
    # --- precision / device / gradients -------------------------------------------------------
    double_precision: bool | None = None
    torch_device: Any = None
    globalAD: bool = True
    # --- output ---------------------------------------------------------------------------------
    print_level: int = 1
    print_frequency: int = 1
    print_width: int = 14
    print_ascii: bool = False
    print_use_orange: bool = True
    print_sink: Callable[[str], None] | None = None
    halt_log_fn: Callable[..., Any] | None = None
    debug_mode: bool = False
    # --- batched-solver extras ----------------------------------------------------------------
    seed: int = 0
    qp_tol: float = 1e-12
    jacobian: str = "loop"
    auto_memory: bool = True
    sync_free: bool | None = None
    strict_sync: bool = False
    memory_limit: float | None = None

    def __post_init__(self) -> None:  # noqa: C901 - a flat list of checks reads best
        def bad(name: str, expected: str) -> None:
            raise OptionError(
                f"option {name!r} must be {expected}, got {getattr(self, name)!r}"
            )

        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad(name, "a real number")
            if math.isnan(v):
                bad(name, "a real number (not NaN)")
            return float(v)

        def integer(name: str, lo: int, hi: float = _INF) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                bad(name, f"an integer in [{lo}, {hi}]")

        def boolean(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")

        for name in (
            "checkH0", "scaleH0", "limited_mem_fixed_scaling", "prescaling_info_msg",
            "halt_on_quadprog_error", "halt_on_linesearch_bracket", "steering_l1_model",
            "stat_l2_model", "regularize_max_eigenvalues", "quadprog_info_msg",
            "is_backtrack_linesearch", "search_direction_rescaling", "disable_terminationcode_6",
            "globalAD", "print_ascii", "print_use_orange", "debug_mode",
        ):
            boolean(name)
        if self.double_precision is not None:
            boolean("double_precision")

        if not isinstance(self.mu0, torch.Tensor):
            if num("mu0") < 0 or not math.isfinite(self.mu0):
                bad("mu0", "a finite number >= 0 or a (B,) tensor")
        if not 0 <= num("bfgs_damping") <= 1:
            bad("bfgs_damping", "in [0, 1]")
        integer("limited_mem_size", 0)
        if num("prescaling_threshold") <= 0:
            bad("prescaling_threshold", "> 0")
        for name in ("opt_tol", "rel_tol", "step_tol", "viol_ineq_tol", "viol_eq_tol", "evaldist"):
            if num(name) < 0:
                bad(name, ">= 0")
        if self.ngrad is not None:
            integer("ngrad", 0)
        integer("maxit", 0)
        if num("maxclocktime") <= 0:
            bad("maxclocktime", "> 0 (seconds)")
        num("fvalquit")
        integer("min_fallback_level", 0, 4)
        integer("max_fallback_level", 0, 4)
        if self.max_fallback_level < self.min_fallback_level:
            bad("max_fallback_level", f">= min_fallback_level ({self.min_fallback_level})")
        integer("max_random_attempts", 0)
        if num("steering_ineq_margin") < 0:
            bad("steering_ineq_margin", ">= 0 (inf allowed)")
        integer("steering_maxit", 0)
        if not 0 < num("steering_c_viol") < 1:
            bad("steering_c_viol", "in (0, 1)")
        if not 0 < num("steering_c_mu") < 1:
            bad("steering_c_mu", "in (0, 1)")
        if num("regularize_threshold") < 1:
            bad("regularize_threshold", ">= 1 (inf disables)")
        if isinstance(self.QPsolver, str):
            from .qp.registry import QP_SOLVERS

            if self.QPsolver not in QP_SOLVERS:
                close = difflib.get_close_matches(self.QPsolver, list(QP_SOLVERS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise OptionError(f"option 'QPsolver' must be one of {sorted(QP_SOLVERS)}, got "
                                  f"{self.QPsolver!r}{hint}")
        elif not hasattr(self.QPsolver, "solve"):
            bad("QPsolver", "a registered QP solver name or a QPSolver instance")
        if not 0 <= num("wolfe1") <= 0.5:
            bad("wolfe1", "in [0, 0.5]")
        if not self.wolfe1 <= num("wolfe2") < 1:
            bad("wolfe2", f"in [wolfe1 ({self.wolfe1}), 1)")
        integer("linesearch_nondescent_maxit", 0)
        integer("linesearch_reattempts", 0)
        integer("linesearch_reattempts_x0", 0)
        integer("linesearch_speculation", 1)
        if not isinstance(self.linesearch_previous_step, bool):
            bad("linesearch_previous_step", "a bool")
        if self.linesearch_armijo_after is not None:
            integer("linesearch_armijo_after", 1)
            if self.is_backtrack_linesearch:
                bad("linesearch_armijo_after", "None with is_backtrack_linesearch=True (it needs the weak Wolfe search)")
        if self.linesearch_previous_step and self.is_backtrack_linesearch:
            bad("linesearch_previous_step", "False with is_backtrack_linesearch=True (it needs the weak Wolfe search)")
        if not 0 < num("linesearch_c_mu") < 1:
            bad("linesearch_c_mu", "in (0, 1)")
        if not 0 < num("linesearch_c_mu_x0") < 1:
            bad("linesearch_c_mu_x0", "in (0, 1)")
        if num("linesearch_maxit") < 1:
            bad("linesearch_maxit", ">= 1 (inf allowed)")
        if not 0 < num("init_step_size") < _INF:
            bad("init_step_size", "finite and > 0")
        integer("print_level", 0, 3)
        integer("print_frequency", 1)
        integer("print_width", 9, 23)
        if self.print_sink is not None and not callable(self.print_sink):
            bad("print_sink", "None or a callable taking one line of text")
        if self.halt_log_fn is not None and not callable(self.halt_log_fn):
            bad("halt_log_fn", "None or a callable")
        integer("seed", 0)
        if not 0 < num("qp_tol") < 1e-2:
            bad("qp_tol", "in (0, 1e-2)")
        if self.jacobian not in ("loop", "vmap"):
            bad("jacobian", "'loop' or 'vmap'")
        boolean("auto_memory")
        if self.sync_free is not None and not isinstance(self.sync_free, bool):
            bad("sync_free", "None or a bool")
        boolean("strict_sync")
        if self.strict_sync and self.sync_free is False:
            bad("strict_sync", "False with sync_free=False (strict_sync works under masks: sync_free None or True)")
        if self.memory_limit is not None and num("memory_limit") <= 0:
            bad("memory_limit", "None or a positive number of bytes")

    def replace(self, **changes: Any) -> SolverOptions:
        """Copy with some options changed (validated like the constructor)."""
        return SolverOptions(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (tensors and callables kept as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELD_NAMES = [f.name for f in dataclasses.fields(SolverOptions)]
_dataclass_init = SolverOptions.__init__


def _checked_init(self: SolverOptions, *args: Any, **kwargs: Any) -> None:
    if args:
        raise TypeError("SolverOptions takes keyword arguments only, e.g. SolverOptions(maxit=500)")
    for name in kwargs:
        if name == "x0":
            raise OptionError("'x0' is not an option: the start point is the second argument of "
                              "solve(problem, x0, options), a (B, *shape) tensor")
        if name not in _FIELD_NAMES:
            close = difflib.get_close_matches(name, _FIELD_NAMES, n=1, cutoff=0.5)
            if not close:
                low = {n.lower(): n for n in _FIELD_NAMES}
                close = [low[name.lower()]] if name.lower() in low else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OptionError(f"unknown option {name!r}{hint} (see SolverOptions for the valid names)")
    _dataclass_init(self, **kwargs)


SolverOptions.__init__ = _checked_init  # type: ignore[method-assign]
