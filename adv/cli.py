"""Command line: ``python -m adv evaluate ...`` (console script ``ncvx-adv``).

``evaluate`` runs fixed-budget attacks (and, with ``--min-distortion``, minimal-distortion
problems) on a model and a data set, batch by batch, appends one JSON record per sample to
``--out/records.jsonl`` as soon as each batch is done, and writes a report (``summary.md`` and PNG
plots, :mod:`adv.report`) at the end. ``--resume`` continues an interrupted run; under torchrun the
batches are shared among the processes (:mod:`adv.shard`). ``report DIR`` rebuilds the report of
an output directory from its records.

Exit codes: 0 done, 2 bad input (a one-line message on stderr, no traceback), 130 interrupted by
Ctrl-C (a partial report is written first), 143 terminated by SIGTERM (likewise).

See docs/adv-cli.md for every flag, and ``python -m adv evaluate --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import logging
import math
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adv import records as rec_io
from adv import shard
from adv.api import default_restarts
from adv.runner import CLASS_ORDERS

__all__ = ["main", "build_parser", "CliError", "evaluate_batch", "THREATS"]

logger = logging.getLogger("adv")

PROG = "ncvx-adv"
#: threat names accepted by ``--threat`` (``lp:P`` takes any p > 0 or ``inf``)
THREATS = ("l1", "l2", "linf", "lp:P", "perceptual")
#: ``--attacks`` default for l1, l2 and l-infinity (APGD supports only these)
DEFAULT_ATTACKS_LP = ("apgd-ce", "apgd-margin", "pwcf-margin")
#: ``--attacks`` default for other threats
DEFAULT_ATTACKS_OTHER = ("pwcf-margin",)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class CliError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a partial report is written)."""


# ------------------------------------------------------------------------------------------------
# argument types
def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"eps must be > 0 and finite, got {s}")
    return v


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _fmt_p(p: float) -> str:
    if math.isinf(p):
        return "inf"
    return str(int(p)) if float(p).is_integer() else repr(float(p))


