"""Input validation for the adv layer: validate once, at entry, with messages that name the argument.

Errors raised here say which argument is wrong, what was expected and what was received
(STYLE.md section 3.7). ``ValueError`` for a bad value or shape, ``TypeError`` for a wrong type.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["check_inputs", "check_eps", "check_labels"]

_STOCHASTIC_TRAIN_MODULES = (_BatchNorm, _DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _first_indices(mask: Tensor, limit: int = 10) -> list[int]:
    return mask.nonzero().flatten()[:limit].tolist()


def check_labels(name: str, labels: object, batch: int, num_classes: int | None) -> Tensor:
    """Check a label tensor: ``(batch,)`` int64 with values in ``[0, num_classes)``.

    Raises:
        TypeError: not a tensor, or not int64 (the message names ``name``).
        ValueError: wrong shape or out-of-range labels.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of int64 labels, got {type(labels).__name__}"
        )
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64 (long), got {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match x, got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel() > 0:
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            idx = _first_indices(bad)
            raise ValueError(
                f"{name} must be in [0, {num_classes}) (K = {num_classes} classes), got values "
                f"{labels[bad][:10].tolist()} at indices {idx}"
            )
    return labels


def _training_stochastic(model: nn.Module) -> list[str]:
    return [
        f"{name or type(m).__name__} ({type(m).__name__})"
        for name, m in model.named_modules()
        if m.training and isinstance(m, _STOCHASTIC_TRAIN_MODULES)
    ]


def check_inputs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
    num_classes: int | None = None,
    allow_nonfinite: bool = False,
) -> int:
    """Validate an attack's inputs and return the number of classes ``K``.

    Checks, in order: ``model`` is an ``nn.Module`` not in training mode with BatchNorm/Dropout
    (samples would not be independent and BN statistics would change); ``x`` is a floating tensor
    of shape ``(B, ...)`` with values in ``[0, 1]`` (non-finite entries are rejected unless
    ``allow_nonfinite``, in which case they are skipped by the range check and left to the attack
    to report as failures); ``y`` is ``(B,)`` int64; ``model(x[:2])`` returns ``(b, K)`` logits;
    ``num_classes`` (if given) equals ``K``; labels in ``[0, K)``; ``target`` (if given) passes the
    same label checks and differs from ``y`` everywhere.

    The model is run once on at most two samples, under ``torch.no_grad``.

    Returns:
        ``K``, the number of classes.

    Raises:
        TypeError: wrong types (the message names the argument).
        ValueError: bad shapes or values (the message names the argument, expected and received).
    """
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(
                f"model must be a torch.nn.Module (or callable), got {type(model).__name__}"
            )
    else:
        bad = _training_stochastic(model)
        if bad:
            raise ValueError(
                "model is in training mode with BatchNorm/Dropout modules "
                f"({', '.join(bad[:5])}{'...' if len(bad) > 5 else ''}): samples are not independent "
                "and BatchNorm statistics would be updated; call model.eval() first"
            )
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must have shape (B, ...) with B >= 1 and at least 2 dims, got {tuple(x.shape)}"
        )
    finite = torch.isfinite(x)
    if not allow_nonfinite and not bool(finite.all()):
        rows = (~finite).reshape(x.shape[0], -1).any(dim=1)
        raise ValueError(f"x must be finite, got NaN/Inf entries in samples {_first_indices(rows)}")
    if bool(finite.any()):
        vals = x[finite]
        lo, hi = float(vals.min()), float(vals.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must lie in [0, 1], got min {lo:.6g} and max {hi:.6g}")
    B = x.shape[0]
    check_labels("y", y, B, None)
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    try:
        with torch.no_grad():
            out = model(x[: min(B, 2)])
    except Exception as exc:  # re-raised with context; the original is chained
        raise ValueError(
            f"model(x) failed on x of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}: {exc}"
        ) from exc
    if not isinstance(out, Tensor):
        raise TypeError(
            f"model output must be a logits tensor of shape (B, K), got {type(out).__name__}"
        )
    if out.dim() != 2 or out.shape[0] != min(B, 2):
        raise ValueError(
            f"model output must have shape (B, K) (logits), got {tuple(out.shape)} for a batch of {min(B, 2)}"
        )
    K = int(out.shape[1])
    if K < 2:
        raise ValueError(f"model output must have K >= 2 classes, got K={K}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
        if num_classes != K:
            raise ValueError(f"num_classes={num_classes} but the model outputs K={K} logits")
    check_labels("y", y, B, K)
    if target is not None:
        check_labels("target", target, B, K)
        if target.device != x.device:
            raise ValueError(f"target must be on the device of x ({x.device}), got {target.device}")
        same = target == y
        if bool(same.any()):
            raise ValueError(
                f"target must differ from y, but target == y at indices {_first_indices(same)}"
            )
    return K


def check_eps(eps: object, batch_size: int | None = None) -> Tensor:
    """Validate a budget: a positive finite float, or a ``(B,)`` tensor of them.

    Returns:
        A float64 0-d tensor (scalar input) or the ``(B,)`` tensor converted to floating point.

    Raises:
        TypeError / ValueError: naming ``eps``.
    """
    if isinstance(eps, bool):
        raise TypeError("eps must be a positive float or a (B,) tensor, got bool")
    if isinstance(eps, (int, float)):
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be > 0 and finite, got eps={eps}")
        return torch.tensor(float(eps), dtype=torch.float64)
    if not isinstance(eps, Tensor):
        raise TypeError(f"eps must be a positive float or a (B,) tensor, got {type(eps).__name__}")
    if eps.dtype == torch.bool or eps.is_complex():
        raise TypeError(f"eps must be a real tensor, got dtype {eps.dtype}")
    if not eps.is_floating_point():
        eps = eps.to(torch.float64)
    if eps.dim() > 1:
        raise ValueError(f"eps must be a float or a (B,) tensor, got shape {tuple(eps.shape)}")
    if eps.dim() == 1 and batch_size is not None and eps.shape[0] != batch_size:
        raise ValueError(f"eps must have shape ({batch_size},) to match x, got {tuple(eps.shape)}")
    bad = ~torch.isfinite(eps) | (eps <= 0)
    if bool(bad.any()):
        raise ValueError(
            f"eps must be > 0 and finite, got {eps[bad].flatten()[:5].tolist()}"
            + ("" if eps.dim() == 0 else f" at indices {_first_indices(bad.reshape(-1))}")
        )
    return eps
