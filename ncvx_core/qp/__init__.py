"""Batched QP layer: one problem type (box + at most one masked equality), several backends.

See :mod:`ncvx_core.qp.base` for the problem/result types and the solver protocol, and
:mod:`ncvx_core.qp.registry` for selecting a backend by name.
"""

from .base import (
    BoxQP,
    QPResult,
    QPSolver,
    QPStatus,
    kkt_residual,
    project_feasible,
    qp_objective,
    validate_qp,
)
from .enum import EnumQPSolver
from .ipm import IPMQPSolver, ipm_qp_layer
from .qpth_backend import QpthQPSolver
from .registry import QP_SOLVERS, AutoQPSolver, get_qp_solver

__all__ = [
    "BoxQP",
    "QPResult",
    "QPSolver",
    "QPStatus",
    "kkt_residual",
    "project_feasible",
    "qp_objective",
    "validate_qp",
    "EnumQPSolver",
    "IPMQPSolver",
    "ipm_qp_layer",
    "QpthQPSolver",
    "AutoQPSolver",
    "QP_SOLVERS",
    "get_qp_solver",
]
