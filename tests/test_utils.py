"""The batch-size-independent matrix products the solver relies on for batch invariance."""

from __future__ import annotations

import pytest
import torch

from ncvx_core.utils import bmm, bmv


@pytest.mark.parametrize("n", [3, 80, 300])
@pytest.mark.parametrize("B", [2, 7])
def test_products_do_not_depend_on_the_batch(n: int, B: int) -> None:
    g = torch.Generator().manual_seed(n + B)
    H = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    v = torch.randn(B, n, generator=g, dtype=torch.float64)
    r = torch.randn(B, 1, n, generator=g, dtype=torch.float64)
    full_mv, full_col, full_row = bmv(H, v), bmm(H, v.unsqueeze(2)), bmm(r, H)
    for i in range(B):
        assert torch.equal(full_mv[i], bmv(H[i : i + 1], v[i : i + 1])[0])
        assert torch.equal(full_col[i], bmm(H[i : i + 1], v[i : i + 1].unsqueeze(2))[0])
        assert torch.equal(full_row[i], bmm(r[i : i + 1], H[i : i + 1])[0])
    torch.testing.assert_close(full_mv, torch.einsum("bij,bj->bi", H, v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full_row, r @ H, rtol=1e-12, atol=1e-12)
