"""Exception hierarchy: exceptions are for caller mistakes; numerical outcomes are status codes."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "NcvxError",
    "OptionError",
    "ProblemDefinitionError",
    "NonFiniteStartError",
]


class NcvxError(Exception):
    """Base class of every error raised by ncvx_core."""


class OptionError(NcvxError, ValueError):
    """An unknown option name or an option value out of range."""


class ProblemDefinitionError(NcvxError, ValueError):
    """The user's problem function returned outputs of the wrong type, shape, dtype or device."""


class NonFiniteStartError(NcvxError, ValueError):
    """The problem function gave non-finite values or gradients at x0 for some problems."""

    def __init__(self, what: str, indices: Sequence[int]) -> None:
        self.indices = list(indices)
        shown = ", ".join(str(i) for i in self.indices[:20])
        more = f" (and {len(self.indices) - 20} more)" if len(self.indices) > 20 else ""
        super().__init__(f"non-finite {what} at x0 for problem indices [{shown}]{more}")
