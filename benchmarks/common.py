"""Shared helpers of the ncvx_core benchmark suite.

* environment header (date, git commit, python / torch / numpy versions, CPU model and count,
  torch threads, device) and the exact command, written at the top of every results file;
* timing with ``time.perf_counter`` (CUDA is synchronised before each clock read);
* models: a small MLP trained on scikit-learn's bundled ``load_digits`` (8x8 images scaled to
  [0, 1], n = 64; a few seconds on a CPU, fixed seed, optionally a couple of epochs of l2-FGSM
  adversarial training) and a small CNN on 3x32x32 inputs (random weights, n = 3072);
* batched problem builders: the max-loss attack (paper Eq. 1), the minimal-distortion problem
  (paper Eq. 4) and a cheap synthetic nonsmooth constrained problem for scaling runs. All of
  them accept the solver's ``idx=`` keyword so per-row data is indexed correctly when the solver
  evaluates a subset of the batch, and :class:`RowView` turns one row into a batch-of-one
  problem (for "loop of single-problem solves" columns and for PyGRANSO).

Nothing here downloads anything. Without scikit-learn the digits data is replaced by a
synthetic 64-dimensional, 10-class data set, and every results file says which one was used.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ncvx_core.memory import available_memory  # noqa: F401  (re-exported for the scripts)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------------
# command line, devices, environment
# ----------------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """Flags every script accepts: --device, --dtype, --threads, --seed, --out."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                        help="dtype of the solver state and the models (default float64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default 1 on CPU: on small shared machines multi-threaded "
                             "OpenMP on tiny tensors is erratic; torch's own choice on CUDA; 0 = torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help=f"results file (.md) or directory (default benchmarks/results/{default_out}_<device>.md; "
                             "$OUT/<name> when the environment variable OUT is set)")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec}: CUDA is not available in this environment")
    return dev


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Apply --threads and --seed; returns (device, dtype)."""
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    return device, getattr(torch, args.dtype)


def out_path(args: argparse.Namespace, name: str, device: torch.device) -> Path:
    """Where a script writes its Markdown results."""
    fname = f"{name}_{device.type}.md"
    if args.out:
        p = Path(args.out)
        if p.suffix == ".md":
            return p
        return p / fname
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / fname
    return RESULTS_DIR / fname


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # git missing, not a checkout, ...
        return ""


def _commit() -> str:
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (no git checkout here)"
    return head + (" (ncvx_core/ has uncommitted changes)" if _git("status", "--porcelain", "--", "ncvx_core") else "")


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def env_info(device: torch.device) -> dict[str, str]:
    try:
        import numpy

        np_version = numpy.__version__
    except ImportError:
        np_version = "not installed"
    info = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "git commit": _commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np_version,
        "ncvx_core": _version("ncvx-core") or "?",
        "CPU": f"{cpu_model()}; os.cpu_count() = {os.cpu_count()}; usable = {len(os.sched_getaffinity(0))}",
        "torch threads": str(torch.get_num_threads()),
        "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["GPU"] = f"{p.name}, {p.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"
    for mod in ("scikit-learn", "scipy", "qpth", "osqp", "pygranso"):
        v = _version(mod)
        if v:
            info[mod] = v
    return info


def command_line() -> str:
    """The exact command that produced a results file (run from the repository root)."""
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, ROOT) if Path(exe).resolve().is_relative_to(ROOT) else exe
    except (ValueError, OSError):
        pass
    argv = [os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0], *sys.argv[1:]]
    return shlex.join([exe, *argv])


def env_header_md(device: torch.device, extra: dict[str, Any] | None = None) -> str:
    info = env_info(device)
    if extra:
        info.update({k: str(v) for k, v in extra.items()})
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()]
    return "Command (from the repository root):\n\n```\n" + command_line() + "\n```\n\n" + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# timing and tables
# ----------------------------------------------------------------------------------------------
def sync(device: torch.device | str | None = None) -> None:
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[Any, float]:
    """Run ``fn()`` once; returns (result, seconds) measured with ``time.perf_counter``."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e5 or a < 1e-3:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if a < 100 else f"{v:.0f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(out) + "\n"


def write_results(path: Path, title: str, device: torch.device, body: Sequence[str],
                  extra: dict[str, Any] | None = None, *, quiet: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + env_header_md(device, extra) + "\n" + "\n".join(body)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    if not quiet:
        print(f"\nwrote {path}")


def log(*a: Any) -> None:
    print(*a, flush=True)


class quiet_stdout:
    """Silence file descriptor 1 (C libraries such as OSQP print there directly)."""

    def __enter__(self) -> quiet_stdout:
        sys.stdout.flush()
        self._saved = os.dup(1)
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        os.close(self._null)


# ----------------------------------------------------------------------------------------------
# data and models
# ----------------------------------------------------------------------------------------------
def load_digits_data(seed: int = 0) -> tuple[Tensor, Tensor, str]:
    """``X (N, 64)`` in [0, 1] (float64), ``y (N,)`` long and the source name.

    scikit-learn's bundled copy of the UCI digits (no download); without scikit-learn a synthetic
    stand-in (10 Gaussian clusters in [0, 1]^64) so that timing runs still work.
    """
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        X = torch.tensor(d.data, dtype=torch.float64) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        return X, y, "sklearn.datasets.load_digits (8x8, /16)"
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        centers = torch.rand(10, 64, generator=g, dtype=torch.float64)
        y = torch.arange(1797) % 10
        X = (centers[y] + 0.15 * torch.randn(1797, 64, generator=g, dtype=torch.float64)).clamp(0, 1)
        return X, y, "SYNTHETIC stand-in (scikit-learn not installed)"


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], 64))


