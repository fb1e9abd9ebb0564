"""benchmarks/sweep_adv.py: argument checks, and a variant's protocol constants are applied for
its call only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_models  # noqa: E402
import sweep_adv  # noqa: E402


def test_threat_and_variant_arguments_are_checked():
    assert sweep_adv._threat("linf:0.15") == ("linf", 0.15)
    for bad in ("linf", "linf:0", "l2:x", ":0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME:EPS"):
            sweep_adv._threat(bad)
    assert sweep_adv._variant('{"class_restarts": 0}') == {"class_restarts": 0}
    for bad in ("[1]", "{bad"):
        with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
            sweep_adv._variant(bad)


def test_variant_constants_apply_to_its_call_only(monkeypatch):
    import adv
    import adv.runner

    seen = []
    real = adv.attack

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        seen.append((adv.runner.STALL_ITERS, k.get("class_restarts")))
        return real(*a, **k)

    monkeypatch.setattr(adv, "attack", spy)
    model = cli_models.tiny_linear().double().eval()
    x, y = cli_models.make_data(4)
    x, y = torch.from_numpy(x).double(), torch.from_numpy(y).long()
    before = adv.runner.STALL_ITERS
    broken, secs = sweep_adv.run_variant(model, x, y, "l2", 0.3, 0,
                                         {"stall_iters": 7, "class_restarts": 0, "restarts": 1, "maxit": 10,
                                          "restart_maxit": 10})
    assert seen == [(7, 0)]
    assert adv.runner.STALL_ITERS == before
    assert 0 <= broken <= 4 and secs > 0
