"""What PWCF costs against AutoAttack when the model costs what real models cost (CPU).

:func:`adv.attack` solves in the model's own precision by default (``dtype=None``: float32 for a
float32 model); before, it always solved in float64 (``dtype=torch.float64``, still available).
On the 8x8 digits CNN of ``benchmarks/bench_adv.py`` one forward + backward pass costs well under
a millisecond per image, so the solver's per-iteration overhead dominates every timing there. This
script measures the same attacks on a CIFAR-sized CNN (3x32x32 inputs).

Sections (``--sections``, default ``cost,attack``):

* ``cost``: forward + backward time per image (the sum of the logits back-propagated to the
  input; median of ``--cost-repeats`` repeats after ``--cost-warmup`` warm-up passes) at batch
  ``--cost-batch`` in float32 and float64, for ``adv.zoo.default_model("adversarial")`` (the 8x8
  digits CNN) and for :class:`common.CifarCNN`.
* ``attack``: :class:`CifarCNN` trained here on scikit-learn's digits upsampled to 3x32x32
  (bilinear, repeated over 3 channels, values in [0, 1]; :func:`upsampled_digits`), deterministic
  (fixed seeds, one thread; :data:`RECIPE`: plain epochs, then l-infinity PGD adversarial epochs)
  and cached under ``--cache`` (default ``adv.zoo.cache_dir()``, the system temp directory when
  that is not writable) as ``cifar_digits_cnn_<RECIPE_VERSION>.pt``, so reruns skip the training.
  The first ``--n`` correctly classified test images are attacked at l-infinity ``--eps`` by
  ``adv.attack`` with its defaults (float32 solve), ``adv.attack(..., dtype=torch.float64)`` (the
  previous default; ``--no-float64`` skips it), AutoAttack's standard components at the published
  budget composed from torchattacks' classes as ``bench_adv.py`` composes them (APGD-CE, APGD-T,
  FAB-T, Square; ``--aa-steps`` iterations, ``--square-queries`` queries), torchattacks'
  ``AutoAttack(version="standard")`` as shipped, and ``adv.apgd`` CE (100 iterations). Every
  returned point is judged by :func:`adv.judge` (float64, clipped to the box). The model is
  float32 throughout (torchattacks' attacks are float32 tools).

Run from the repository root::

    .venv/bin/python benchmarks/bench_adv_cost.py     # ~13 min on 2 shared cores (training ~1.5 min included)

Results go to ``benchmarks/results/adv_cost_cpu.md`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_adv import TA_ERROR, aa_published, judged_row, pct, status_hist, ta  # noqa: E402
from common import CifarCNN, add_common_args, fmt, log, md_table, out_path, setup, write_results  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import adv  # noqa: E402
from adv.zoo import RECIPE_VERSION as ZOO_RECIPE_VERSION  # noqa: E402
from adv.zoo import _frozen, cache_dir, default_model, fit_classifier, load_digits  # noqa: E402

SECTIONS = ("cost", "attack")
RECIPE_VERSION = "c1"
RECIPE: dict[str, Any] = {
    "seed": 0, "batch_size": 64, "lr": 1e-3, "plain_epochs": 3, "adv_epochs": 5,
    "eps": 0.1, "pgd_steps": 2, "pgd_step": 0.06, "clean_weight": 0.5,
}
DEFAULT_EPS = 0.12  # probes (recipe c1): adv.apgd CE 100 it left 72.5 % (0.1), 50 % (0.12), 15 % (0.15) of 40 images
DEFAULT_N = 16  # 20 images: an estimated ~15 min with the float64 run and the training; 16 keeps it under


# ----------------------------------------------------------------------------------------------
# model and data
# ----------------------------------------------------------------------------------------------
def upsample(x: Tensor) -> Tensor:
    """``(N, 1, 8, 8)`` in [0, 1] -> ``(N, 3, 32, 32)``: bilinear to 32x32 (each output pixel a
    convex combination of inputs, so values stay in [0, 1]; clamped against rounding), the one
    channel repeated three times."""
    up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return up.repeat(1, 3, 1, 1).contiguous()


def upsampled_digits(split: str) -> tuple[Tensor, Tensor]:
    """``adv.zoo.load_digits(split)`` upsampled to ``(N, 3, 32, 32)`` float32 in [0, 1]."""
    x, y = load_digits(split)
    return upsample(x), y


def train_cifar_cnn(recipe: dict[str, Any] | None = None) -> tuple[nn.Module, float]:
    """Train :class:`CifarCNN` on the upsampled train split with ``recipe`` (default
    :data:`RECIPE`) through the zoo's training loop (:func:`adv.zoo.fit_classifier`: Adam, cosine
    learning-rate decay, ``plain_epochs`` epochs of cross-entropy then ``adv_epochs`` epochs of
    ``clean_weight`` x CE(clean) + (1 - ``clean_weight``) x CE(PGD), PGD l-infinity ``eps`` with
    ``pgd_steps`` steps of ``pgd_step`` from a random start). Deterministic (fixed seeds, one
    thread). Returns (frozen model in eval mode, seconds)."""
    rec = dict(RECIPE if recipe is None else recipe)
    x, y = upsampled_digits("train")
    t0 = time.perf_counter()
    model = fit_classifier(CifarCNN, x, y, rec, epochs=rec["plain_epochs"] + rec["adv_epochs"],
                           adv_from=rec["plain_epochs"])
    return model, time.perf_counter() - t0


def model_cache_path(cache: str | Path | None) -> Path:
    base = cache_dir() if cache is None else Path(cache).expanduser()
    return base / f"cifar_digits_cnn_{RECIPE_VERSION}.pt"


def load_or_train(cache: str | Path | None, retrain: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The trained :class:`CifarCNN` from the cache file, or trained now and written there (the
    system temp directory when the cache directory is not writable). ``info`` says which."""
    path = model_cache_path(cache)
    state = None
    if not retrain:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            state = None
        except Exception as exc:  # noqa: BLE001  (a corrupt or foreign file: retrain)
            log(f"[train] could not read {path} ({type(exc).__name__}: {exc}); retraining")
            state = None
    if isinstance(state, dict) and "state_dict" in state:
        model = CifarCNN()
        try:
            model.load_state_dict(state["state_dict"])
            return _frozen(model), {"source": f"loaded from the cache {path} (training skipped)",
                                    "train seconds": state.get("train_seconds"), "path": path, "trained_now": False}
        except (RuntimeError, KeyError) as exc:
            log(f"[train] cached weights {path} do not fit CifarCNN ({exc}); retraining")
    log(f"[train] training CifarCNN (recipe {RECIPE_VERSION}) on the upsampled digits")
    model, secs = train_cifar_cnn()
    log(f"[train] trained in {secs:.1f} s")
    blob = {"state_dict": model.state_dict(), "train_seconds": float(secs), "recipe": RECIPE_VERSION}
    saved = None
    for p in (path, Path(tempfile.gettempdir()) / path.name):
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            torch.save(blob, tmp)
            tmp.replace(p)
            saved = p
            break
        except OSError as exc:
            log(f"[train] could not write {p} ({exc})")
    where = f"cached in {saved}" if saved else "not cached (no writable directory)"
    return model, {"source": f"trained in this run, {where}", "train seconds": secs, "path": saved,
                   "trained_now": True}


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def first_correct(model: nn.Module, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` images (split order) the model classifies correctly."""
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n].contiguous(), y[ok][:n].contiguous()


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def fwd_bwd_ms(model: nn.Module, x: Tensor, *, repeats: int = 7, warmup: int = 2) -> float:
    """Milliseconds per image of one forward pass and the backward pass of the summed logits to
    the input, on the batch ``x`` (``model`` and ``x`` in the same dtype): the median over
    ``repeats`` timed passes after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        xv = x.detach().clone().requires_grad_(True)
        t = time.perf_counter()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(model(xv).sum(), xv)
        dt = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
    return 1000.0 * statistics.median(times) / x.shape[0]


def section_cost(args: argparse.Namespace, cifar: nn.Module, summary: dict[str, Any]) -> list[str]:
    k = args.cost_batch
    g = torch.Generator().manual_seed(args.seed)
    x8, _ = load_digits("test")
    x8 = x8[torch.arange(k) % x8.shape[0]]
    x32 = torch.rand(k, 3, 32, 32, generator=g)
    rows = []
    for name, model, x in ((f"adv.zoo.default_model('adversarial') (DigitsCNN 1x8x8, recipe {ZOO_RECIPE_VERSION})",
                            default_model("adversarial"), x8),
                           ("CifarCNN (3x32x32, common.py)", cifar, x32)):
        ms = {}
        for dt in (torch.float32, torch.float64):
            m = _frozen(type(model)())
            m.load_state_dict(model.state_dict())
            m = m.to(dt)
            log(f"[cost] {name.split(' ')[0]} {dt}: batch {k}")
            ms[dt] = fwd_bwd_ms(m, x.to(dt), repeats=args.cost_repeats, warmup=args.cost_warmup)
        ratio = ms[torch.float64] / ms[torch.float32]
        rows.append([name, k, ms[torch.float32], ms[torch.float64], f"{ratio:.2f}x"])
        summary.setdefault("cost", {})[name.split(" ")[0]] = (ms[torch.float32], ms[torch.float64])
    head = ["model", "n (batch)", "ms / image float32", "ms / image float64", "float64 / float32"]
    notes = [f"one pass = forward of the batch and `torch.autograd.grad(logits.sum(), x)`; median of "
             f"{args.cost_repeats} timed passes after {args.cost_warmup} warm-up passes; parameters frozen "
             "(no weight gradients), eval mode. Digits inputs: the first test images; CifarCNN inputs: uniform "
             "random images (the cost does not depend on the values)."]
    return ["## Forward + backward cost per image\n", md_table(head, rows)] + [f"- {s}\n" for s in notes]


# ----------------------------------------------------------------------------------------------
# attacks
# ----------------------------------------------------------------------------------------------
class _DisagreeCounter(logging.Handler):
    """Counts adv.attack's "the judge disagrees with the in-run check" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "judge disagrees" in msg:
            self.messages.append(msg)


def float32_check(model: nn.Module, x: Tensor, y: Tensor, xa: Tensor, eps: float) -> Tensor:
    """The attack-side verdict in float32 on the point as returned: misclassified by the float32
    model and within ``eps`` (l-infinity, measured in float32, relative slack 1e-6)."""
    with torch.no_grad():
        mis = model(xa.to(torch.float32)).argmax(1) != y
        d = (xa.to(torch.float32) - x.to(torch.float32)).abs().reshape(x.shape[0], -1).amax(1)
    return mis & (d <= eps * (1 + 1e-6))


def section_attack(args: argparse.Namespace, model: nn.Module, info: dict[str, Any],
                   summary: dict[str, Any]) -> list[str]:
    xte, yte = upsampled_digits("test")
    acc = accuracy(model, xte, yte)
    x, y = first_correct(model, xte, yte, args.n)
    n, eps = x.shape[0], args.eps
    rec = RECIPE
    train_md = [
        "## Model of the attack section\n",
        md_table(["", ""], [
            ["architecture", "CifarCNN: conv3x3(3->32) ReLU conv3x3(32->64) ReLU maxpool2 conv3x3(64->128) ReLU "
                             "maxpool2 linear(8192->256) ReLU linear(256->10)"],
            ["data", "adv.zoo.load_digits('train') / ('test') (1437 / 360 images), bilinear F.interpolate 8x8 -> "
                     "32x32, repeated to 3 channels, values in [0, 1]"],
            ["recipe", f"{RECIPE_VERSION}: Adam lr {rec['lr']} with cosine decay, batch {rec['batch_size']}, seed "
                       f"{rec['seed']}, one thread; {rec['plain_epochs']} plain epochs, then {rec['adv_epochs']} "
                       f"epochs of {rec['clean_weight']} CE(clean) + {1 - rec['clean_weight']} CE(PGD-"
                       f"{rec['pgd_steps']} l-inf eps {rec['eps']}, step {rec['pgd_step']}, random start)"],
            ["weights", info["source"]],
            ["training seconds", fmt(info["train seconds"]) + ("" if info["trained_now"] else
                                                               " (recorded when the cached weights were trained)")],
            ["clean test accuracy", f"{pct(acc)} ({int(round(acc * xte.shape[0]))} / {xte.shape[0]})"],
        ]),
    ]
    summary["train"] = dict(seconds=info["train seconds"], acc=acc, trained_now=info["trained_now"])
    rows: list[list[Any]] = []
    notes: list[str] = []
    res_by: dict[str, Any] = {}
    disagree_f32: dict[str, int] = {}

    def add(key: str, name: str, xa: Tensor, secs: float) -> Tensor:
        row, succ = judged_row(name, model, x, y, xa, "linf", eps, secs)
        f32 = float32_check(model, x, y, xa, eps)
        disagree_f32[key] = int((f32 != succ).sum())
        rows.append(row + [disagree_f32[key]])
        res_by[key] = dict(success=succ, seconds=secs / n, robust=1 - float(succ.double().mean()))
        log(f"[attack] {name}: robust {pct(res_by[key]['robust'])}, {secs / n:.3g} s / image")
        return succ

    logger = logging.getLogger("adv")
    pw_runs: dict[str, Any] = {}
    variants = (("pwcf32", None, None, "PWCF margin, adv.attack defaults (dtype=None: float32 solve)"),
                ("pwcf_no_exit", None, {"linesearch_armijo_after": None},
                 "PWCF margin, adv.attack(solver_options={'linesearch_armijo_after': None}): no exit at the lower "
                 "bracket end after 12 trials"),
                ("pwcf_granso_ls", None, {"linesearch_previous_step": False, "linesearch_armijo_after": None},
                 "PWCF margin, adv.attack(solver_options={'linesearch_previous_step': False, "
                 "'linesearch_armijo_after': None}): GRANSO's line search, from step 1"),
                ("pwcf_autograd", None, {"globalAD": True},
                 "PWCF margin, adv.attack(solver_options={'globalAD': True}): every column's gradient by autograd "
                 "(one backward pass per column)"),
                ("pwcf64", torch.float64, None, "PWCF margin, adv.attack(dtype=torch.float64) (previous default)"))
    for key, dtype, sopts, label in variants:
        if key == "pwcf64" and args.no_float64:
            notes.append("--no-float64: the float64 PWCF run was skipped.")
            continue
        if key == "pwcf_granso_ls" and args.no_granso_ls:
            notes.append("--no-granso-ls: the run with GRANSO's line search was skipped.")
            continue
        if key == "pwcf_autograd" and args.no_autograd_row:
            notes.append("--no-autograd-row: the run with globalAD=True was skipped.")
            continue
        if key == "pwcf_no_exit" and args.no_exit_row:
            notes.append("--no-exit-row: the run with linesearch_armijo_after=None was skipped.")
            continue
        log(f"[attack] linf eps={eps}: {label} on {n} images")
        counter = _DisagreeCounter()
        logger.addHandler(counter)
        try:
            t = time.perf_counter()
            res = adv.attack(model, x, y, "linf", eps, dtype=dtype, seed=args.seed, solver_options=sopts)
            secs = time.perf_counter() - t
        finally:
            logger.removeHandler(counter)
        add(key, label, res.x_adv, secs)
        pw_runs[key] = res
        notes.append(f"{label}: status codes {status_hist(res.status)} (-1: not run); mean iterations "
                     f"{float(res.iterations.double().mean()):.0f}; restarts used {status_hist(res.restarts_used)}; "
                     f"continued {int(res.continued.sum())}; in-run check vs judge: "
                     + (f"{len(counter.messages)} warning(s): {counter.messages}" if counter.messages
                        else "no disagreement logged") + ".")
    for key, other in (("pwcf_granso_ls", "GRANSO's line search"), ("pwcf_no_exit", "linesearch_armijo_after=None"),
                       ("pwcf_autograd", "globalAD=True")):
        if "pwcf32" in pw_runs and key in pw_runs:
            a, b = res_by["pwcf32"]["success"], res_by[key]["success"]
            notes.append(f"PWCF defaults vs {other}: both broke {int((a & b).sum())} images, only the defaults "
                         f"{int((a & ~b).sum())}, only {other} {int((~a & b).sum())}; time per image of the "
                         f"defaults {res_by['pwcf32']['seconds'] / res_by[key]['seconds']:.2f}x.")
    if "pwcf32" in pw_runs and "pwcf64" in pw_runs:
        a, b = res_by["pwcf32"]["success"], res_by["pwcf64"]["success"]
        notes.append(f"PWCF float32 vs float64 solve: both broke {int((a & b).sum())} images, only float32 "
                     f"{int((a & ~b).sum())}, only float64 {int((~a & b).sum())}.")
    if ta is not None:
        log(f"[attack] AutoAttack standard components, {args.aa_steps} it / {args.square_queries} queries")
        atk = aa_published(model, "Linf", eps, args.aa_steps, args.square_queries, args.seed)
        t = time.perf_counter()
        xa = atk(x, y)
        add("aa100", f"AutoAttack standard components, {args.aa_steps} it / {args.square_queries} queries "
                     "(torchattacks classes, as bench_adv.py)", xa, time.perf_counter() - t)
        log("[attack] torchattacks AutoAttack standard as shipped")
        atk = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=args.seed)
        t = time.perf_counter()
        xa = atk(x, y)
        add("aa", "torchattacks AutoAttack(version='standard') as shipped (10 steps)", xa, time.perf_counter() - t)
    else:
        notes.append(f"torchattacks not importable ({TA_ERROR}): no AutoAttack rows.")
    log("[attack] adv.apgd CE 100 it")
    t = time.perf_counter()
    ra = adv.apgd(model, x, y, "linf", eps, loss="ce", n_iter=100, seed=args.seed)
    add("apgd", "adv.apgd CE (100 it)", ra.x_adv, time.perf_counter() - t)
    ap_rob = res_by["apgd"]["robust"]
    notes.append(f"eps {eps}: adv.apgd CE (100 it) leaves robust accuracy {pct(ap_rob)}, "
                 f"{'inside' if 0.3 <= ap_rob <= 0.8 else 'outside'} [30 %, 80 %].")
    union = torch.zeros(n, dtype=torch.bool)
    for r in res_by.values():
        union |= r["success"]
    rows.append(["union of every attack above", pct(1 - float(union.double().mean())), int(union.sum()),
                 "-", "-", "-", "-", "-", "-"])
    summary["attack"] = res_by
    summary["aa_budget"] = f"{args.aa_steps} it / {args.square_queries} queries"
    head = ["attack", "robust accuracy", "broken", "violations", "box violations", "mean distance (broken)",
            "median distance (broken)", "s / image", "float32 check != judge"]
    notes.insert(0, "every 'broken' is the verdict of `adv.judge` (float64, clipped point); 'violations' = returned "
                    "points the model misclassifies but that lie outside the budget; 'float32 check != judge' = "
                    "images where the float32 model's verdict on the point as returned (misclassified and l-inf "
                    "distance <= eps in float32) differs from the judge's; s / image = wall time of the call / "
                    f"{n} (PWCF's includes its own judge calls).")
    out = train_md + [f"## Max-loss attacks, linf eps = {eps}, the first {n} correctly classified test images\n",
                      md_table(head, rows)] + [f"- {s}\n" for s in notes]
    return out + targets_md(summary)


def targets_md(summary: dict[str, Any]) -> list[str]:
    r = summary.get("attack", {})
    rows = []
    if "pwcf32" in r and "aa100" in r:
        p, a = r["pwcf32"]["seconds"], r["aa100"]["seconds"]
        rows.append([f"PWCF (default precision) s/image <= AutoAttack {summary['aa_budget']} s/image",
                     f"PWCF {fmt(p)} s, AA {fmt(a)} s (PWCF / AA = {p / a:.2f})", "met" if p <= a else "not met"])
    if "pwcf32" in r and "aa" in r:
        p, a = r["pwcf32"]["seconds"], r["aa"]["seconds"]
        rows.append(["(for reference) PWCF (default precision) s/image <= AutoAttack as shipped s/image",
                     f"PWCF {fmt(p)} s, AA {fmt(a)} s (PWCF / AA = {p / a:.2f})", "met" if p <= a else "not met"])
    if "pwcf_granso_ls" in r and "aa100" in r:
        p, a = r["pwcf_granso_ls"]["seconds"], r["aa100"]["seconds"]
        rows.append([f"(for reference) PWCF with GRANSO's line search s/image <= AutoAttack "
                     f"{summary['aa_budget']} s/image",
                     f"PWCF {fmt(p)} s, AA {fmt(a)} s (PWCF / AA = {p / a:.2f}); robust accuracy "
                     f"{pct(r['pwcf_granso_ls']['robust'])}", "met" if p <= a else "not met"])
    if "pwcf32" in r and "pwcf64" in r:
        rows.append(["PWCF time float64 solve / float32 solve",
                     f"{r['pwcf64']['seconds'] / r['pwcf32']['seconds']:.2f}x", "-"])
    if "pwcf32" in r and "apgd" in r:
        rows.append(["PWCF (default precision) robust acc <= adv.apgd CE 100 it",
                     f"PWCF {pct(r['pwcf32']['robust'])}, APGD {pct(r['apgd']['robust'])}",
                     "met" if r["pwcf32"]["robust"] <= r["apgd"]["robust"] + 1e-12 else "not met"])
    if not rows:
        return []
    return ["## Targets\n", md_table(["target", "measured", "verdict"], rows)]


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, default_out="adv_cost")
    ap.add_argument("--sections", default="cost,attack", help="comma-separated subset of cost,attack")
    ap.add_argument("--n", type=int, default=DEFAULT_N,
                    help=f"images attacked (default {DEFAULT_N}: the robust ones cost ~15-30 s each in PWCF, >= 1)")
    ap.add_argument("--eps", type=float, default=DEFAULT_EPS,
                    help=f"l-infinity budget of the attack section (default {DEFAULT_EPS})")
    ap.add_argument("--no-float64", action="store_true", help="skip the adv.attack(dtype=torch.float64) run")
    ap.add_argument("--no-granso-ls", action="store_true",
                    help="skip the adv.attack run with GRANSO's line search (solver_options="
                         "{'linesearch_previous_step': False, 'linesearch_armijo_after': None})")
    ap.add_argument("--no-exit-row", action="store_true",
                    help="skip the adv.attack run with solver_options={'linesearch_armijo_after': None}")
    ap.add_argument("--no-autograd-row", action="store_true",
                    help="skip the adv.attack run with solver_options={'globalAD': True} (autograd for every column)")
    ap.add_argument("--aa-steps", type=int, default=100, help="iterations of APGD, APGD-T, FAB-T (default 100)")
    ap.add_argument("--square-queries", type=int, default=5000, help="Square queries (default 5000)")
    ap.add_argument("--cost-batch", type=int, default=50, help="batch of the cost section (default 50)")
    ap.add_argument("--cost-repeats", type=int, default=7, help="timed passes per cost entry (default 7)")
    ap.add_argument("--cost-warmup", type=int, default=2, help="untimed passes before them (default 2, >= 0)")
    ap.add_argument("--cache", default=None, help="directory of the trained weights (default adv.zoo.cache_dir())")
    ap.add_argument("--retrain", action="store_true", help="train the CifarCNN even when cached weights exist")
    ap.add_argument("--name", default="adv_cost", help="results file stem (default adv_cost)")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    secs = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in secs if s not in SECTIONS]
    if not secs or bad:
        ap.error(f"--sections must be a comma-separated subset of {','.join(SECTIONS)}, got {args.sections!r}")
    args.section_list = secs
    for flag, lo in (("--n", 1), ("--aa-steps", 1), ("--square-queries", 1), ("--cost-batch", 1),
                     ("--cost-repeats", 1), ("--cost-warmup", 0)):
        val = getattr(args, flag[2:].replace("-", "_"))
        if val < lo:
            ap.error(f"{flag} must be an integer >= {lo}, got {val}")
    if not (math.isfinite(args.eps) and 0 < args.eps < 1):
        ap.error(f"--eps must be a finite number in (0, 1) (l-infinity on [0, 1] images), got {args.eps}")
    if args.dtype != "float64":
        ap.error(f"--dtype must be left at float64 (got {args.dtype}): this benchmark times float32 and float64 "
                 "itself, and the model is float32")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, _ = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_adv_cost.py runs on the CPU (--device cpu)")
    t_start = time.perf_counter()
    summary: dict[str, Any] = {}
    model, info = load_or_train(args.cache, args.retrain)
    body = [f"CifarCNN weights: {info['source']}. Model float32 in every run; the solver precision is what "
            "differs between the two PWCF rows.\n"]
    if "cost" in args.section_list:
        body += section_cost(args, model, summary)
    if "attack" in args.section_list:
        body += section_attack(args, model, info, summary)
    wall = time.perf_counter() - t_start
    body.append(f"\nScript wall time: {wall:.0f} s" + (f" (training included: {info['train seconds']:.0f} s)"
                                                      if info["trained_now"] else " (no training: cached weights)")
                + ".\n")
    extra = {"torchattacks": getattr(ta, "__version__", "not importable")}
    write_results(out_path(args, args.name, device),
                  "PWCF cost on a CIFAR-sized CNN: float32 vs float64 solves, AutoAttack, APGD", device, body, extra)


if __name__ == "__main__":
    main()
