"""ncvx_core: batched BFGS-SQP (GRANSO) for nonsmooth, nonconvex, constrained problems in PyTorch."""

from .errors import NcvxError, NonFiniteStartError, OptionError, ProblemDefinitionError
from .hessian import BFGS, LBFGS, BFGSState, HessianApprox, LBFGSState, UpdateInfo
from .linesearch import (
    Backtracking,
    LineSearch,
    LineSearchProblem,
    LineSearchResult,
    Trial,
    WeakWolfe,
)
from .options import SolverOptions
from .problem import Evaluation, Evaluator
from .result import Iterate, SolveResult, SolverFailedError
from .solver import HESSIANS, LINE_SEARCHES, HaltInfo, solve
from .status import STATUS_MESSAGES, Status, status_message

__version__ = "0.1.0"

__all__ = [
    "solve", "SolverOptions", "SolveResult", "Iterate", "Status", "STATUS_MESSAGES", "status_message",
    "HaltInfo", "Evaluation", "Evaluator", "BFGS", "LBFGS", "BFGSState", "LBFGSState", "HessianApprox",
    "UpdateInfo", "WeakWolfe", "Backtracking", "LineSearch", "LineSearchProblem", "LineSearchResult", "Trial",
    "LINE_SEARCHES", "HESSIANS", "NcvxError", "OptionError", "ProblemDefinitionError", "NonFiniteStartError",
    "SolverFailedError", "__version__",
]
