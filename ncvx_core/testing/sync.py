"""Counting host synchronisations on any device.

On a CUDA device a device-to-host copy stalls the host until the queued kernels have run. The
operations that need one are visible at the dispatcher on every device: reading a scalar
(``.item()``, ``bool()``, ``int()``, ``float()``: ``aten._local_scalar_dense``), ``nonzero``,
``masked_select``, ``unique`` and indexing with a boolean mask (a hidden ``nonzero``). The other
direction blocks too: a tensor made from host numbers (``torch.tensor(3, device=dev)``, or a CPU
``torch.tensor(3)`` mixed into an operation on device tensors) is a blocking host-to-device copy,
seen as a call of ``torch.tensor`` or ``torch.as_tensor`` on host data. (``t[idx] = 3`` is not one:
on a CUDA tensor the scalar is filled in on the device.) :class:`SyncCounter` counts them under a
``TorchDispatchMode`` (plus ``.tolist()``, ``.numpy()``, ``.cpu()`` and the host-data factories,
seen by a ``TorchFunctionMode``), so sync budgets can be checked and measured on a CPU-only machine (``tests/test_host_sync.py``, ``benchmarks/bench_host_sync.py``).
It is a diagnostic: dispatch modes slow every operation down.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_FACTORIES", "SYNC_METHODS", "SYNC_OPS", "SyncCounter"]

#: Dispatcher operations that copy from the device to the host on a CUDA device.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
    "aten._unique2.default", "aten.unique_consecutive.default", "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
})


def _bool_index(args: tuple[Any, ...]) -> bool:
    idx = args[1] if len(args) > 1 else None
    return isinstance(idx, (list, tuple)) and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)


#: Tensor methods that copy to the host: ``.tolist()``, ``.numpy()`` and ``.cpu()`` (which a CPU
#: tensor serves without a dispatched operation), and the scalar reads ``.item()``, ``bool()``,
#: ``int()``, ``float()`` and ``operator.index`` (seen at the dispatcher as ``_local_scalar_dense``,
#: except under ``torch.inference_mode``, where the dispatch mode does not see them: the solver's
#: arithmetic runs there). Each call counts once: the dispatcher does not count again inside it.
SYNC_METHODS = frozenset({"tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__",
                          "__complex__"})

#: Factories that copy host data to the device (counted unless their data is already a tensor).
HOST_FACTORIES = frozenset({"tensor", "as_tensor"})


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func)
        if self.counter._inside:  # within a method the function mode has counted already
            return func(*args, **(kwargs or {}))
        if name in SYNC_OPS or (name.startswith(("aten.index.", "aten.index_put")) and _bool_index(args)):
            self.counter._hit()
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in SYNC_METHODS:
            self.counter._hit()
            self.counter._inside += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.counter._inside -= 1
        if name in HOST_FACTORIES and args and not isinstance(args[0], torch.Tensor):
            self.counter._hit()
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Counts the operations that synchronise with the host on a CUDA device (a context manager).

    Dispatched operations in :data:`SYNC_OPS`, boolean-mask indexing, and the tensor methods in
    :data:`SYNC_METHODS` (which a CPU tensor serves without dispatching), and the factories in
    :data:`HOST_FACTORIES` called on host data (a host-to-device copy).

    Attributes:
        n: number of such operations seen.
        sites: with ``sites=True``, a :class:`collections.Counter` keyed by where they came from:
            ``"file.py:function"`` of the innermost frame inside the ``ncvx_core`` package, or
            ``"problem function"`` when the innermost package frame is the call of the user's
            function.
    """

    def __init__(self, *, sites: bool = False) -> None:
        self.n = 0
        self._sites = sites
        self.sites: Counter[str] = Counter()
        self._inside = 0
        self._modes = (_Function(self), _Dispatch(self))

    def __enter__(self) -> SyncCounter:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)

    def _hit(self) -> None:
        self.n += 1
        if self._sites:
            self.sites[self._site()] += 1

    @staticmethod
    def _site() -> str:
        stack = traceback.extract_stack()
        inside = [i for i, f in enumerate(stack) if "/ncvx_core/" in f.filename.replace("\\", "/")
                  and "/ncvx_core/testing/" not in f.filename.replace("\\", "/")]
        if not inside:
            return "outside ncvx_core"
        last = stack[inside[-1]]
        if last.filename.endswith("problem.py") and last.name == "_call" and inside[-1] < len(stack) - 1:
            return "problem function"
        return f"{last.filename.replace(chr(92), '/').split('/ncvx_core/')[-1]}:{last.name}"
