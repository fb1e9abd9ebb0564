"""Helpers over (nested) NamedTuples of batched tensors: gather, scatter and select by rows.

Every tensor leaf has the batch dimension first; ``None`` and non-tensor leaves pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["tree_map", "tree_rows", "tree_put", "tree_where", "tree_scatter", "bmask", "bmm", "bmv",
           "device_constant", "sync_free_on", "normal_tensors", "compute_mode"]

#: whether the solver and the native QP solvers compute in ``torch.inference_mode`` (True) or only
#: under ``torch.no_grad`` (False: for side-by-side timing, ``benchmarks/bench_inference_mode.py``)
INFERENCE_MODE = True


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def tree_map(fn: Callable[..., Any], *trees: Any) -> Any:
    """Apply ``fn`` leaf-wise over NamedTuples with the same structure (tensor leaves only)."""
    first = trees[0]
    if _is_namedtuple(first):
        return type(first)(*(tree_map(fn, *parts) for parts in zip(*trees)))
    if isinstance(first, Tensor):
        return fn(*trees)
    return first


def bmask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask (k,)`` reshaped to broadcast against ``like (k, ...)``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def tree_rows(tree: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of every leaf."""
    return tree_map(lambda t: t[idx], tree)


def tree_put(base: Any, idx: Tensor, rows: Any) -> Any:
    """Rows ``idx`` of every leaf of ``base`` set to ``rows``, in place (returns ``base``)."""
    if _is_namedtuple(base):
        return type(base)(*(tree_put(b, idx, r) for b, r in zip(base, rows)))
    if isinstance(base, Tensor):
        base[idx] = rows if rows.dtype == base.dtype else rows.to(base.dtype)
    return base


def tree_where(mask: Tensor, new: Any, old: Any) -> Any:
    """Row-wise ``mask ? new : old``."""
    return tree_map(lambda a, b: torch.where(bmask(mask, a), a, b), new, old)


def tree_scatter(base: Any, idx: Tensor, rows: Any) -> Any:
    """Copy of ``base`` with rows ``idx`` replaced by ``rows`` (out of place)."""

    def put(b: Tensor, r: Tensor) -> Tensor:
        out = b.clone()
        out[idx] = r.to(b.dtype)
        return out

    return tree_map(put, base, rows)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a @ b`` whose rows do not depend on the batch size.

    ``(k, r, s) @ (k, s, c) -> (k, r, c)``. BLAS picks a different kernel for a single column or
    row (matrix-vector) depending on the batch size, which changes the rounding of a problem's
    result with the other problems in its batch; padding to two columns/rows keeps every problem's
    arithmetic identical whether it is solved alone or in a batch.
    """
    if b.shape[-1] == 1:
        return torch.bmm(a, torch.cat([b, torch.zeros_like(b)], dim=-1))[..., :1]
    if a.shape[-2] == 1:
        return torch.bmm(torch.cat([a, torch.zeros_like(a)], dim=-2), b)[..., :1, :]
    return torch.bmm(a, b)


def bmv(a: Tensor, x: Tensor) -> Tensor:
    """Batched matrix-vector product ``(..., r, s) @ (..., s) -> (..., r)`` computed with two
    right-hand columns so that the rounding does not depend on the batch size (see :func:`bmm`)."""
    cols = torch.stack([x, torch.zeros_like(x)], dim=-1)
    return torch.matmul(a, cols)[..., 0]


_CONSTANTS: dict[tuple[Any, str], Tensor] = {}


def device_constant(key: Any, device: torch.device | str, build: Callable[[torch.device], Tensor]) -> Tensor:
    """The constant tensor ``build(device)`` (a table of host numbers), made once per process and
    device: a tensor made from host numbers is a blocking host-to-device copy on a CUDA device.
    ``key`` names the table (hashable); the result must not be written to."""
    dev = torch.device(device)
    k = (key, str(dev))
    t = _CONSTANTS.get(k)
    if t is None:
        with torch.inference_mode(False):  # a normal tensor, usable in and outside inference mode
            t = _CONSTANTS[k] = build(dev)
    return t


def compute_mode() -> Any:
    """The context the solver's own arithmetic runs in: ``torch.inference_mode()`` (no autograd
    bookkeeping on any operation), or ``torch.no_grad()`` when :data:`INFERENCE_MODE` is off."""
    return torch.inference_mode() if INFERENCE_MODE else torch.no_grad()


def normal_tensors(tree: Any) -> Any:
    """``tree`` (a tensor, NamedTuple, tuple, list or dict of them) with every tensor made in
    inference mode replaced by a normal copy, for code outside inference mode (the solver computes
    in it; user code may write to or differentiate through what it receives). Other leaves and
    normal tensors pass through uncopied. Call it outside inference mode."""
    if isinstance(tree, Tensor):
        return tree.clone() if tree.is_inference() else tree
    if _is_namedtuple(tree):
        return type(tree)(*(normal_tensors(t) for t in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(normal_tensors(t) for t in tree)
    if isinstance(tree, dict):
        return {k: normal_tensors(v) for k, v in tree.items()}
    return tree


def sync_free_on(flag: bool | None, device: torch.device) -> bool:
    """Whether to work under masks instead of host-sized copies (option ``sync_free``): ``flag``,
    or for None, whether ``device`` is not the CPU (where the host-sized copies are cheaper and a
    host read costs nothing)."""
    return flag if flag is not None else device.type != "cpu"