def _l2_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x + eps * g).clamp(0, 1).detach()


def train_digits_mlp(device: torch.device, dtype: torch.dtype = torch.float64, *, seed: int = 0,
                     epochs: int = 30, adv_epochs: int = 2, adv_eps: float = 1.0
                     ) -> tuple[nn.Module, Tensor, Tensor, dict[str, Any]]:
    """Train the digits MLP (Adam, fixed seed): ``epochs`` plain epochs, then ``adv_epochs`` epochs
    on a 50/50 mix of clean and l2-FGSM(``adv_eps``) examples. Returns (model in eval mode with
    frozen parameters, X_test, y_test, info)."""
    X, y, source = load_digits_data(seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(X.shape[0], generator=g)
    ntr = int(0.8 * X.shape[0])
    tr, te = perm[:ntr], perm[ntr:]
    torch.manual_seed(seed)
    model = DigitsMLP().to(torch.float32)
    Xtr, ytr = X[tr].float(), y[tr]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for ep in range(epochs + adv_epochs):
        order = torch.randperm(ntr, generator=g)
        for i in range(0, ntr, 64):
            b = order[i:i + 64]
            xb, yb = Xtr[b], ytr[b]
            if ep >= epochs:
                xb = torch.cat([xb, _l2_fgsm(model, xb, yb, adv_eps)])
                yb = torch.cat([yb, yb])
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    secs = time.perf_counter() - t0
    model = model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    Xte, yte = X[te].to(device=device, dtype=dtype), y[te].to(device)
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).double().mean())
    info = {"data": source, "train/test": f"{ntr}/{len(te)}", "train seconds": round(secs, 2),
            "clean test accuracy": round(acc, 4), "epochs": f"{epochs} plain + {adv_epochs} l2-FGSM (eps {adv_eps})"}
    return model, Xte, yte, info


