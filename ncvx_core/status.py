"""Termination codes (numbered as in GRANSO) and their messages."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status", "STATUS_MESSAGES", "status_message"]


class Status(IntEnum):
    """Per-problem termination code. ``RUNNING`` (-1) marks a problem still iterating."""

    RUNNING = -1
    CONVERGED = 0          # feasible to tolerance and stationarity <= opt_tol
    REL_TOL = 1            # feasible and relative change of the penalty <= rel_tol
    FVALQUIT = 2           # feasible and objective <= fvalquit
    USER_HALT = 3          # halt_log_fn asked to stop
    MAXIT = 4              # maxit accepted iterations done
    MAXCLOCKTIME = 5       # wall-clock limit
    BRACKET_FEASIBLE = 6   # line search bracketed a minimiser but failed, at a feasible point
    BRACKET_INFEASIBLE = 7 # same at an infeasible point, no fallback left
    NO_BRACKET = 8         # line search never bracketed (penalty may be unbounded below)
    NO_DESCENT = 9         # no fallback level produced a finite descent direction
    USER_ERROR = 11        # the user's function raised
    QP_ERROR = 12          # the steering QP failed with no fallback left
    INTERNAL_ERROR = 13    # unknown internal error


STATUS_MESSAGES: dict[int, str] = {
    -1: "still running",
    0: "converged: feasible to tolerance and stationarity measure <= opt_tol",
    1: "converged: feasible to tolerance and relative change of the penalty <= rel_tol",
    2: "target objective reached: feasible to tolerance and f <= fvalquit",
    3: "halted by the user's halt_log_fn",
    4: "maximum number of iterations (maxit) reached",
    5: "maximum wall-clock time (maxclocktime) reached",
    6: "line search bracketed a minimiser but failed to satisfy the weak Wolfe conditions at a feasible point",
    7: "line search bracketed a minimiser but failed to satisfy the weak Wolfe conditions at an infeasible point; no fallback left",
    8: "line search failed to bracket a minimiser: the penalty function may be unbounded below",
    9: "no fallback search direction was a finite descent direction",
    10: "unused",
    11: "the user-supplied function raised an exception",
    12: "the steering QP could not be solved and no fallback level was left",
    13: "unknown internal error",
}


def status_message(code: int) -> str:
    """Human-readable text for a termination code."""
    return STATUS_MESSAGES.get(int(code), f"unknown status {int(code)}")
