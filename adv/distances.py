"""Threat-model distances: lp norms (any p > 0), a perceptual feature distance, and projections.

Every distance maps two batches ``x, x_ref`` of shape ``(B, ...)`` to a ``(B,)`` tensor in the
dtype of ``x``, differentiable in ``x``.

Contents:

- :class:`Lp` -- the lp norm of ``x - x_ref`` flattened per sample, for any ``p > 0`` (``p < 1`` is the
  quasi-norm ``(sum |d|^p)^(1/p)``) and ``p = inf``. Euclidean projection onto the lp ball for
  ``p in {1, 2, inf}`` (l1 by the sort-based simplex method, batched).
- :func:`project_l1_box` -- the exact Euclidean projection onto the l1 ball intersected with a box
  (the effective l1 threat model ``B_1(x, eps) ∩ [0, 1]^n`` of Croce & Hein 2021), batched.
- :class:`Perceptual` -- an LPIPS-style distance on user-given feature maps, squared or not
  (the PWCF code uses the squared form, the paper and the perceptual baselines the unsquared one;
  see spec/pwcf.md section 1.5).
- :func:`parse_distance` -- ``"l2"``, ``"Linf"``, ``"lp:1.5"``, ``2``, ``float("inf")`` or an instance.
- :func:`classifier_features` -- a classifier's own activations as perceptual features.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Distance",
    "Lp",
    "Perceptual",
    "parse_distance",
    "classifier_features",
    "project_l1_box",
]

_PERCEPTUAL_EPS = 1e-10


@runtime_checkable
class Distance(Protocol):
    """A batched distance between two inputs.

    Attributes:
        name: a short identifier (``"l2"``, ``"linf"``, ``"l1.5"``, ``"perceptual"``).

    Shapes:
        ``x, x_ref``: ``(B, ...)`` (same shape); result ``(B,)`` in the dtype of ``x``.
    """

    name: str

    def __call__(self, x: Tensor, x_ref: Tensor) -> Tensor: ...


def _flat(t: Tensor) -> Tensor:
    """``(B, ...) -> (B, n)``; a 1-D tensor is one sample per entry (``n = 1``)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a batched tensor of shape (B, ...), got {type(t).__name__}")
    if t.dim() == 0:
        raise ValueError("expected a batched tensor of shape (B, ...), got a 0-d tensor")
    return t.reshape(t.shape[0], -1)


