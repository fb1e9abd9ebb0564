"""Products with the inverse-Hessian approximations: row layout against column layout.

The solver multiplies its (L-)BFGS approximation by blocks of a few columns (steering, damping,
directions) and by the stationarity samples. ``ncvx_core`` forms these products on row blocks:
``V^T`` (c rows of length n) against the L-BFGS memory ``S, Y (k, m, n)`` or against a dense
``H`` read along its rows, so that both operands of every large product keep n as their
contiguous dimension. This script times, side by side and in alternating order:

* the L-BFGS memory's inner products with c vectors: ``S V`` (column layout) against
  ``V^T S^T`` (row layout), and the reconstruction ``S^T T`` against ``T^T S``;
* the whole ``LBFGS.matmul`` against the same compact formula written in the column layout
  (:func:`lbfgs_matmul_columns`, the implementation before the row layout);
* one problem's dense product ``H V`` against ``(V^T H^T)^T`` (the in-place full-memory path).

Run from the repository root::

    .venv/bin/python benchmarks/bench_products.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import add_common_args, log, md_table, out_path, setup, side_by_side, write_results  # noqa: E402

from ncvx_core.hessian import LBFGS, LBFGSState  # noqa: E402
from ncvx_core.utils import bmm  # noqa: E402


def lbfgs_matmul_columns(state: LBFGSState, V: torch.Tensor) -> torch.Tensor:
    """``H V`` by the compact representation with the products in the column layout (``S V``,
    ``S^T T``): the reference the row layout is timed against."""
    S, Y, gamma = state.S, state.Y, state.gamma
    m = S.shape[1]
    filled = state.rho != 0
    a, b = bmm(S, V), bmm(Y, V)
    SY, YY = state.SY, state.YY
    assert SY is not None and YY is not None
    R = torch.triu(SY)
    eye = torch.eye(m, dtype=V.dtype, device=V.device).unsqueeze(0)
    R = torch.where(filled.unsqueeze(2) & filled.unsqueeze(1), R, 0.0) + eye * (~filled).unsqueeze(1).to(V.dtype)
    D = torch.diagonal(SY, dim1=1, dim2=2) * filled
    w = torch.linalg.solve_triangular(R, a, upper=True)
    g = gamma.view(-1, 1, 1)
    inner = D.unsqueeze(2) * w + g * bmm(YY, w) - g * b
    top = torch.linalg.solve_triangular(R.transpose(1, 2), inner, upper=False)
    return g * V + bmm(S.transpose(1, 2), top) - g * bmm(Y.transpose(1, 2), w)


def filled_state(k: int, m: int, n: int, dtype: torch.dtype, seed: int) -> tuple[LBFGS, LBFGSState]:
    """An L-BFGS state of k problems whose memory of m pairs is full."""
    g = torch.Generator().manual_seed(seed)
    lb = LBFGS(m)
    st = lb.init(k, n, dtype, torch.device("cpu"))
    for _ in range(m + 2):
        s = torch.randn(k, n, generator=g, dtype=torch.float64).to(dtype)
        y = s + 0.1 * torch.randn(k, n, generator=g, dtype=torch.float64).to(dtype)
        st, _ = lb.update(st, s, y, torch.ones(k, dtype=torch.bool))
    return lb, st


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="products")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--k", type=int, default=128, help="problems of the L-BFGS rows (default 128)")
    ap.add_argument("--m", type=int, default=10, help="L-BFGS memory (default 10)")
    ap.add_argument("--n", type=int, default=3072, help="variables (default 3072)")
    args = ap.parse_args()
    device, _ = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_products.py compares CPU kernels: run it with --device cpu")
    k, m, n, R = args.k, args.m, args.n, args.repeats
    rows = []
    for dt in (torch.float32, torch.float64):
        name = str(dt).replace("torch.", "")
        lb, st = filled_state(k, m, n, dt, args.seed)
        for c in (2, 8):
            V = torch.randn(k, n, c, dtype=dt)
            Vt = V.transpose(1, 2).contiguous()
            T = torch.randn(k, m, c, dtype=dt)
            Tt = T.transpose(1, 2).contiguous()
            col, row = side_by_side(partial(torch.bmm, st.S, V), partial(torch.bmm, Vt, st.S.transpose(1, 2)), R)
            rows.append([name, f"memory inner products S V, k = {k}, m = {m}, n = {n}", c, col, row, col / row])
            col, row = side_by_side(partial(torch.bmm, st.S.transpose(1, 2), T), partial(torch.bmm, Tt, st.S), R)
            rows.append([name, "reconstruction S^T T", c, col, row, col / row])
            col, row = side_by_side(partial(lbfgs_matmul_columns, st, V), partial(lb.matmul, st, V), R)
            rows.append([name, "LBFGS.matmul (whole product)", c, col, row, col / row])
            log(f"[{name} c={c}] done")
        H = torch.randn(n, n, dtype=dt)
        H = H @ H.T / n + torch.eye(n, dtype=dt)
        V1 = torch.randn(n, 2, dtype=dt)
        V1t = V1.T.contiguous()
        col, row = side_by_side(partial(torch.matmul, H, V1), partial(torch.matmul, V1t, H.T), R)
        rows.append([name, f"one problem's dense H V, n = {n}", 2, col, row, col / row])
    body = [
        "Median milliseconds over the repeats, the two forms timed in alternating order (one torch "
        "thread). Column layout: the product with a few columns (`S V`, `S^T T`, `H V`; "
        "`LBFGS.matmul` in that layout: `lbfgs_matmul_columns` in the script). Row layout: what "
        "`ncvx_core` does (`V^T S^T`, `T^T S`, `(V^T H^T)^T`; `LBFGS.matmul`).\n",
        md_table(["dtype", "product", "columns c", "column layout ms", "row layout ms", "column / row"], rows),
    ]
    write_results(out_path(args, "products", device), "Products with the inverse-Hessian approximations",
                  device, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
