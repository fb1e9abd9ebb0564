"""Side-by-side variants of ``adv.attack`` on the digits CNN: images broken and time per image.

Each variant is a JSON dict of ``adv.attack`` keyword arguments, optionally with the protocol
constants ``"stall_iters"`` (``adv.runner.STALL_ITERS``) and ``"previous_step_factor"``
(``ncvx_core.solver._PREVIOUS_STEP_FACTOR``). For every seed and threat the variants run one after
the other in this process, on the first ``--n`` correctly classified test images of
``adv.zoo.default_model('adversarial')``; every success is ``adv.judge``'s verdict. The table
gives, per variant, the images broken per seed and in all, and the seconds per image (the same
machine, one after the other: compare ratios within one file).

    .venv/bin/python benchmarks/sweep_adv.py --variants '{}' '{"class_restarts": 0}' \\
        --threats linf:0.15 l2:0.75 l1:1.5 --seeds 0 1 2 --name sweep_class_restarts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

CONSTANTS = {"stall_iters": ("adv.runner", "STALL_ITERS"),
             "previous_step_factor": ("ncvx_core.solver", "_PREVIOUS_STEP_FACTOR")}


def _variant(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--variants: not a JSON object: {text!r} ({exc})") from exc
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"--variants: expected a JSON object, got {text!r}")
    return v


def _threat(text: str) -> tuple[str, float]:
    name, _, eps = text.partition(":")
    try:
        e = float(eps)
    except ValueError:
        e = -1.0
    if not name or e <= 0:
        raise argparse.ArgumentTypeError(f"--threats: expected NAME:EPS with EPS > 0, e.g. linf:0.15, got {text!r}")
    return name, e


def run_variant(model: Any, x: torch.Tensor, y: torch.Tensor, threat: str, eps: float, seed: int,
                variant: dict[str, Any]) -> tuple[int, float]:
    """Images broken (judged) and seconds per image of one ``adv.attack`` call."""
    import importlib

    import adv

    kw = dict(variant)
    saved = []
    for key, (mod_name, attr) in CONSTANTS.items():
        if key in kw:
            mod = importlib.import_module(mod_name)
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, type(getattr(mod, attr))(kw.pop(key)))
    try:
        t = time.perf_counter()
        res = adv.attack(model, x, y, threat, eps=eps, seed=seed, **kw)
        dt = time.perf_counter() - t
    finally:
        for mod, attr, val in saved:
            setattr(mod, attr, val)
    verdict = adv.judge(model, x, y, res.x_adv, threat, eps)
    return int(verdict.success.sum()), dt / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", type=_variant, required=True,
                    help="JSON dicts of adv.attack keyword arguments (plus stall_iters, previous_step_factor)")
    ap.add_argument("--threats", nargs="+", type=_threat, default=[("linf", 0.15), ("l2", 0.75), ("l1", 1.5)])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=300, help="images (default 300)")
    ap.add_argument("--name", default="sweep_adv")
    common.add_common_args(ap, default_out="sweep_adv")
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    device, _ = common.setup(args)
    from adv.zoo import default_model, load_digits

    model = default_model("adversarial").to(device)
    X, Y = load_digits("test")
    X, Y = X.to(device), Y.to(device)
    with torch.no_grad():
        ok = model(X).argmax(1) == Y
    x, y = X[ok][: args.n], Y[ok][: args.n]
    body = [f"Model: `adv.zoo.default_model('adversarial')`; the first {x.shape[0]} correctly classified test "
            "images; variants run one after the other in one process.\n"]
    for threat, eps in args.threats:
        rows = []
        for v in args.variants:
            broken, secs = [], []
            for seed in args.seeds:
                b, s = run_variant(model, x, y, threat, eps, seed, v)
                common.log(f"[{threat} {eps}] {json.dumps(v)} seed {seed}: broken {b} / {x.shape[0]}, {s:.4f} s/image")
                broken.append(b)
                secs.append(s)
            rows.append([f"`{json.dumps(v)}`", " / ".join(str(b) for b in broken), sum(broken),
                         " / ".join(f"{s:.4f}" for s in secs)])
        body.append(f"## {threat}, eps = {eps} (seeds {' / '.join(map(str, args.seeds))})\n")
        body.append(common.md_table(["variant", "broken per seed", "broken in all", "s / image per seed"], rows))
    common.write_results(common.out_path(args, args.name, device), "adv.attack variants side by side (digits)",
                         device, body)


if __name__ == "__main__":
    main()