class SmallCNN(nn.Module):
    """conv3x3(16)-ReLU-pool-conv3x3(32)-ReLU-pool-linear(10) on 3x32x32 inputs (random weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 3, 32, 32)
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class CifarCNN(nn.Module):
    """A CIFAR-sized CNN on ``(B, 3, 32, 32)`` inputs, 10 logits.

    ``conv3x3(3->32) ReLU conv3x3(32->64) ReLU maxpool2 conv3x3(64->128) ReLU maxpool2 flatten
    linear(8192->256) ReLU linear(256->10)``. No batch-norm or dropout: train and eval modes compute
    the same function and every row of the output depends on the same row of the input only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 8 * 8, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def _random_model(model: nn.Module, last: nn.Linear, device: torch.device, dtype: torch.dtype,
                  logit_scale: float) -> nn.Module:
    """``model`` (default-initialised) with its last layer ``last`` multiplied by ``logit_scale``,
    frozen, in eval mode."""
    with torch.no_grad():
        last.weight.mul_(logit_scale)
        last.bias.mul_(logit_scale)
    model = model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_cnn(device: torch.device, dtype: torch.dtype = torch.float64, *, seed: int = 0,
             logit_scale: float = 20.0) -> nn.Module:
    """The CNN with random (default-initialised) weights; the last layer is multiplied by
    ``logit_scale`` so that margins on random inputs are O(0.1-1) rather than O(0.01) (otherwise
    any small perturbation flips the class and the attack ends at once)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    return _random_model(model, model.fc, device, dtype, logit_scale)


def make_cifar_cnn(device: torch.device, dtype: torch.dtype = torch.float64, *, seed: int = 0,
                   logit_scale: float = 20.0) -> nn.Module:
    """:class:`CifarCNN` with random (default-initialised) weights, the last layer multiplied by
    ``logit_scale`` (as :func:`make_cnn`), frozen, in eval mode."""
    torch.manual_seed(seed)
    model = CifarCNN()
    return _random_model(model, model.fc2, device, dtype, logit_scale)


def cnn_inputs(model: nn.Module, B: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random images in [0, 1] (B, 3, 32, 32) labelled with the model's own prediction."""
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed + 12345)
    x = torch.rand(B, 3, 32, 32, generator=g, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def correctly_classified(model: nn.Module, X: Tensor, y: Tensor, B: int) -> tuple[Tensor, Tensor]:
    """The first B test points the model classifies correctly (wrapping around if needed)."""
    with torch.no_grad():
        ok = torch.nonzero(model(X).argmax(1) == y).flatten()
    idx = ok[torch.arange(B, device=ok.device) % ok.numel()]
    return X[idx].clone(), y[idx].clone()


# ----------------------------------------------------------------------------------------------
# problems
# ----------------------------------------------------------------------------------------------
def margin(z: Tensor, y: Tensor) -> Tensor:
    """``max_{j != y} z_j - z_y`` per row (> 0: misclassified)."""
    zy = z.gather(1, y.view(-1, 1)).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return other - zy


def _rows(t: Tensor, idx: Tensor | None) -> Tensor:
    return t if idx is None else t[idx.to(t.device)]


class AttackProblem:
    """Max-loss attack (paper Eq. 1), B problems.

    ``f = -min(max_{j!=y} z_j - z_y, kappa)`` (kappa = 0.01: maximise the margin loss, capped once
    misclassified), ``ci = ||x - x_clean||_2 - eps <= 0`` (one inequality), the model applied to
    ``clamp(x, 0, 1)``.
    """

    def __init__(self, model: nn.Module, x_clean: Tensor, y: Tensor, eps: float, kappa: float = 0.01) -> None:
        self.model, self.x_clean, self.y, self.eps, self.kappa = model, x_clean, y, float(eps), float(kappa)

    @property
    def B(self) -> int:
        return int(self.x_clean.shape[0])

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, None]:
        xc, y = _rows(self.x_clean, idx), _rows(self.y, idx)
        z = self.model(x.clamp(0, 1))
        f = -margin(z, y).clamp(max=self.kappa)
        ci = ((x - xc).flatten(1).norm(dim=1) - self.eps).unsqueeze(1)
        return f, ci, None

    def x0(self, seed: int = 0, frac: float = 0.5) -> Tensor:
        """Start: x_clean plus a random direction of length frac * eps."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(self.x_clean.shape, generator=g, dtype=torch.float64).to(self.x_clean)
        d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1))
        return self.x_clean + frac * self.eps * d

    @torch.no_grad()
    def check(self, x: Tensor) -> dict[str, Tensor]:
        """Verify points by re-running the model on clamp(x, 0, 1): misclassified, radius, success."""
        x = x.to(self.x_clean).clamp(0, 1)
        pred = self.model(x).argmax(1)
        radius = (x - self.x_clean).flatten(1).norm(dim=1)
        mis = pred != self.y
        return {"misclassified": mis, "radius": radius, "success": mis & (radius <= self.eps * (1 + 1e-6))}


class MinDistortionProblem:
    """Minimal-distortion problem (paper Eq. 4), B problems: ``f = ||x - x_clean||_2`` s.t.
    ``ci = z_y - max_{j!=y} z_j <= 0`` (misclassified), the model applied to ``clamp(x, 0, 1)``."""

    def __init__(self, model: nn.Module, x_clean: Tensor, y: Tensor) -> None:
        self.model, self.x_clean, self.y = model, x_clean, y

    @property
    def B(self) -> int:
        return int(self.x_clean.shape[0])

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, None]:
        xc, y = _rows(self.x_clean, idx), _rows(self.y, idx)
        z = self.model(x.clamp(0, 1))
        f = (x - xc).flatten(1).norm(dim=1)
        ci = (-margin(z, y)).unsqueeze(1)
        return f, ci, None

    def x0(self, seed: int = 0, scale: float = 1e-2) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(self.x_clean.shape, generator=g, dtype=torch.float64).to(self.x_clean)
        return self.x_clean + scale * d

    @torch.no_grad()
    def check(self, x: Tensor) -> dict[str, Tensor]:
        x = x.to(self.x_clean).clamp(0, 1)
        pred = self.model(x).argmax(1)
        radius = (x - self.x_clean).flatten(1).norm(dim=1)
        mis = pred != self.y
        return {"misclassified": mis, "radius": radius, "success": mis}


class SyntheticProblem:
    """Cheap nonsmooth constrained problem for scaling runs, B problems of size n:
    ``f = mean|x - c| + 0.5 mean(x^2)``, ``ci = mean(x^2) - r^2 <= 0`` with per-problem ``c``
    (entries N(0, 1)) and r = 0.5 (the constraint is active at the solution)."""

    def __init__(self, B: int, n: int, device: torch.device, dtype: torch.dtype, seed: int = 0, r: float = 0.5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.c = torch.randn(B, n, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        self.r2 = r * r
        self.n = n

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, None]:
        c = _rows(self.c, idx)
        f = (x - c).abs().mean(1) + 0.5 * (x * x).mean(1)
        ci = ((x * x).mean(1) - self.r2).unsqueeze(1)
        return f, ci, None

    def x0(self) -> Tensor:
        return 0.1 * self.c.clone()


class RowView:
    """Problem ``rows`` of a batched problem as a batch of its own (``idx`` is remapped), e.g.
    ``RowView(P, [b])`` is problem b alone, for single-problem solves."""

    def __init__(self, base: Callable[..., Any], rows: Sequence[int] | Tensor) -> None:
        self.base = base
        self.rows = torch.as_tensor(rows, dtype=torch.long)

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> Any:
        rows = self.rows.to(x.device)
        return self.base(x, idx=rows if idx is None else rows[idx.to(x.device)])


def status_counts(status: Sequence[int] | Tensor) -> str:
    from collections import Counter

    vals = status.tolist() if isinstance(status, Tensor) else list(status)
    c = Counter(int(v) for v in vals)
    return " ".join(f"{k}:{c[k]}" for k in sorted(c))


def side_by_side(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``a`` and ``b``, timed in alternating order after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        for f, acc in ((a, ta), (b, tb)):
            t = time.perf_counter()
            f()
            acc.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ta), statistics.median(tb)
