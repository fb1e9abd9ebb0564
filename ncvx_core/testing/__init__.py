"""Test support for ncvx_core: the batched conformance problem suite (spec §10).

See :mod:`ncvx_core.testing.problems`.
"""

from .problems import (
    PROBLEMS,
    REFERENCE_COMMIT,
    BatchedProblemFn,
    ConformanceProblem,
    rpca_optimum,
    top_eigen_sum,
    tv1d_optimum,
)

__all__ = [
    "PROBLEMS",
    "REFERENCE_COMMIT",
    "BatchedProblemFn",
    "ConformanceProblem",
    "rpca_optimum",
    "top_eigen_sum",
    "tv1d_optimum",
]
