"""Attack losses on logits, batched, no reduction (spec/pwcf.md section 1.1).

All functions take ``logits`` of shape ``(B, K)`` and labels ``y`` of shape ``(B,)`` (int64) and
return ``(B,)`` in the dtype of the logits. They are written so that an attacker *maximises*
them, and ``target`` switches to the targeted variant (labels ``(B,)``, ``target != y``).

Sign conventions:

- :func:`margin` untargeted ``max_{j != y} z_j - z_y``; ``>= 0`` means misclassified (a tie counts
  as success, as in the spec). Targeted ``z_t - max_{j != t} z_j``; ``>= 0`` means the target is
  (one of) the top class(es).
- :func:`cross_entropy` untargeted ``CE(z, y)``; targeted ``-CE(z, t)``.
- :func:`dlr` the Difference-of-Logits-Ratio loss of Croce & Hein (2020): untargeted
  ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)`` (``K >= 3``), targeted
  ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)`` (``K >= 4``), ``z_(k)`` the k-th largest.

A NaN logit row gives NaN only in that row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "margin",
    "cross_entropy",
    "dlr",
    "clipped",
    "CE_CLIP_PAPER",
    "ce_clip_code",
    "LOSSES",
    "MARGIN_CLIP_PAPER",
]

#: CE clip value of the paper (footnote: success once CE > log K, and log K < 10).
CE_CLIP_PAPER = 10.0
#: Margin clip used by the PWCF objective ``-min(margin, 0.01)``.
MARGIN_CLIP_PAPER = 0.01


def _check(
    logits: Tensor, y: Tensor, target: Tensor | None, min_k: int = 2, who: str = "loss"
) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}")
    B, K = logits.shape
    if K < min_k:
        raise ValueError(f"{who} needs K >= {min_k} classes, got K={K}")
    if y.shape != (B,):
        raise ValueError(f"y must have shape ({B},), got {tuple(y.shape)}")
    if target is not None and target.shape != (B,):
        raise ValueError(f"target must have shape ({B},), got {tuple(target.shape)}")


def _max_other(logits: Tensor, label: Tensor) -> Tensor:
    """``max_{j != label} z_j`` per row."""
    masked = logits.scatter(1, label[:, None], float("-inf"))
    return masked.amax(dim=1)


def margin(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Margin (CW) loss, ``(B, K), (B,) -> (B,)``; ``>= 0`` iff the attack succeeded (ties count).

    Untargeted ``max_{j != y} z_j - z_y``; targeted ``z_t - max_{j != t} z_j``.
    """
    _check(logits, y, target, 2, "margin")
    label = y if target is None else target
    z_l = logits.gather(1, label[:, None]).squeeze(1)
    other = _max_other(logits, label)
    return other - z_l if target is None else z_l - other


def cross_entropy(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy, ``(B, K), (B,) -> (B,)``: untargeted ``CE(z, y)``, targeted ``-CE(z, t)``."""
    _check(logits, y, target, 1, "cross_entropy")
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def dlr(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Difference-of-Logits-Ratio loss (Croce & Hein 2020), ``(B, K), (B,) -> (B,)``.

    Untargeted (``K >= 3``): ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3) + 1e-12)``.
    Targeted (``K >= 4``): ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)``.

    Raises:
        ValueError: too few classes (the message names K).
    """
    _check(
        logits, y, target, 3 if target is None else 4, "dlr" if target is None else "targeted dlr"
    )
    zs, _ = torch.sort(logits, dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        num = z_y - _max_other(logits, y)
        den = zs[:, 0] - zs[:, 2] + 1e-12
    else:
        z_t = logits.gather(1, target[:, None]).squeeze(1)
        num = z_y - z_t
        den = zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12
    return -num / den


def clipped(loss: Tensor, clip: float) -> Tensor:
    """``min(loss, clip)`` elementwise (zero gradient above the clip)."""
    return torch.clamp(loss, max=clip)


def ce_clip_code(num_classes: int) -> float:
    """The CE clip of the authors' code: ``log K + 0.1`` (2.40 for CIFAR-10, 4.71 for K = 100)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return math.log(num_classes) + 0.1


LOSSES = {"margin": margin, "ce": cross_entropy, "dlr": dlr}