def _eps_column(eps: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """Broadcast ``eps`` (float, 0-d or (B,)) to a ``(B, 1)`` column in ``like``'s dtype/device."""
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.dim() == 0:
        e = e.expand(batch)
    elif e.shape != (batch,):
        raise ValueError(f"eps must be a float or have shape ({batch},), got {tuple(e.shape)}")
    if bool((e < 0).any()):
        raise ValueError(f"eps must be >= 0, got min {float(e.min())}")
    return e.reshape(batch, 1)


def _format_p(p: float) -> str:
    if math.isinf(p):
        return "inf"
    if float(p).is_integer():
        return str(int(p))
    return f"{p:g}"


class Lp:
    """The lp distance ``||x - x_ref||_p`` of the per-sample flattened difference.

    Args:
        p: the exponent, ``p > 0`` or ``inf``. For ``0 < p < 1`` the quasi-norm
            ``(sum |d_i|^p)^(1/p)`` is returned (not a norm: no triangle inequality).

    Raises:
        ValueError: ``p <= 0`` or NaN (the message names ``p``).

    Shapes:
        ``__call__(x, x_ref)``: ``(B, ...) x2 -> (B,)``; ``norm(delta)``: ``(B, ...) -> (B,)``;
        ``project(delta, eps)``: ``(B, ...) -> (B, ...)`` with ``eps`` a float or ``(B,)``.
    """

    def __init__(self, p: float) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"p must be a real number > 0 or inf, got {type(p).__name__}")
        p = float(p)
        if math.isnan(p) or p <= 0:
            raise ValueError(f"p must be > 0 (or inf), got p={p}")
        self.p: float = p
        self.name: str = "l" + _format_p(p)

    def __repr__(self) -> str:
        return f"Lp(p={_format_p(self.p)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lp) and other.p == self.p

    def __hash__(self) -> int:
        return hash(("Lp", self.p))

    def norm(self, delta: Tensor) -> Tensor:
        """Per-sample lp norm of ``delta`` flattened: ``(B, ...) -> (B,)``."""
        return torch.linalg.vector_norm(_flat(delta), ord=self.p, dim=1)

    def norm_grad(self, delta: Tensor) -> Tensor | None:
        """The gradient of :meth:`norm` with respect to ``delta``, flattened ``(B, n)``, without
        autograd, for ``1 <= p < inf`` (None otherwise): ``sign(delta) (|delta| / ||delta||_p)^(p - 1)``,
        0 on rows where ``delta = 0`` (autograd's choice there)."""
        out = self.norm_value_grad(delta)
        return None if out is None else out[1]

    def norm_value_grad(self, delta: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(norm(delta) (B,), norm_grad(delta) (B, n))`` from one pass over ``delta`` (the norm
        to the bit), for ``1 <= p < inf``; None otherwise."""
        if not (1.0 <= self.p < math.inf):
            return None
        d = _flat(delta)
        nrm = torch.linalg.vector_norm(d, ord=self.p, dim=1, keepdim=True)
        s = torch.sign(d)
        if self.p == 1.0:
            return nrm.squeeze(1), s
        safe = torch.where(nrm > 0, nrm, torch.ones_like(nrm))
        if self.p == 2.0:
            g = d / safe
        else:
            g = s * (d.abs() / safe) ** (self.p - 1.0)
        return nrm.squeeze(1), torch.where(nrm > 0, g, torch.zeros_like(g))

    def __call__(self, x: Tensor, x_ref: Tensor) -> Tensor:
        if x.shape != x_ref.shape:
            raise ValueError(
                f"x and x_ref must have the same shape, got {tuple(x.shape)} and {tuple(x_ref.shape)}"
            )
        return self.norm(x - x_ref.to(x.dtype))

    def dual_exponent(self) -> float:
        """``q`` with ``1/p + 1/q = 1`` (``p = 1 -> inf``, ``p = inf -> 1``); only for ``p >= 1``."""
        if self.p < 1:
            raise ValueError(f"the dual exponent needs p >= 1, got p={self.p}")
        if self.p == 1:
            return math.inf
        if math.isinf(self.p):
            return 1.0
        return self.p / (self.p - 1.0)

    def project(self, delta: Tensor, eps: Tensor | float) -> Tensor:
        """Euclidean projection of each sample of ``delta`` onto ``{d : ||d||_p <= eps}``.

        Only ``p in {1, 2, inf}``. l1 uses the sort-based simplex projection (Duchi et al. 2008):
        ``d = sign(v) max(|v| - theta, 0)`` with the threshold from the sorted cumulative sums.
        Samples already inside the ball are returned unchanged. NaN in one sample stays there.

        Args:
            delta: ``(B, ...)`` perturbations.
            eps: radius, a float or ``(B,)``, ``>= 0``.

        Raises:
            NotImplementedError: for ``p`` not in ``{1, 2, inf}``.
        """
        if self.p not in (1.0, 2.0, math.inf):
            raise NotImplementedError(
                f"projection is implemented for p in {{1, 2, inf}}, not p={self.p}"
            )
        v = _flat(delta)
        e = _eps_column(eps, v.shape[0], v)
        if math.isinf(self.p):
            out = torch.maximum(torch.minimum(v, e), -e)
        elif self.p == 2.0:
            n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
            scale = torch.where(
                n > e, e / torch.where(n > 0, n, torch.ones_like(n)), torch.ones_like(n)
            )
            out = v * scale
        else:
            out = _project_l1(v, e)
        return out.reshape(delta.shape)


def _project_l1(v: Tensor, e: Tensor) -> Tensor:
    """Batched projection of rows of ``v`` (B, n) onto l1 balls of radii ``e`` (B, 1).

    The threshold is computed in float64; the result has ``v``'s dtype.
    """
    dtype = v.dtype
    v, e = v.double(), e.double()
    a = v.abs()
    inside = a.sum(dim=1, keepdim=True) <= e
    u, _ = torch.sort(a, dim=1, descending=True)
    css = torch.cumsum(u, dim=1)
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype).unsqueeze(0)
    # the support size rho is the largest j with u_j > (css_j - eps) / j
    cond = u * j > (css - e)
    rho = (cond.to(torch.int64) * torch.arange(1, v.shape[1] + 1, device=v.device)).amax(
        dim=1, keepdim=True
    )
    rho_c = rho.clamp(min=1)
    theta = (torch.gather(css, 1, rho_c - 1) - e) / rho_c.to(v.dtype)
    theta = torch.where(rho > 0, theta, a.amax(dim=1, keepdim=True))  # eps == 0: everything to 0
    proj = torch.sign(v) * torch.clamp(a - theta.clamp(min=0), min=0)
    return torch.where(inside, v, proj).to(dtype)


def project_l1_box(delta: Tensor, eps: Tensor | float, lower: Tensor, upper: Tensor) -> Tensor:
    """Exact Euclidean projection onto ``{d : ||d||_1 <= eps, lower <= d <= upper}``, batched.

    Needs ``lower <= 0 <= upper`` elementwise (the clean point lies in the box), so ``d = 0`` is
    feasible. The solution is ``d_i = clip(sign(w_i) max(|w_i| - lam, 0), lower_i, upper_i)`` with
    ``lam >= 0`` the root of the piecewise-linear, non-increasing
    ``g(lam) = sum_i min(max(|w_i| - lam, 0), c_i) = eps`` (``c_i`` the box room in the direction of
    ``w_i``); ``lam = 0`` when the box clip alone already has l1 norm ``<= eps``. The root is found
    exactly from the ``2n`` sorted breakpoints of ``g`` (``|w_i| - c_i`` and ``|w_i|``) and their
    cumulative slopes. Used by l1-APGD for the box-aware projection (Croce & Hein 2021, Sec. 3).

    Args:
        delta: ``(B, ...)`` point to project (a perturbation ``x' - x``).
        eps: float or ``(B,)`` radius ``>= 0``.
        lower, upper: ``(B, ...)`` box bounds for ``delta`` (``-x`` and ``1 - x`` for images).

    Returns:
        ``(B, ...)`` projected perturbation, same dtype as ``delta``.
    """
    shape = delta.shape
    w = _flat(delta)
    lo = _flat(lower).to(w.dtype)
    hi = _flat(upper).to(w.dtype)
    if lo.shape != w.shape or hi.shape != w.shape:
        raise ValueError(
            f"lower and upper must have the shape of delta {tuple(shape)}, "
            f"got {tuple(lower.shape)} and {tuple(upper.shape)}"
        )
    e = _eps_column(eps, w.shape[0], w)
    return _l1_box(w, e, lo, hi).reshape(shape)


def _l1_box(w: Tensor, e: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Kernel of :func:`project_l1_box` on flat ``(B, n)`` tensors, ``e`` of shape ``(B, 1)``; no checks.

    The threshold is computed in float64 (cumulative sums over 2n breakpoints), the result is cast
    back to ``w``'s dtype.
    """
    dtype = w.dtype
    w, e, lo, hi = w.double(), e.double(), lo.double(), hi.double()
    n = w.shape[1]
    a = w.abs()
    cap = torch.where(w >= 0, hi, -lo).clamp(min=0)  # room in the direction of w_i
    need = torch.minimum(a, cap).sum(dim=1, keepdim=True) > e
    # breakpoints of g: at a - cap the coordinate leaves its cap (slope -1), at a it reaches 0 (+1)
    bp = torch.cat([a - cap, a], dim=1)
    sl = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)
    bps, order = torch.sort(bp, dim=1)
    slope = torch.cumsum(torch.gather(sl, 1, order), dim=1)  # slope of g on [bps_k, bps_k+1]
    gaps = torch.diff(bps, dim=1)
    g0 = cap.sum(dim=1, keepdim=True)  # g at the smallest breakpoint: every coordinate at its cap
    g = torch.cat([g0, g0 + torch.cumsum(slope[:, :-1] * gaps, dim=1)], dim=1)  # g at breakpoints
    # last breakpoint with g >= eps; the root lies on the segment after it (where the slope is < 0)
    pos = torch.arange(1, 2 * n + 1, device=w.device)
    k = ((g >= e).to(torch.int64) * pos).amax(dim=1, keepdim=True)
    k = (k - 1).clamp(min=0, max=2 * n - 1)
    gk = torch.gather(g, 1, k)
    bk = torch.gather(bps, 1, k)
    sk = torch.gather(slope, 1, k)
    lam = bk + (gk - e) / torch.where(sk < 0, -sk, torch.ones_like(sk))
    lam = torch.where(need, lam.clamp(min=0), torch.zeros_like(lam))
    return (torch.sign(w) * torch.minimum(torch.clamp(a - lam, min=0), cap)).to(dtype)


class Perceptual:
    """LPIPS-style distance on feature maps (spec/pwcf.md section 1.5).

    ``d(x, x') = ( sum_l mean_{positions} || u_l(x)[:, :, pos] - u_l(x')[:, :, pos] ||_2^2 )^(1/2)``
    with ``u_l`` the map ``l`` with each position's channel vector divided by its l2 norm + 1e-10.
    ``squared=True`` drops the square root (the PWCF code's form; the paper's Eq. 13 and the
    LPA/PPGD baselines use the unsquared one).

    Args:
        features: ``(B, C, H, W) -> list of (B, C_l, H_l, W_l)`` maps (rank-2 ``(B, C_l)`` maps are
            treated as one position). Gradients must flow through it for attacks.
        squared: return the squared distance.

    Shapes:
        ``(B, ...) x2 -> (B,)`` in the dtype of ``x``.
    """

    name = "perceptual"

    def __init__(self, features: Callable[[Tensor], list[Tensor]], squared: bool = False) -> None:
        if not callable(features):
            raise TypeError(
                f"features must be callable (x -> list of feature maps), got {type(features).__name__}"
            )
        self.features = features
        self.squared = bool(squared)

    def __repr__(self) -> str:
        return f"Perceptual(squared={self.squared})"

    def _maps(self, x: Tensor) -> list[Tensor]:
        maps = self.features(x)
        if isinstance(maps, Tensor):
            maps = [maps]
        maps = list(maps)
        if not maps:
            raise ValueError("features returned no feature maps")
        return maps

    @staticmethod
    def _unit(f: Tensor) -> Tensor:
        if f.dim() < 2:
            raise ValueError(f"feature maps must have shape (B, C, ...), got {tuple(f.shape)}")
        f = f.reshape(f.shape[0], f.shape[1], -1)  # (B, C, P)
        return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + _PERCEPTUAL_EPS)

    def __call__(self, x: Tensor, x_ref: Tensor) -> Tensor:
        if x.shape != x_ref.shape:
            raise ValueError(
                f"x and x_ref must have the same shape, got {tuple(x.shape)} and {tuple(x_ref.shape)}"
            )
        fx = self._maps(x)
        if x_ref.requires_grad:
            fr = self._maps(x_ref)
        else:
            with torch.no_grad():
                fr = self._maps(x_ref)
        if len(fx) != len(fr):
            raise ValueError(f"features returned {len(fx)} maps for x but {len(fr)} for x_ref")
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for a, b in zip(fx, fr, strict=True):
            diff = self._unit(a) - self._unit(b.to(a.dtype))  # (B, C, P)
            total = total + diff.pow(2).sum(dim=1).mean(dim=1).to(x.dtype)
        return total if self.squared else total.sqrt()


