"""Tiny models and data for the command-line tests (used as ``--model path/to/cli_models.py:FACTORY``).

Inputs are ``(N, 1, 4, 4)`` in [0, 1] with 3 classes. The weights are fixed by a seed, so every
process (pytest, a subprocess, torchrun workers) builds the same model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

N_CLASSES = 3
SHAPE = (1, 4, 4)


def tiny_linear() -> nn.Module:
    """Flatten + Linear(16, 3), weights from seed 0."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(16, N_CLASSES)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N_CLASSES, 16, generator=g))
        lin.bias.copy_(0.5 * torch.randn(N_CLASSES, generator=g))
    return nn.Sequential(nn.Flatten(), lin).eval()


def tiny_cnn() -> nn.Module:
    """Conv(1->4, 3x3) ReLU Flatten Linear(64, 3): has activations for the perceptual threat."""
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    lin = nn.Linear(64, N_CLASSES)
    with torch.no_grad():
        for p in (*conv.parameters(), *lin.parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin).eval()


def not_a_model() -> int:
    return 3


def make_data(n: int = 24, seed: int = 0, model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x (n, 1, 4, 4)`` float32 in [0.2, 0.8] and labels: the model's prediction, except every
    7th sample, which gets another label (a misclassified sample)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, size=(n, *SHAPE)).astype(np.float32)
    m = model if model is not None else tiny_linear()
    with torch.no_grad():
        pred = m(torch.from_numpy(x)).argmax(1).numpy()
    y = pred.copy()
    y[::7] = (y[::7] + 1) % N_CLASSES
    return x, y.astype(np.int64)
