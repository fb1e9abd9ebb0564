"""The gradient cache's neighbourhoods (spec 5.2) against brute-force distances."""

import pytest
import torch

from ncvx_core.stationarity import cache_insert, init_cache


@pytest.mark.parametrize("exact", [False, True])
def test_neighbourhoods_match_brute_force_distances(exact: bool) -> None:
    """Random walks whose steps straddle evaldist (large, tiny, exactly evaldist-sized), inserted
    for random subsets of problems: every returned neighbourhood is exactly the set of stored
    points within evaldist of the new point (bounds never change the set), whether the bounds
    decide which points to measure or every point is measured (``exact``)."""
    g = torch.Generator().manual_seed(0)
    B, L, n, evaldist = 5, 7, 3, 1e-4
    cache = init_cache(B, L, n, 1, 0, torch.float64, torch.device("cpu"))
    x = torch.rand(B, n, generator=g, dtype=torch.float64)
    stored: list[list[torch.Tensor]] = [[] for _ in range(B)]  # shadow ring buffers
    for it in range(300):
        scale = [1e-1, 3e-5, 1e-4, 5e-5, 0.0][it % 5]
        step = torch.randn(B, n, generator=g, dtype=torch.float64)
        x = x + scale * step / step.norm(dim=1, keepdim=True)
        rows = torch.nonzero(torch.rand(B, generator=g) < 0.7).flatten()
        if rows.numel() == 0:
            continue
        nb = cache_insert(cache, rows, x[rows], x[rows], torch.zeros(rows.numel(), 1, n, dtype=torch.float64),
                          torch.zeros(rows.numel(), 0, n, dtype=torch.float64), evaldist, exact=exact)
        for i, b in enumerate(rows.tolist()):
            slot = int(cache.next[b] - 1) % L
            buf = stored[b]
            if len(buf) < L:
                buf.append(x[b].clone())
            else:
                buf[slot] = x[b].clone()
            want = torch.zeros(L, dtype=torch.bool)
            for j, pt in enumerate(buf):
                want[j] = bool((x[b] - pt).norm() <= evaldist)
            assert torch.equal(nb[i], want), (it, b)
            assert nb[i, slot]


def test_exact_measurement_in_blocks_gives_the_same_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """cache_insert(exact=True) measures the cached points a block of slots at a time; one slot
    per block gives the same neighbourhoods and bounds as one block for all."""
    import ncvx_core.stationarity as S

    B, L, n = 4, 6, 5
    outs = []
    for block_bytes in (1 << 27, 1):
        monkeypatch.setattr(S, "_EXACT_BYTES", block_bytes)
        cache = init_cache(B, L, n, 1, 0, torch.float64, torch.device("cpu"))
        x = torch.rand(B, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        nbs = []
        for it in range(20):
            x = x + 3e-5 * torch.randn(B, n, generator=torch.Generator().manual_seed(it), dtype=torch.float64)
            nbs.append(cache_insert(cache, torch.arange(B), x, x, torch.zeros(B, 1, n, dtype=torch.float64),
                                    torch.zeros(B, 0, n, dtype=torch.float64), 1e-4, exact=True))
        outs.append((torch.stack(nbs), cache.lo.clone(), cache.hi.clone()))
    assert outs[0][0].any() and not outs[0][0].all()  # the walk has points both in and out
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_exact_must_be_a_bool() -> None:
    cache = init_cache(1, 2, 2, 0, 0, torch.float64, torch.device("cpu"))
    x = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="exact must be a bool, got str"):
        cache_insert(cache, torch.arange(1), x, x, torch.zeros(1, 0, 2, dtype=torch.float64),
                     torch.zeros(1, 0, 2, dtype=torch.float64), 1e-4, exact="yes")  # type: ignore[arg-type]