def parse_threat(s: str) -> str:
    """Canonical threat name: ``l1``, ``l2``, ``linf``, ``lp:<p>`` or ``perceptual``.

    ``lp:1``, ``lp:2`` and ``lp:inf`` become ``l1``, ``l2``, ``linf``; ``l<p>`` (e.g. ``l1.5``) is
    accepted as ``lp:<p>``.
    """
    t = s.strip().lower().replace(" ", "")
    if t in ("perceptual", "lpips"):
        return "perceptual"
    if t in ("inf", "linf", "l-inf", "l_inf"):
        return "linf"
    p_str = None
    if t.startswith("lp:"):
        p_str = t[3:]
    elif t.startswith("l") and len(t) > 1:
        p_str = t[1:]
    if p_str is not None:
        try:
            p = math.inf if p_str == "inf" else float(p_str)
        except ValueError:
            p = None
        if p is not None and (math.isnan(p) or p <= 0):
            raise argparse.ArgumentTypeError(f"the exponent of lp:P must be > 0 (or inf), got {p_str}")
        if p is not None:
            if p == 1:
                return "l1"
            if p == 2:
                return "l2"
            if math.isinf(p):
                return "linf"
            return f"lp:{_fmt_p(p)}"
    close = difflib.get_close_matches(t, ["l1", "l2", "linf", "lp:1.5", "perceptual"], n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown threat {s!r}: expected one of {', '.join(THREATS)} (lp:P with P > 0, e.g. lp:1.5){hint}")


def parse_attacks(s: str) -> list[str]:
    """Comma-separated attack names from :data:`adv.ATTACKS` (no repeats)."""
    from adv.api import ATTACKS

    names = [a.strip().lower() for a in s.split(",") if a.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of attacks from {', '.join(ATTACKS)}")
    for a in names:
        if a not in ATTACKS:
            close = difflib.get_close_matches(a, ATTACKS, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise argparse.ArgumentTypeError(f"unknown attack {a!r}{hint} (valid: {', '.join(ATTACKS)})")
    dup = sorted({a for a in names if names.count(a) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"attacks must not repeat a name, got {', '.join(dup)} twice")
    return names


# ------------------------------------------------------------------------------------------------
# parser
_EVALUATE_EPILOG = """\
examples:
  # the embedded default: a small CNN on scikit-learn's 8x8 digits (trained on first use, cached)
  python -m adv evaluate --threat linf --eps 0.05 0.1 --n 64 --out report-linf
  # the adversarially trained default, l2 budgets, minimal radii too
  python -m adv evaluate --model default-adversarial --threat l2 --eps 0.5 1.0 --min-distortion --out rep-l2
  # your own model and data: mymodels.py defines make_net() -> nn.Module
  python -m adv evaluate --model mymodels:make_net --weights net.pt --data test.npz \\
      --threat linf --eps 0.03 --attacks apgd-ce,pwcf-margin --batch-size 64 --out my-report
  # continue an interrupted run (same flags plus --resume)
  python -m adv evaluate --model mymodels:make_net --weights net.pt --data test.npz \\
      --threat linf --eps 0.03 --attacks apgd-ce,pwcf-margin --batch-size 64 --out my-report --resume
  # two processes (CPU: gloo; GPUs: nccl)
  torchrun --standalone --nproc_per_node=2 -m adv evaluate --threat l2 --eps 1.0 --num-samples 64 --out rep-ddp

The output directory holds records.jsonl (one JSON line per sample), settings.json, summary.md,
summary.json and PNG plots; see docs/adv-report.md. Exit codes: 0 done, 2 bad input,
130 interrupted (Ctrl-C; a partial report is written), 143 terminated (SIGTERM).
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ncvx-adv`` argument parser (subcommands ``evaluate`` and ``report``)."""
    from adv.api import ATTACKS

    parser = argparse.ArgumentParser(
        prog=PROG, description="Robustness evaluation with PWCF (BFGS-SQP with constraint folding) and APGD.",
        epilog="Run 'ncvx-adv evaluate --help' for the evaluation flags. Docs: docs/adv-cli.md.")
    sub = parser.add_subparsers(dest="command", metavar="{evaluate,report}")
    ev = sub.add_parser(
        "evaluate", help="evaluate a model and write a report",
        description="Attack every sample with every attack at every budget (and optionally solve its "
                    "minimal-distortion problem); write per-sample records and a report.",
        epilog=_EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ev.add_argument_group("model and data")
    g.add_argument("--model", default="default", metavar="SPEC",
                   help="'default' (= 'default:standard', the embedded digits CNN), 'default-adversarial' "
                        "(= 'default:adversarial'), or MODULE:FACTORY where MODULE is an importable module "
                        "or a .py file and FACTORY a callable returning an nn.Module (or an nn.Module "
                        "instance); e.g. --model mymodels:make_net. Default: %(default)s")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="state dict loaded into the model (torch.save(model.state_dict(), FILE)); "
                        "e.g. --weights net.pt")
    g.add_argument("--data", default="default", metavar="SPEC",
                   help="'default' (the digits test split, 360 images 1x8x8 in [0, 1]), a .pt file holding "
                        "{'x': tensor, 'y': tensor} or a tuple (x, y), or a .npz file with arrays x and y; "
                        "x is (N, ...) in [0, 1], y is (N,) integer labels. e.g. --data test.npz")
    g.add_argument("--n", "--num-samples", dest="n", type=_positive_int, default=None, metavar="N",
                   help="evaluate the first N samples only (default: all); e.g. --n 100. Under torchrun write "
                        "--num-samples (torchrun's own parser takes --n for an abbreviation of its options)")
    g = ev.add_argument_group("threat model and attacks")
    g.add_argument("--threat", type=parse_threat, default="linf", metavar="NAME",
                   help="l1, l2, linf, lp:P (P > 0, e.g. lp:1.5) or perceptual (LPIPS-style distance on the "
                        "model's own activations, adv.classifier_features). e.g. --threat l2. Default: linf")
    g.add_argument("--eps", type=_positive_float, nargs="+", default=None, metavar="EPS",
                   help="one or more budgets > 0 in the threat's units (inputs in [0, 1]); every attack runs at "
                        "every budget. Required unless --min-distortion is given. e.g. --eps 0.05 0.1")
    g.add_argument("--attacks", type=parse_attacks, default=None, metavar="A,B",
                   help=f"comma-separated attacks from {', '.join(ATTACKS)}; default "
                        f"{','.join(DEFAULT_ATTACKS_LP)} for l1/l2/linf, {','.join(DEFAULT_ATTACKS_OTHER)} "
                        "otherwise (APGD supports l1, l2, linf only). e.g. --attacks apgd-ce,pwcf-margin")
    g.add_argument("--min-distortion", action="store_true",
                   help="also solve each sample's minimal-distortion problem (PWCF, paper Eq. 4/12); the radii "
                        "give the robust-accuracy-versus-eps curve. e.g. --min-distortion")
    g = ev.add_argument_group("attack budgets")
    g.add_argument("--restarts", type=_positive_int, default=None, metavar="R",
                   help="PWCF attack restarts per sample (default: 7, or 13 for l1, see adv.default_restarts); "
                        "e.g. --restarts 2")
    g.add_argument("--ce-restarts", type=_nonneg_int, default=2, metavar="C",
                   help="of these, the last C maximise the cross-entropy instead of the margin (pwcf-margin; "
                        "never restart 0; default: %(default)s); e.g. --ce-restarts 0")
    g.add_argument("--class-restarts", type=_nonneg_int, default=2, metavar="C",
                   help="of these, restarts 1..C aim at the first C rival classes of --class-order "
                        "(pwcf-margin; default: %(default)s); e.g. --class-restarts 0")
    g.add_argument("--class-order", choices=CLASS_ORDERS, default="mixed",
                   help="the order of the rival classes the class restarts aim at, attacks and minimal distortion "
                        "(see adv.attack; default: %(default)s); e.g. --class-order logit")
    g.add_argument("--maxit", type=_positive_int, default=400, metavar="K",
                   help="PWCF attack iteration cap per sample, continuation included (default: %(default)s); "
                        "e.g. --maxit 100")
    g.add_argument("--restart-maxit", type=_positive_int, default=100, metavar="K",
                   help="PWCF iterations per restart, attacks and minimal distortion (default: %(default)s); "
                        "e.g. --restart-maxit 50")
    g.add_argument("--min-restarts", type=_positive_int, default=3, metavar="R",
                   help="minimal-distortion restarts per sample (default: %(default)s); e.g. --min-restarts 1")
    g.add_argument("--min-maxit", type=_positive_int, default=500, metavar="K",
                   help="minimal-distortion iteration cap per sample (default: %(default)s); e.g. --min-maxit 200")
    g.add_argument("--min-apgd-steps", type=_nonneg_int, default=8, metavar="K",
                   help="minimal distortion, l1 / l2 / linf: APGD bisection steps below the PWCF radius (default: "
                        "%(default)s; 0 reports PWCF alone); e.g. --min-apgd-steps 0")
    g.add_argument("--min-apgd-targets", type=_nonneg_int, default=2, metavar="T",
                   help="minimal distortion: each bisection step also runs targeted APGD towards the first T "
                        "classes of --class-order on the samples the untargeted losses left (default: "
                        "%(default)s); e.g. --min-apgd-targets 0")
    g.add_argument("--parallel-restarts", type=_positive_int, default=6, metavar="P",
                   help="PWCF restarts solved side by side in one batched solve, attacks (after restart 0) and "
                        "minimal distortion (default: %(default)s; 1 runs them one after the other, the least "
                        "compute and memory on large models); e.g. --parallel-restarts 1")
    g.add_argument("--apgd-iter", type=_positive_int, default=100, metavar="K",
                   help="APGD iterations per restart (default: %(default)s, as AutoAttack); e.g. --apgd-iter 50")
    g.add_argument("--apgd-restarts", type=_positive_int, default=1, metavar="R",
                   help="APGD restarts (default: %(default)s); e.g. --apgd-restarts 2")
    g.add_argument("--box", choices=("both", "clamp", "fold", "none"), default="both",
                   help="PWCF handling of the [0, 1] box: folded constraint and clamp in the model (both, "
                        "default), only one of them, or none (the judge always clips); see "
                        "docs/adv-threat-models.md. e.g. --box fold")
    g.add_argument("--dtype", choices=("auto", "float64", "float32"), default="auto",
                   help="PWCF solver precision (default: %(default)s: the model's own precision for the "
                        "max-loss attacks, float64 for minimal distortion; the judge is always float64); "
                        "e.g. --dtype float64")
    g = ev.add_argument_group("run")
    g.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                   help="samples per batch, the unit of work, of the records and of resume (default: "
                        "%(default)s); e.g. --batch-size 64")
    g.add_argument("--device", default="auto", metavar="DEV",
                   help="cpu, cuda, cuda:1, or auto (cuda if available; under torchrun cuda:LOCAL_RANK). "
                        "Default: auto. e.g. --device cpu")
    g.add_argument("--seed", type=int, default=0, metavar="S",
                   help="base seed; batch b uses a seed derived from S and its first sample index, so results "
                        "do not depend on resume or on the number of processes (default: 0); e.g. --seed 1")
    g.add_argument("--examples", type=_nonneg_int, default=8, metavar="K",
                   help="keep the inputs of the first K samples for the example grid (default: %(default)s); "
                        "e.g. --examples 4")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="T",
                   help="torch CPU threads per process (default: torch's choice); e.g. --threads 1")
    g = ev.add_argument_group("output")
    g.add_argument("--out", default="adv-report", metavar="DIR",
                   help="output directory (created); default: %(default)s. e.g. --out my-report")
    g.add_argument("--resume", action="store_true",
                   help="continue the run recorded in --out: the settings must match, finished batches are "
                        "kept and not recomputed. e.g. --resume")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the records already in --out and start over. e.g. --overwrite")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar and no summary on stdout (errors still go to stderr). e.g. --quiet")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="log the solver's progress (INFO messages of the adv logger) on stderr. e.g. -v")

    rp = sub.add_parser("report", help="rebuild the report of an output directory from its records",
                        description="Rebuild summary.md, summary.json and the plots from DIR/records.jsonl "
                                    "and DIR/settings.json (also after an interrupted run).",
                        epilog="example:\n  python -m adv report my-report",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("dir", metavar="DIR", help="an output directory of 'evaluate'")
    rp.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    return parser


# ------------------------------------------------------------------------------------------------
# loading
def _import_module(spec: str) -> Any:
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise CliError(f"--model: the file {spec!r} does not exist")
        name = "_ncvx_adv_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise CliError(f"--model: cannot load {spec!r} as a Python module")
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        try:
            mspec.loader.exec_module(mod)
        except Exception as exc:
            raise CliError(f"--model: importing {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        return mod
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise CliError(f"--model: cannot import module {spec!r} ({exc}); give an importable module "
                       "or a path to a .py file, as MODULE:FACTORY") from exc
    except Exception as exc:
        raise CliError(f"--model: importing module {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def _default_kind(spec: str) -> str | None:
    s = spec.strip().lower()
    if s in ("default", "default:standard", "default-standard", "standard"):
        return "standard"
    if s in ("default-adversarial", "default:adversarial", "adversarial"):
        return "adversarial"
    if s.startswith("default"):
        raise CliError(f"--model: unknown default model {spec!r}; use 'default' (standard) or "
                       "'default-adversarial'")
    return None


def load_model(spec: str, weights: str | None) -> tuple[nn.Module, str]:
    """The model of ``--model`` (and ``--weights``), in eval mode on the CPU, and a description."""
    kind = _default_kind(spec)
    if kind is not None:
        try:
            from adv.zoo import default_model

            model: Any = default_model(kind)
        except ImportError as exc:
            raise CliError(f"--model {spec}: {exc}") from exc
        desc = f"default:{kind} (adv.zoo.DigitsCNN, trained on the digits train split)"
    else:
        if ":" not in spec:
            raise CliError(f"--model must be 'default', 'default-adversarial' or MODULE:FACTORY, got {spec!r}")
        mod_name, _, fac_name = spec.rpartition(":")
        if not mod_name or not fac_name:
            raise CliError(f"--model must be MODULE:FACTORY with both parts, got {spec!r}")
        mod = _import_module(mod_name)
        if not hasattr(mod, fac_name):
            names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n, None))]
            close = difflib.get_close_matches(fac_name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CliError(f"--model: module {mod_name!r} has no factory {fac_name!r}{hint}")
        obj = getattr(mod, fac_name)
        if isinstance(obj, nn.Module):
            model = obj
        elif callable(obj):
            try:
                model = obj()
            except Exception as exc:
                raise CliError(f"--model: calling {spec}() failed: {type(exc).__name__}: {exc}") from exc
        else:
            raise CliError(f"--model: {spec} is a {type(obj).__name__}, not a callable returning an nn.Module")
        if not isinstance(model, nn.Module):
            raise CliError(f"--model: {spec}() returned a {type(model).__name__}, expected a torch.nn.Module")
        desc = spec
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise CliError(f"--weights: the file {weights!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CliError(f"--weights: cannot read {weights!r} with torch.load: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        if isinstance(state, dict):
            for key in ("state_dict", "model_state_dict", "model"):
                if key in state and isinstance(state[key], dict):
                    state = state[key]
                    break
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CliError(f"--weights: {weights!r} must hold a state dict (name -> tensor), got "
                           f"{type(state).__name__}")
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CliError(f"--weights: {weights!r} does not fit the model: {str(exc).splitlines()[-1].strip()}") \
                from exc
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {list(missing)[:5]}")
            if unexpected:
                parts.append(f"unexpected keys {list(unexpected)[:5]}")
            raise CliError(f"--weights: {weights!r} does not fit the model: {'; '.join(parts)}")
        desc += f" + weights {weights}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, desc


_XY_KEYS = (("x", "y"), ("images", "labels"), ("data", "targets"), ("inputs", "labels"), ("X", "y"))


def _pick_xy(obj: Any, what: str) -> tuple[Any, Any]:
    if isinstance(obj, (tuple, list)):
        if len(obj) != 2:
            raise CliError(f"--data: {what} holds a {type(obj).__name__} of length {len(obj)}, expected (x, y)")
        return obj[0], obj[1]
    keys = list(obj.keys()) if hasattr(obj, "keys") else None
    if keys is None:
        raise CliError(f"--data: {what} holds a {type(obj).__name__}; expected a dict with 'x' and 'y' or a tuple (x, y)")
    for kx, ky in _XY_KEYS:
        if kx in keys and ky in keys:
            return obj[kx], obj[ky]
    raise CliError(f"--data: {what} must hold arrays 'x' and 'y', found keys {sorted(map(str, keys))}")


def _as_tensor(v: Any, name: str, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().cpu()
    try:
        import numpy as np

        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise CliError(f"--data: {name} in {what} is an object array; expected numbers")
            return torch.from_numpy(np.ascontiguousarray(v))
    except ImportError:  # pragma: no cover
        pass
    raise CliError(f"--data: {name} in {what} must be a tensor or an array, got {type(v).__name__}")


def load_data(spec: str) -> tuple[Tensor, Tensor, str]:
    """``x (N, ...)`` float in [0, 1], ``y (N,)`` int64 and a description, from ``--data``."""
    if spec.strip().lower() in ("default", "digits", "digits:test", "default:test"):
        try:
            from adv.zoo import load_digits

            x, y = load_digits(split="test")
        except ImportError as exc:
            raise CliError(f"--data {spec}: {exc}") from exc
        return x, y, "default (scikit-learn digits, test split: 360 images 1x8x8)"
    path = Path(spec)
    if not path.exists():
        raise CliError(f"--data: the file {spec!r} does not exist")
    if not path.is_file():
        raise CliError(f"--data: {spec!r} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise CliError(f"--data: cannot read {spec!r} as .npz: {type(exc).__name__}: {exc}") from exc
        xv, yv = _pick_xy(arrays, spec)
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CliError(f"--data: cannot read {spec!r} with torch.load(weights_only=True): "
                           f"{type(exc).__name__}: {first} (save a dict {{'x': tensor, 'y': tensor}})") from exc
        xv, yv = _pick_xy(obj, spec)
    else:
        raise CliError(f"--data: expected 'default', a .pt or a .npz file, got {spec!r}")
    x = _as_tensor(xv, "x", spec)
    y = _as_tensor(yv, "y", spec)
    return x, y, str(spec)


def check_data(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and normalise the data: x floating (N, ...) in [0, 1], y (N,) int64 >= 0."""
    if x.dim() < 2:
        raise CliError(f"--data: x must have shape (N, ...) with at least 2 dims, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise CliError("--data: x holds no samples (N = 0)")
    if not x.is_floating_point():
        raise CliError(f"--data: x must be floating point with values in [0, 1], got dtype {x.dtype} "
                       "(for 8-bit images divide by 255)")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if y.dim() != 1:
        raise CliError(f"--data: y must have shape (N,) (one integer label per sample), got {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise CliError(f"--data: x and y disagree: x has {x.shape[0]} samples, y has {y.shape[0]} labels")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise CliError("--data: y must hold integer class labels, got non-integer values")
    elif y.dtype == torch.bool or y.is_complex():
        raise CliError(f"--data: y must hold integer class labels, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()[:5].tolist()
        raise CliError(f"--data: x must be finite, got NaN/Inf in samples {bad}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise CliError(f"--data: x must lie in [0, 1], got min {lo:.6g} and max {hi:.6g} (scale the inputs, "
                       "e.g. divide 8-bit images by 255; normalisation belongs inside the model)")
    if bool((y < 0).any()):
        i = int((y < 0).nonzero()[0])
        raise CliError(f"--data: labels must be >= 0, got {int(y[i])} at index {i}")
    return x.contiguous(), y.contiguous()


def check_model_on_data(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> int:
    """Run the model on two samples; return K. Errors name --model/--data."""
    try:
        with torch.no_grad():
            out = model(x[:2].to(device))
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"--model/--data: the model fails on inputs of shape {tuple(x[:2].shape)} "
                       f"(dtype {x.dtype}): {type(exc).__name__}: {msg}") from exc
    if not isinstance(out, Tensor):
        raise CliError(f"--model: the model must return a logits tensor (B, K), got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != min(2, x.shape[0]):
        raise CliError(f"--model/--data: model output has shape {tuple(out.shape)} for a batch of "
                       f"{min(2, x.shape[0])} inputs; expected logits (B, K)")
    K = int(out.shape[1])
    if K < 2:
        raise CliError(f"--model: the model outputs K={K} logit(s); a classifier needs K >= 2")
    bad = y >= K
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        raise CliError(f"--data: labels out of range: the model has K={K} outputs, so labels must be in "
                       f"[0, {K}), got {int(y[idx[0]])} at index {int(idx[0])} ({idx.numel()} such labels)")
    return K


def resolve_device(spec: str, d: shard.Dist) -> torch.device:
    s = spec.strip().lower()
    if s == "auto":
        s = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise CliError(f"--device: unknown device {spec!r} (expected cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if d.active:
            dev = torch.device("cuda", d.local_rank)
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CliError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise CliError(f"--device: expected cpu, cuda, cuda:N or auto, got {spec!r}")
    return dev


def make_distance(threat: str, model: nn.Module) -> Any:
    from adv.distances import Lp, Perceptual, classifier_features

    if threat == "perceptual":
        try:
            return Perceptual(classifier_features(model))
        except ValueError as exc:
            raise CliError(f"--threat perceptual: {exc}") from exc
    if threat == "l1":
        return Lp(1.0)
    if threat == "l2":
        return Lp(2.0)
    if threat == "linf":
        return Lp(math.inf)
    p = threat.split(":", 1)[1]
    return Lp(math.inf if p == "inf" else float(p))


def fingerprint_tensors(tensors: Sequence[tuple[str, Tensor]]) -> str:
    """sha256 (first 16 hex digits) of names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# one batch
def _f(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _sparsity(x_adv: Tensor, x: Tensor) -> list[float | None]:
    d = (x_adv.detach().to(torch.float64) - x.detach().to(torch.float64)).reshape(x.shape[0], -1).cpu()
    l1 = d.abs().sum(1)
    l2 = torch.linalg.vector_norm(d, dim=1)
    return [float(a / b) if float(b) > 0 else None for a, b in zip(l1, l2)]


def evaluate_batch(model: nn.Module, x: Tensor, y: Tensor, first_index: int, distance: Any,
                   cfg: dict[str, Any], model64: nn.Module | None = None,
                   on_phase: Callable[[str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Evaluate one batch; return its records and the example payloads (samples with index < K).

    ``cfg`` keys: ``eps`` (list), ``attacks`` (list), ``min_distortion`` (bool), ``seed`` (the
    batch seed), ``pwcf`` (kwargs of :func:`adv.attack`), ``min`` (kwargs of
    :func:`adv.min_distortion`), ``apgd_iter``, ``apgd_restarts``, ``examples`` (K), ``batch``.
    ``on_phase`` is called with a short label before each eps and before the minimal-distortion
    solve (the progress bar shows it).
    """
    import adv
    from adv.judge import judge
    from adv.losses import margin
    from adv.runner import model_as

    t0 = time.monotonic()
    B = x.shape[0]
    m64 = model64 if model64 is not None else model_as(model, torch.float64)
    with torch.no_grad():
        logits = m64(x.to(torch.float64))
        pred = logits.argmax(1)
        cm = margin(logits, y)
    correct = cm < 0
    recs: list[dict[str, Any]] = []
    for i in range(B):
        recs.append({"index": first_index + i, "batch": cfg["batch"], "label": int(y[i]), "pred": int(pred[i]),
                     "correct": bool(correct[i]), "clean_margin": _f(cm[i]), "eps": [],
                     "seconds": {}})
    ex_rows = [i for i in range(B) if first_index + i < cfg["examples"]]
    examples = [{"index": first_index + i, "label": int(y[i]), "pred": int(pred[i]), "x": x[i].detach().cpu().clone(),
                 "attacks": [], "min_distortion": None} for i in ex_rows]
    attack_seconds: dict[str, float] = {a: 0.0 for a in cfg["attacks"]}
    for e in cfg["eps"]:
        if on_phase is not None:
            on_phase(f"eps {e:g}: {', '.join(cfg['attacks'])}")
        rep = adv.evaluate(model, x, y, distance, e, cfg["attacks"], seed=cfg["seed"],
                           apgd_iter=cfg["apgd_iter"], apgd_restarts=cfg["apgd_restarts"], pwcf=dict(cfg["pwcf"]))
        per: list[dict[str, Any]] = [{"eps": e, "attacks": {}, "union_success": bool(rep.union_success[i]),
                                      "robust": bool(correct[i]) and not bool(rep.union_success[i])}
                                     for i in range(B)]
        ex_att = [{"eps": e, "x_adv": {}, "pred": {}, "success": {}} for _ in ex_rows]
        for a in cfg["attacks"]:
            attack_seconds[a] += rep.seconds.get(a, 0.0)
            xa = rep.x_adv[a]
            v = judge(model, x, y, xa, distance, e, model64=m64)
            sp = _sparsity(xa, x)
            ran = rep.ran[a]
            for i in range(B):
                r = bool(ran[i])
                per[i]["attacks"][a] = {"ran": r, "success": bool(rep.success[a][i]),
                                        "distance": _f(rep.distance[a][i]) if r else None,
                                        "margin": _f(v.margin[i]) if r else None,
                                        "sparsity": sp[i] if r else None}
            if ex_rows:
                with torch.no_grad():
                    pa = m64(xa[ex_rows].to(torch.float64)).argmax(1)
                for j, i in enumerate(ex_rows):
                    ex_att[j]["x_adv"][a] = xa[i].detach().cpu().clone()
                    ex_att[j]["pred"][a] = int(pa[j])
                    ex_att[j]["success"][a] = bool(rep.success[a][i])
        for i in range(B):
            recs[i]["eps"].append(per[i])
        for j in range(len(ex_rows)):
            examples[j]["attacks"].append(ex_att[j])
    for i in range(B):
        for a, s in attack_seconds.items():
            recs[i]["seconds"][a] = s / B
    if cfg["min_distortion"]:
        if on_phase is not None:
            on_phase("minimal distortion")
        res = adv.min_distortion(model, x, y, distance, seed=cfg["seed"], **cfg["min"])
        sp = _sparsity(res.x_adv, x)
        for i in range(B):
            found = bool(res.success[i])
            pr = res.pwcf_radius[i]
            recs[i]["min_distortion"] = {"found": found, "radius": _f(res.radius[i]) if found else None,
                                         "pwcf_radius": _f(pr) if bool(torch.isfinite(pr)) else None,
                                         "margin": _f(res.margin[i]), "sparsity": sp[i] if found else None,
                                         "iterations": int(res.iterations[i])}
            recs[i]["seconds"]["min-distortion"] = res.seconds / B
        if ex_rows:
            with torch.no_grad():
                pm = m64(res.x_adv[ex_rows].to(torch.float64)).argmax(1)
            for j, i in enumerate(ex_rows):
                examples[j]["min_distortion"] = {"x_adv": res.x_adv[i].detach().cpu().clone(), "pred": int(pm[j]),
                                                 "found": bool(res.success[i]), "radius": _f(res.radius[i])}
    total = time.monotonic() - t0
    for i in range(B):
        recs[i]["seconds"]["total"] = total / B
    return recs, examples


def _save_example(out: Path, payload: dict[str, Any]) -> None:
    d = out / rec_io.EXAMPLES
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"sample{payload['index']:06d}.pt"
    tmp = d / f".{path.name}.{os.getpid()}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# progress
class _Progress:
    """Running counts for the progress bar's postfix."""

    def __init__(self, eps: list[float], min_distortion: bool) -> None:
        self.eps = eps
        self.min_distortion = min_distortion
        self.n = 0
        self.correct = 0
        self.robust = [0] * len(eps)
        self.radii: list[float] = []

    def add(self, recs: list[dict[str, Any]]) -> None:
        for r in recs:
            self.n += 1
            self.correct += bool(r["correct"])
            for k, pe in enumerate(r.get("eps", [])[: len(self.eps)]):
                self.robust[k] += bool(pe.get("robust"))
            md = r.get("min_distortion")
            if md and r["correct"] and md.get("found"):
                self.radii.append(float(md["radius"]))

    def postfix(self) -> str:
        if not self.n:
            return ""
        parts = [f"clean {100 * self.correct / self.n:.1f}%"]
        shown = list(enumerate(self.eps))
        if len(shown) > 3:
            shown = [shown[0], shown[-1]]
        for k, e in shown:
            parts.append(f"robust@{e:g} {100 * self.robust[k] / self.n:.1f}%")
        if self.min_distortion and self.radii:
            s = sorted(self.radii)
            parts.append(f"median radius {s[len(s) // 2]:.4g}")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# main
def _configure_logging(verbose: bool) -> logging.Handler | None:
    root_adv = logging.getLogger("adv")
    if root_adv.handlers:
        return None
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logging.INFO if verbose else logging.WARNING
    for name in ("adv", "ncvx_core"):
        lg = logging.getLogger(name)
        lg.addHandler(h)
        lg.setLevel(level)
    return h


def _remove_logging(h: logging.Handler | None) -> None:
    if h is None:
        return
    for name in ("adv", "ncvx_core"):
        logging.getLogger(name).removeHandler(h)


def _versions() -> dict[str, str]:
    import numpy as np

    import ncvx_core

    v = {"python": platform.python_version(), "torch": torch.__version__, "ncvx-core": ncvx_core.__version__,
         "numpy": np.__version__, "platform": platform.platform()}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        v["ncvx-core (installed)"] = version("ncvx-core")
    return v


def _err(msg: str) -> None:
    sys.stderr.write(f"{PROG}: error: {msg}\n")
    sys.stderr.flush()


def _prepare(args: argparse.Namespace, d: shard.Dist) -> dict[str, Any]:
    """Everything before the first batch; raises CliError on bad input."""
    from adv.api import ATTACKS

    if args.eps is None and not args.min_distortion:
        raise CliError("--eps is required (one or more budgets > 0, e.g. --eps 0.1), unless --min-distortion "
                       "is given")
    if args.resume and args.overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    threat = args.threat
    attacks = args.attacks
    if attacks is None:
        attacks = list(DEFAULT_ATTACKS_LP if threat in ("l1", "l2", "linf") else DEFAULT_ATTACKS_OTHER)
    if not args.eps:
        attacks = []
    bad = [a for a in attacks if a.startswith("apgd")]
    if bad and threat not in ("l1", "l2", "linf"):
        pw = [a for a in ATTACKS if a.startswith("pwcf")]
        raise CliError(f"--attacks: {', '.join(bad)} support(s) only the l1, l2 and linf threats, not {threat}; "
                       f"use {' or '.join(pw)}")
    device = resolve_device(args.device, d)
    model, model_desc = load_model(args.model, args.weights)
    model = model.to(device)
    x, y, data_desc = load_data(args.data)
    x, y = check_data(x, y)
    p_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if p_dtypes == {torch.float64} and x.dtype != torch.float64:
        x = x.to(torch.float64)  # a float64 model gets float64 inputs
    n_total = int(x.shape[0])
    n = n_total if args.n is None else min(args.n, n_total)
    if args.n is not None and args.n > n_total:
        logger.warning("--n %d is larger than the data (%d samples); evaluating all of them", args.n, n_total)
    K = check_model_on_data(model, x, y, device)
    distance = make_distance(threat, model)
    eps = sorted(set(args.eps)) if args.eps else []
    model_fp = fingerprint_tensors(list(model.state_dict().items()))
    data_fp = fingerprint_tensors([("x", x), ("y", y)])
    settings: dict[str, Any] = {
        "format": 1,
        "model": args.model, "weights": None if args.weights is None else str(Path(args.weights).name),
        "model_description": model_desc, "model_fingerprint": model_fp,
        "data": args.data if args.data == "default" else str(Path(args.data).name), "data_description": data_desc,
        "data_fingerprint": data_fp, "num_samples": n_total, "input_shape": list(x.shape[1:]), "num_classes": K,
        "threat": threat, "distance": getattr(distance, "name", threat), "eps": eps, "attacks": attacks,
        "min_distortion": bool(args.min_distortion), "n": n, "batch_size": args.batch_size, "seed": args.seed,
        "restarts": args.restarts if args.restarts is not None else default_restarts(distance),
        "ce_restarts": args.ce_restarts, "class_restarts": args.class_restarts,
        "class_order": args.class_order, "maxit": args.maxit,
        "restart_maxit": args.restart_maxit,
        "min_restarts": args.min_restarts, "min_maxit": args.min_maxit, "min_apgd_steps": args.min_apgd_steps,
        "min_apgd_targets": args.min_apgd_targets,
        "apgd_iter": args.apgd_iter,
        "apgd_restarts": args.apgd_restarts, "box": args.box, "examples": args.examples, "dtype": args.dtype,
        "parallel_restarts": args.parallel_restarts, "device": str(device), "world_size": d.world, "threads": args.threads,
        "versions": _versions(), "command": shlex.join([PROG, *args.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out: {args.out!r} exists and is not a directory")
    existing = rec_io.record_files(out) if out.is_dir() else []
    has_settings = (out / rec_io.SETTINGS).is_file()
    if args.resume and (has_settings or existing):
        if not has_settings:
            raise CliError(f"--resume: {args.out!r} holds records but no settings.json; cannot check the settings "
                           "(start over with --overwrite)")
        try:
            old = rec_io.read_settings(out)
        except (OSError, ValueError) as exc:
            raise CliError(f"--resume: cannot read {out / rec_io.SETTINGS}: {exc}") from exc
        diff = rec_io.settings_mismatch(old, settings)
        if diff:
            raise CliError(f"--resume: the settings differ from the run in {args.out!r} ({'; '.join(diff[:4])}"
                           f"{'; ...' if len(diff) > 4 else ''}); use the same flags, or another --out")
        settings["started"] = old.get("started", settings["started"])
        if old.get("device") != settings["device"]:
            logger.warning("--resume: the earlier run used device %s, this one %s (results may differ in the "
                           "last digits)", old.get("device"), settings["device"])
    elif (existing or has_settings) and not args.overwrite:
        raise CliError(f"--out: {args.out!r} already holds a run; pass --resume to continue it, --overwrite to "
                       "start over, or choose another directory")
    return dict(model=model, x=x[:n], y=y[:n], device=device, distance=distance, settings=settings, out=out,
                eps=eps, attacks=attacks, n=n)


def _clear_run(out: Path) -> None:
    import shutil

    for f in rec_io.record_files(out):
        f.unlink()
    for name in (rec_io.SETTINGS, "summary.md", "summary.json"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    for p in out.glob("*.png"):
        p.unlink()
    if (out / rec_io.EXAMPLES).is_dir():
        shutil.rmtree(out / rec_io.EXAMPLES)


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev_kind = "cpu"
    with contextlib.suppress(Exception):
        s = args.device.strip().lower()
        if s.startswith("cuda") or (s == "auto" and torch.cuda.is_available()):
            dev_kind = "cuda"
    d = shard.init(dev_kind)
    try:
        return _evaluate_in_group(args, d)
    finally:
        shard.finish(d)


def _dtype_setting(settings: dict[str, Any], auto: torch.dtype | None) -> torch.dtype | None:
    """The solver dtype of the recorded ``--dtype`` setting, ``auto`` for ``"auto"``."""
    name = settings["dtype"]
    return auto if name == "auto" else getattr(torch, name)


def _evaluate_in_group(args: argparse.Namespace, d: shard.Dist) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from adv.report import format_console, write_report
    from adv.runner import model_as

    try:
        ctx = _prepare(args, d)
        err = None
    except CliError as exc:
        ctx, err = None, str(exc)
    if not shard.all_ok(d, err is None):
        if err is not None:
            if d.is_main or not d.active:
                _err(err)
            return EXIT_USAGE
        return EXIT_USAGE  # another process reported the problem
    assert ctx is not None
    settings, out = ctx["settings"], ctx["out"]
    bs, n = settings["batch_size"], ctx["n"]
    if d.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            if args.overwrite:
                _clear_run(out)
            rec_io.write_settings(out, settings)
            if args.resume:
                rec_io.merge_records(out, bs, n)
        except OSError as exc:
            raise CliError(f"--out: cannot write to {str(out)!r}: {exc.strerror or exc}") from exc
    shard.barrier(d)
    done_recs = rec_io.load_records(out, bs, n)
    done_batches = {r["batch"] for r in done_recs}
    n_batches = -(-n // bs)
    todo = [b for b in range(n_batches) if b not in done_batches]
    mine = shard.my_batches(todo, d)
    if args.resume and d.is_main:
        logger.info("--resume: %d of %d batches already done, %d to do", len(done_batches), n_batches, len(todo))
    target = out / rec_io.RECORDS if not d.active else rec_io.rank_file(out, d.rank)

    model, x, y, device, distance = ctx["model"], ctx["x"], ctx["y"], ctx["device"], ctx["distance"]
    cfg_base = dict(
        eps=ctx["eps"], attacks=ctx["attacks"], min_distortion=settings["min_distortion"],
        apgd_iter=settings["apgd_iter"], apgd_restarts=settings["apgd_restarts"], examples=settings["examples"],
        pwcf=dict(restarts=settings["restarts"], ce_restarts=settings.get("ce_restarts", 0),
                  class_restarts=settings.get("class_restarts", 0), class_order=settings.get("class_order", "logit"),
                  maxit=settings["maxit"], restart_maxit=settings["restart_maxit"],
                  box=settings["box"], dtype=_dtype_setting(settings, None),
                  parallel_restarts=settings["parallel_restarts"]),
        min=dict(restarts=settings["min_restarts"], maxit=settings["min_maxit"],
                 restart_maxit=settings["restart_maxit"], box=settings["box"],
                 dtype=_dtype_setting(settings, torch.float64),
                 parallel_restarts=settings["parallel_restarts"], apgd_steps=settings["min_apgd_steps"],
                 apgd_targets=settings.get("min_apgd_targets", 0),
                 apgd_iter=settings["apgd_iter"], class_order=settings.get("class_order", "logit")),
    )
    m64 = model_as(model, torch.float64)
    progress = _Progress(ctx["eps"], settings["min_distortion"])
    progress.add(done_recs)
    my_total = sum(len(rec_io.batch_bounds(b, bs, n)) for b in mine)
    show = not args.quiet and d.is_main
    desc = "evaluate" if not d.active else f"evaluate (rank 0 of {d.world})"
    old_term = None
    with contextlib.suppress(ValueError):  # not in the main thread
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    interrupted: KeyboardInterrupt | None = None
    bar = tqdm(total=my_total + (len(done_recs) if not d.active else 0), initial=len(done_recs) if not d.active else 0,
               unit="sample", desc=desc, disable=not show, file=sys.stderr, dynamic_ncols=True)
    try:
        if show and progress.n:
            bar.set_postfix_str(progress.postfix())
        with logging_redirect_tqdm(loggers=[logging.getLogger("adv"), logging.getLogger("ncvx_core")]):
            for b in mine:
                idx = rec_io.batch_bounds(b, bs, n)
                xb = x[idx.start:idx.stop].to(device)
                yb = y[idx.start:idx.stop].to(device)
                cfg = dict(cfg_base, batch=b, seed=shard.batch_seed(settings["seed"], idx.start))
                phase = _phase_setter(bar, progress, b, n_batches) if show else None
                recs, examples = evaluate_batch(model, xb, yb, idx.start, distance, cfg, model64=m64, on_phase=phase)
                for ex in examples:
                    _save_example(out, ex)
                rec_io.append_records(target, recs)
                progress.add(recs)
                bar.update(len(recs))
                if show:
                    bar.set_postfix_str(progress.postfix())
    except KeyboardInterrupt as exc:
        interrupted = exc
    finally:
        bar.close()
        if old_term is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old_term)
    if interrupted is not None:
        code = EXIT_TERMINATED if isinstance(interrupted, _Terminated) else EXIT_INTERRUPTED
        if d.is_main:
            with contextlib.suppress(ValueError):  # torchrun follows Ctrl-C with SIGTERM: finish the report
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                stats = write_report(out, partial=True)
                _err(f"interrupted: partial report of {stats['samples']} of {n} samples in {out}; continue with "
                     "the same command and --resume")
            except Exception as exc:  # the partial report is best effort; the records are safe
                _err(f"interrupted; the records in {out} are safe, but the partial report failed: {exc}")
            finally:
                if old_term is not None:
                    with contextlib.suppress(ValueError):
                        signal.signal(signal.SIGTERM, old_term)
        return code
    shard.barrier(d)
    if d.is_main:
        rec_io.merge_records(out, bs, n)
        stats = write_report(out)
        if not args.quiet:
            sys.stdout.write(format_console(stats) + "\n")
            sys.stdout.flush()
    return 0


def _phase_setter(bar: Any, progress: _Progress, b: int, n_batches: int) -> Callable[[str], None]:
    def set_phase(label: str) -> None:
        done = progress.postfix()
        bar.set_postfix_str(f"{done + '; ' if done else ''}batch {b + 1}/{n_batches}: {label}")

    return set_phase


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def _run_report(args: argparse.Namespace) -> int:
    from adv.report import format_console, write_report

    out = Path(args.dir)
    if not (out / rec_io.SETTINGS).is_file():
        raise CliError(f"report: {args.dir!r} has no settings.json (not an output directory of 'evaluate')")
    try:
        stats = write_report(out)
    except (OSError, ValueError) as exc:
        raise CliError(f"report: {exc}") from exc
    if not args.quiet:
        sys.stdout.write(format_console(stats) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ncvx-adv`` / ``python -m adv``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    handler = _configure_logging(getattr(args, "verbose", False))
    threads = torch.get_num_threads()
    try:
        if args.command == "report":
            return _run_report(args)
        return _run_evaluate(args)
    except CliError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the first batch (e.g. while the default model trains)
        _err("interrupted (the records written so far are kept; continue with --resume)")
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads)
        _remove_logging(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