_VALID_FORMS = ["l1", "l2", "linf", "l1.5", "lp:1.5", "lp:inf", "2", "inf", "perceptual"]
_LP_RE = re.compile(r"^l(?:p)?[:_]?\s*(inf|\d+(?:\.\d*)?|\.\d+)$")


def parse_distance(spec: str | Distance | float) -> Distance:
    """Turn a specification into a :class:`Distance`.

    Accepted: a Distance instance (returned as is); a number ``p`` (``2``, ``1.5``, ``float("inf")``);
    a string ``"l1"``, ``"l2"``, ``"linf"``/``"Linf"``/``"inf"``, ``"l1.5"``, ``"lp:1.5"``, ``"lp:inf"``
    (case-insensitive). ``"perceptual"`` cannot be parsed (it needs feature maps): build
    :class:`Perceptual` directly.

    Raises:
        ValueError: unknown form, with the closest valid form; bad ``p`` (from :class:`Lp`).
        TypeError: neither a string, a number nor a Distance.
    """
    if isinstance(spec, bool):
        raise TypeError("distance must be a string, a number p or a Distance, got bool")
    if isinstance(spec, (int, float)):
        return Lp(float(spec))
    if isinstance(spec, str):
        s = spec.strip().lower().replace(" ", "")
        if s in ("inf", "infinity"):
            return Lp(math.inf)
        if s == "perceptual" or s == "lpips":
            raise ValueError(
                "distance 'perceptual' needs feature maps: pass Perceptual(features) "
                "(e.g. Perceptual(classifier_features(model))) instead of the string"
            )
        m = _LP_RE.match(s)
        if m is None and s.startswith("lp:"):
            m = re.match(r"^lp:(inf|\d+(?:\.\d*)?|\.\d+)$", s)
        if m is not None:
            tok = m.group(1)
            return Lp(math.inf if tok == "inf" else float(tok))
        close = difflib.get_close_matches(s, _VALID_FORMS, n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown distance {spec!r}: expected one of 'l1', 'l2', 'linf', 'l<p>' or 'lp:<p>' "
            f"(p > 0), a number p, or a Distance instance{hint}"
        )
    if isinstance(spec, Distance):
        return spec
    raise TypeError(
        f"distance must be a string, a number p or a Distance, got {type(spec).__name__}"
    )


