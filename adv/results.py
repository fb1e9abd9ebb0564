"""Result containers of :func:`adv.attack`, :func:`adv.min_distortion` and :func:`adv.evaluate`.

All per-sample tensors have the batch dimension first. Every container has ``.to(device)``,
``save(path)`` (``torch.save`` of a plain dict of tensors, floats, strings and lists) and the class
method ``load(path, map_location=None)``.

Status codes (``status``): the :class:`ncvx_core.Status` code of the solver run that produced the
returned point (0 converged, 3 halted at a verified success, 4 iteration limit, 5 time limit, ...),
or ``-1`` where the solver was not run for that sample (its clean input already meets the attack's
goal, or the time limit was spent before it was reached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from adv.judge import Verdict

__all__ = ["AttackResult", "MinDistortionResult", "Report"]


def _move(v: Any, device: Any) -> Any:
    if isinstance(v, Tensor):
        return v.to(device)
    if isinstance(v, Verdict):
        return Verdict(**{f.name: _move(getattr(v, f.name), device) for f in fields(v)})
    if isinstance(v, dict):
        return {k: _move(x, device) for k, x in v.items()}
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, Verdict):
        d = {f.name: getattr(v, f.name) for f in fields(v)}
        d["model_dtype"] = str(d["model_dtype"]).replace("torch.", "")
        return {"__verdict__": d}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _unplain(v: Any) -> Any:
    if isinstance(v, dict) and "__verdict__" in v:
        d = dict(v["__verdict__"])
        d["model_dtype"] = getattr(torch, d.get("model_dtype", "float64"))
        return Verdict(**d)
    if isinstance(v, dict):
        return {k: _unplain(x) for k, x in v.items()}
    return v


class _Saveable:
    def to(self, device: Any) -> Any:
        """A copy with every tensor moved to ``device``."""
        return type(self)(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})  # type: ignore[arg-type]

    def save(self, path: Any) -> None:
        """Write with ``torch.save`` as a plain dict (readable without this package's classes)."""
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        data["__class__"] = type(self).__name__
        torch.save(data, path)

    @classmethod
    def load(cls, path: Any, map_location: Any = None) -> Any:
        """Read a file written by :meth:`save`."""
        data = torch.load(path, map_location=map_location, weights_only=False)
        name = data.pop("__class__", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"{path} holds a {name}, not a {cls.__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: _unplain(v) for k, v in data.items() if k in known})


@dataclass
class AttackResult(_Saveable):
    """Outcome of :func:`adv.attack` (max-loss, paper Eq. 1).

    Attributes:
        x_adv: ``(B, *shape)`` returned points, clipped to ``[0, 1]``, in the dtype of ``x`` (the
            clean input where nothing better was found).
        success: ``(B,)`` bool, verified by :func:`adv.judge.judge` (finite, misclassified or target
            reached, within the budget).
        distance: ``(B,)`` float64 judged distance of ``x_adv`` to ``x``.
        margin: ``(B,)`` float64 judged (unclipped) margin at ``x_adv``; ``>= 0`` is a success.
        status: ``(B,)`` solver code of the run that produced ``x_adv`` (``-1``: not run).
        iterations: ``(B,)`` accepted solver iterations over all restarts and the continuation.
        restarts_used: ``(B,)`` restarts run for each sample.
        seconds: wall time of the call.
        verdict: the full :class:`adv.judge.Verdict` (with the per-sample ``reason``).
        eps: ``(B,)`` budgets; loss: the attack loss; distance_name: the threat model.
        continued: ``(B,)`` bool, the sample's best restart was warm-continued.
    """

    x_adv: Tensor
    success: Tensor
    distance: Tensor
    margin: Tensor
    status: Tensor
    iterations: Tensor
    restarts_used: Tensor
    seconds: float
    verdict: Verdict | None = None
    eps: Tensor | None = None
    loss: str = "margin"
    distance_name: str = ""
    continued: Tensor | None = None

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean()) if self.success.numel() else 0.0

    def __len__(self) -> int:
        return int(self.success.shape[0])

    def summary(self) -> str:
        return (f"{len(self)} samples, {int(self.success.sum())} verified successes "
                f"({100 * self.success_rate:.1f} %), {self.distance_name} eps "
                f"{'' if self.eps is None else f'{float(self.eps.max()):.6g}'}, loss {self.loss}, "
                f"{self.seconds:.2f} s")


@dataclass
class MinDistortionResult(_Saveable):
    """Outcome of :func:`adv.min_distortion` (paper Eq. 4 / Eq. 12).

    Attributes:
        x_adv: ``(B, *shape)`` returned points, clipped to ``[0, 1]``.
        radius: ``(B,)`` float64: the judged distance of ``x_adv`` where the judge confirms the
            misclassification (or the target), ``inf`` where nothing was found.
        success: ``(B,)`` bool, ``radius < inf``.
        distance: ``(B,)`` float64 judged distance of ``x_adv`` (also where it failed).
        margin: ``(B,)`` float64 judged margin at ``x_adv``.
        status, iterations, restarts_used, seconds, verdict, continued: as in :class:`AttackResult`
            (the verdict is the judge's with ``bound = radius``).
        distance_name: the distance.
        pwcf_radius: ``(B,)`` float64 judged radius of the PWCF point, before the APGD bisection
            of :func:`adv.min_distortion` (equal to ``radius`` where the bisection is off or found
            nothing closer); None in results saved before the field existed.
    """

    x_adv: Tensor
    radius: Tensor
    success: Tensor
    distance: Tensor
    margin: Tensor
    status: Tensor
    iterations: Tensor
    restarts_used: Tensor
    seconds: float
    verdict: Verdict | None = None
    distance_name: str = ""
    continued: Tensor | None = None
    pwcf_radius: Tensor | None = None

    def __len__(self) -> int:
        return int(self.success.shape[0])

    def summary(self) -> str:
        r = self.radius[self.success]
        med = float(r.median()) if r.numel() else math.nan
        return (f"{len(self)} samples, {int(self.success.sum())} with a verified radius, "
                f"{self.distance_name} median radius {med:.6g}, {self.seconds:.2f} s")


@dataclass
class Report(_Saveable):
    """Outcome of :func:`adv.evaluate`.

    Attributes:
        attacks: the attack names, in run order.
        clean_correct: ``(B,)`` bool, the model classifies the clean input correctly.
        success: ``dict attack -> (B,) bool`` judged successes (False where the attack did not run).
        distance: ``dict attack -> (B,)`` judged distances (NaN where it did not run).
        x_adv: ``dict attack -> (B, *shape)`` returned points (the clean input where it did not run).
        ran: ``dict attack -> (B,) bool``, the samples each attack was run on.
        union_success: ``(B,)`` bool, broken by at least one attack.
        first_broken_by: ``(B,)`` long index into ``attacks`` of the first attack (in order) that
            broke the sample, ``-1`` if none.
        robust_accuracy: ``dict``: ``"clean"`` (clean accuracy), one entry per attack and
            ``"union"``; fractions of all B samples that are clean-correct and not broken.
        cascade: ``dict attack -> robust accuracy after the attacks up to and including it`` (the
            AutoAttack-style running union).
        seconds: ``dict attack -> wall time``.
        per_attack: True when every attack ran on all clean-correct samples (comparable per-attack
            numbers), False for the pure cascade (each attack only on the still-robust samples, so
            its own entry in ``robust_accuracy`` is an upper bound on its standalone number).
        eps: ``(B,)`` budgets; distance_name: the threat model.
    """

    attacks: list[str]
    clean_correct: Tensor
    success: dict[str, Tensor]
    distance: dict[str, Tensor]
    x_adv: dict[str, Tensor]
    ran: dict[str, Tensor]
    union_success: Tensor
    first_broken_by: Tensor
    robust_accuracy: dict[str, float]
    cascade: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    per_attack: bool = True
    eps: Tensor | None = None
    distance_name: str = ""

    def __len__(self) -> int:
        return int(self.clean_correct.shape[0])

    def summary(self) -> str:
        lines = [f"{len(self)} samples, {self.distance_name}, clean accuracy "
                 f"{100 * self.robust_accuracy['clean']:.2f} %"]
        for a in self.attacks:
            lines.append(f"  {a:<14} robust accuracy {100 * self.robust_accuracy[a]:6.2f} %   "
                         f"(cascade {100 * self.cascade[a]:6.2f} %, {self.seconds.get(a, math.nan):.2f} s)")
        lines.append(f"  {'union':<14} robust accuracy {100 * self.robust_accuracy['union']:6.2f} %")
        return "\n".join(lines)
