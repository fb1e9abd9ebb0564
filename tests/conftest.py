"""Shared test configuration: Hypothesis profiles, torch threads and a float64 helper.

Profiles: ``dev`` (default, fast) and ``ci`` (more examples, derandomised). Select with the
environment variable ``HYPOTHESIS_PROFILE`` (e.g. ``HYPOTHESIS_PROFILE=ci pytest``).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The suite is dominated by many small tensor operations; on a small shared CPU, intra-op threads
# only add synchronisation cost. NCVX_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("NCVX_TEST_THREADS", "1")))


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(old)