_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.PReLU,
    nn.Mish,
)


class _HookFeatures:
    """Callable returned by :func:`classifier_features`; records only during its own forward."""

    def __init__(self, model: nn.Module, layers: Sequence[str] | None) -> None:
        self.model = model
        self.layers = None if layers is None else list(layers)
        self._recording = False
        self._acts: list[Tensor] = []
        self._convs: list[Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(model.named_modules())
        if self.layers is not None:
            if not self.layers:
                raise ValueError(
                    "layers must name at least one submodule (or be None for the default)"
                )
            for name in self.layers:
                if name not in modules:
                    close = difflib.get_close_matches(name, [k for k in modules if k], n=3)
                    hint = f"; closest names: {close}" if close else ""
                    raise ValueError(f"layers: model has no submodule named {name!r}{hint}")
                self.handles.append(
                    modules[name].register_forward_hook(self._make_hook(self._acts, name))
                )
        else:
            for mod in modules.values():
                if isinstance(mod, _ACTIVATIONS):
                    self.handles.append(
                        mod.register_forward_hook(self._make_hook(self._acts, None))
                    )
                elif isinstance(mod, nn.Conv2d):
                    self.handles.append(
                        mod.register_forward_hook(self._make_hook(self._convs, None))
                    )
            if not self.handles:
                raise ValueError(
                    "classifier_features: the model has no Conv2d or activation submodules; "
                    "pass layers=[...] with the names of the submodules to use"
                )

    def _make_hook(self, store: list[Tensor], name: str | None):
        def hook(module: nn.Module, inputs, output) -> None:
            if not self._recording or not isinstance(output, Tensor):
                return
            if name is not None:
                if output.dim() == 2:
                    output = output[:, :, None, None]
                elif output.dim() != 4:
                    raise ValueError(
                        f"layers: output of {name!r} has shape {tuple(output.shape)}; "
                        "expected (B, C, H, W) or (B, C)"
                    )
                store.append(output)
            elif output.dim() == 4:
                store.append(output)

        return hook

    def __call__(self, x: Tensor) -> list[Tensor]:
        self._acts.clear()
        self._convs.clear()
        self._recording = True
        try:
            self.model(x)
        finally:
            self._recording = False
        maps = list(self._acts) if (self.layers is not None or self._acts) else list(self._convs)
        self._acts.clear()
        self._convs.clear()
        if not maps:
            raise ValueError(
                "classifier_features: no feature maps were recorded during the forward pass"
            )
        return maps

    def remove(self) -> None:
        """Remove the forward hooks from the model."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def classifier_features(
    model: nn.Module, layers: Sequence[str] | None = None
) -> Callable[[Tensor], list[Tensor]]:
    """The classifier's own activations as perceptual features (no weights are downloaded).

    Registers forward hooks on the named submodules (``layers``) and returns a callable
    ``x -> list of (B, C, H, W)`` maps, in call order (a module called twice contributes twice).
    Rank-2 outputs ``(B, C)`` of named layers become ``(B, C, 1, 1)``. Default (``layers=None``):
    every rank-4 output of an activation module (ReLU, LeakyReLU, GELU, ...), i.e. the conv
    outputs after their activation; if the model applies its activations functionally (no
    activation modules with rank-4 outputs), every Conv2d output instead. The hooks record only
    while the returned callable runs, so other forward passes are unaffected; ``.remove()``
    detaches them. Gradients flow through the maps.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layers is not None and isinstance(layers, str):
        layers = [layers]
    return _HookFeatures(model, layers)
