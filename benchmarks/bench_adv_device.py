"""``adv`` on a device against the same calls on the CPU: a short check that the attack layer runs
there (closed-form constraint gradients, in-run checks, the judge) and finds what it finds on the
CPU.

The embedded digits CNN (:func:`adv.zoo.default_model`, ``--model``; trained on first use, about
10 s on a CPU, then cached) on the first ``--n`` correctly classified test images:
:func:`adv.attack` at l-infinity ``--eps-linf`` and l2 ``--eps-l2`` (the default protocol) and
:func:`adv.min_distortion` at l2 on the first ``--n-min`` of them, each run on ``--device`` and,
side by side, on the CPU. Every success is the verdict of :func:`adv.judge` (float64) on the
returned points, on the CPU. The table gives images broken, the judge's violations, mean
minimal radius and seconds per image on each device; the restarts draw their random starts on the
CPU, but the solves round differently on the device, so the paths (and a few outcomes) can differ.

    .venv/bin/python benchmarks/bench_adv_device.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_common_args, log, md_table, out_path, setup, timed, write_results  # noqa: E402

import adv  # noqa: E402
from adv.zoo import default_model, load_digits  # noqa: E402


def _run(kind: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: str, eps: float | None,
         device: torch.device, seed: int) -> tuple[Any, float]:
    m = model.to(device)
    xd, yd = x.to(device), y.to(device)
    if kind == "attack":
        return timed(lambda: adv.attack(m, xd, yd, threat, eps=eps, seed=seed), device)
    return timed(lambda: adv.min_distortion(m, xd, yd, threat, seed=seed), device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="adv_device")
    ap.add_argument("--n", type=int, default=64, help="images for the max-loss attacks (default 64)")
    ap.add_argument("--n-min", type=int, default=16, help="images for the minimal-distortion run (default 16)")
    ap.add_argument("--model", default="adversarial", choices=["adversarial", "standard"])
    ap.add_argument("--eps-linf", type=float, default=0.15)
    ap.add_argument("--eps-l2", type=float, default=0.75)
    args = ap.parse_args()
    for name in ("n", "n_min"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("eps_linf", "eps_l2"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    device, _ = setup(args)
    cpu = torch.device("cpu")
    model = default_model(args.model)
    X, Y = load_digits("test")
    with torch.no_grad():
        keep = model(X).argmax(1) == Y
    X, Y = X[keep][: args.n], Y[keep][: args.n]
    devices = [device] if device.type == "cpu" else [device, cpu]
    rows = []
    for kind, threat, eps, n in (("attack", "linf", args.eps_linf, args.n), ("attack", "l2", args.eps_l2, args.n),
                                 ("min_distortion", "l2", None, args.n_min)):
        x, y = X[:n], Y[:n]
        for dev in devices:
            log(f"[adv-device] {kind} {threat} on {dev}, {n} images")
            res, secs = _run(kind, model, x, y, threat, eps, dev, args.seed)
            x_adv = res.x_adv.to(cpu)
            model.to(cpu)
            if kind == "attack":
                v = adv.judge(model, x, y, x_adv, threat, eps)
                radius = None
            else:
                radius_t = res.radius.to(cpu).to(torch.float64)
                v = adv.judge(model, x, y, x_adv, threat, radius_t)  # inf radius: never a success
                radius = float(radius_t[v.success].mean()) if bool(v.success.any()) else None
            claimed = res.success.to(cpu)
            rows.append([f"{kind} {threat}" + (f" eps {eps}" if eps is not None else ""), str(dev), n,
                         int(v.success.sum()), int((claimed & ~v.success).sum()), radius, secs / n])
            _write(args, device, rows)  # after every run: a cut-off run keeps its rows


def _write(args: argparse.Namespace, device: torch.device, rows: list[list[Any]]) -> None:
    body = [
        f"Model: `adv.zoo.default_model({args.model!r})`; the first {args.n} correctly classified digits test "
        f"images ({args.n_min} for minimal distortion); seed {args.seed}. 'broken' = judged successes "
        "(`adv.judge`, float64, on the CPU); 'unverified' = reported successes the judge rejects (must be 0).\n",
        md_table(["run", "device", "images", "broken", "unverified", "mean radius (broken)", "s / image"], rows),
    ]
    write_results(out_path(args, "adv_device", device), "adv on a device against the CPU", device, body, quiet=True)


if __name__ == "__main__":
    main()
