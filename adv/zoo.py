"""Embedded default models and data: scikit-learn's digits and two small CNNs trained on them.

Nothing is downloaded. The data is scikit-learn's bundled ``load_digits`` (1797 grey 8x8 images,
10 classes, pixel values 0..16, scaled here to [0, 1]); the models are trained on first use,
deterministically, in well under a minute on a small CPU, and cached as state dicts under
:func:`cache_dir`.

```python
from adv.zoo import load_digits, default_model
x, y = load_digits(split="test")             # (360, 1, 8, 8) float32 in [0, 1], (360,) int64
model = default_model("standard")            # DigitsCNN, eval mode, CPU, float32, frozen
robust = default_model("adversarial")        # PGD l-infinity adversarially trained (eps 0.1)
```

Split: stratified, 20 % test (360 test and 1437 train images), ``random_state=0``
(:data:`SPLIT_SEED`), so it is the same on every machine with the same scikit-learn data.

Recipes (:data:`RECIPES`; the cache file name carries :data:`RECIPE_VERSION`, so a changed
recipe retrains instead of loading stale weights):

* ``"standard"``: cross-entropy, Adam (lr 2e-3, cosine decay), 60 epochs, batch 64.
* ``"adversarial"``: Madry-style PGD adversarial training in l-infinity, ``eps = 0.1`` on [0, 1]
  pixels (1.6 grey levels of 16), 7 PGD steps of ``eps / 4`` from a random start, loss
  ``0.5 CE(clean) + 0.5 CE(PGD)``, Adam (lr 2e-3, cosine decay), 60 epochs, batch 64, PGD
  run in eval mode (the model has no batch-norm or dropout, so train and eval modes agree).

Measured on the test split (torch 2.13 CPU, scikit-learn 1.x; see :data:`MEASURED`; training
took about 6 s and 35 s on one thread of a shared 2-core CPU): standard clean 98.3 %;
adversarial clean 99.4 %. Robust accuracy under :func:`adv.apgd` (CE, 50 iterations, 1 restart):
standard l-inf 0.1 51.9 %, l2 0.5 51.7 %; adversarial l-inf 0.1 86.1 %, l-inf 0.15 57.2 %,
l2 0.5 78.3 %, l2 1.0 6.1 %, l1 2.0 22.8 % (l-infinity training buys little l1 / l2 robustness).

Training runs with one torch thread (restored afterwards), a fixed ``torch.manual_seed`` and an
explicit shuffling generator, so the weights are reproducible on one machine; across machines
and torch versions the float rounding of convolutions may differ slightly (the accuracies do
not change materially). Concurrent first uses (e.g. several torchrun processes) each train and
then publish the file atomically (temporary file + ``os.replace``): the cache is never seen
half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DigitsCNN", "load_digits", "default_model", "cache_dir", "cache_path", "train_digits_cnn", "fit_classifier",
    "RECIPES", "RECIPE_VERSION", "SPLIT_SEED", "TEST_FRACTION", "MEASURED", "KINDS",
]

logger = logging.getLogger("adv")

#: seed of the stratified train/test split
SPLIT_SEED = 0
#: fraction of the 1797 digits in the test split (360 images)
TEST_FRACTION = 0.2
#: version of the architecture + training recipes; part of every cache file name
RECIPE_VERSION = "v1"
#: the model kinds :func:`default_model` knows
KINDS = ("standard", "adversarial")

#: training recipes (see the module docstring)
RECIPES: dict[str, dict[str, Any]] = {
    "standard": dict(epochs=60, batch_size=64, lr=2e-3, seed=0, adversarial=False),
    "adversarial": dict(epochs=60, batch_size=64, lr=2e-3, seed=0, adversarial=True, eps=0.1, pgd_steps=7,
                        pgd_step=0.025, clean_weight=0.5),
}

#: accuracies measured on the test split when the recipes were written (fractions, 360 images)
MEASURED: dict[str, dict[str, float]] = {
    "standard": {"clean": 0.983, "apgd_ce50_linf_0.1": 0.519, "apgd_ce50_l2_0.5": 0.517},
    "adversarial": {"clean": 0.994, "apgd_ce50_linf_0.1": 0.861, "apgd_ce50_linf_0.15": 0.572,
                    "apgd_ce50_l2_0.5": 0.783, "apgd_ce50_l1_2": 0.228},
}

_INSTALL_HINT = 'pip install "ncvx-core[adv]"'


def _sklearn_digits() -> tuple[Any, Any]:
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError(f"adv.zoo needs scikit-learn for the bundled digits data: {_INSTALL_HINT}") from exc
    d = _load()
    return d.data, d.target


def load_digits(split: str = "test") -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as image tensors.

    Args:
        split: ``"train"`` (1437 images), ``"test"`` (360) or ``"all"`` (1797, original order).

    Returns:
        ``x (N, 1, 8, 8)`` float32 in [0, 1] (pixel value / 16) and ``y (N,)`` int64.

    Raises:
        ValueError: unknown split. ImportError: scikit-learn is missing.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data, target = _sklearn_digits()
    x = torch.as_tensor(data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(target, dtype=torch.int64)
    if split == "all":
        return x, y
    from sklearn.model_selection import train_test_split

    idx = torch.arange(x.shape[0]).numpy()
    tr, te = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=target)
    sel = torch.as_tensor(tr if split == "train" else te, dtype=torch.int64)
    return x[sel].contiguous(), y[sel].contiguous()


class DigitsCNN(nn.Module):
    """Small CNN for ``(B, 1, 8, 8)`` inputs in [0, 1] with 10 logits.

    ``conv3x3(1->16) ReLU conv3x3(16->32) ReLU maxpool2 -> (32, 4, 4) flatten linear(512->64) ReLU
    linear(64->10)``. No batch-norm or dropout: every sample's logits depend on that sample only,
    and train and eval modes compute the same function.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        h = self.pool(h).flatten(1)
        return self.fc2(self.act3(self.fc1(h)))


def cache_dir() -> Path:
    """Where trained weights are cached: ``$NCVX_ADV_CACHE`` if set, else
    ``$XDG_CACHE_HOME/ncvx-adv``, else ``~/.cache/ncvx-adv`` (not created here)."""
    env = os.environ.get("NCVX_ADV_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "ncvx-adv"
    return Path.home() / ".cache" / "ncvx-adv"


def cache_path(kind: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache file of model ``kind`` (``digits_cnn_<kind>_<RECIPE_VERSION>.pt``)."""
    _check_kind(kind)
    base = cache_dir() if cache is None else Path(cache).expanduser()
    return base / f"digits_cnn_{kind}_{RECIPE_VERSION}.pt"


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}{hint}")
    return kind


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step: float,
              gen: torch.Generator) -> Tensor:
    """l-infinity PGD on the CE loss from a uniform random start, projected onto ball and box."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    xa = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xa), y)
            (g,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + step * g.sign()
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0.0, 1.0)
    return xa.detach()


def fit_classifier(make_model: Callable[[], nn.Module], x: Tensor, y: Tensor, rec: dict[str, Any], *,
                   epochs: int, adv_from: int) -> nn.Module:
    """The training loop of the zoo's recipes, for any classifier.

    ``make_model()`` builds the model after ``torch.manual_seed(rec["seed"])``; Adam
    (``rec["lr"]``) with cosine decay over ``epochs`` epochs of batches of ``rec["batch_size"]``
    shuffled by a generator seeded ``rec["seed"] + 1``; from epoch ``adv_from`` on the loss is
    ``clean_weight CE(clean) + (1 - clean_weight) CE(PGD)`` (l-infinity PGD, ``rec["eps"]``,
    ``rec["pgd_steps"]`` steps of ``rec["pgd_step"]``, run in eval mode), before it plain
    cross-entropy. One torch thread; returns the model in eval mode with frozen parameters."""
    if not callable(make_model):
        raise TypeError(f"make_model must be a callable returning the model, got {type(make_model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating (N, ...) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(y, Tensor) or y.dtype != torch.long or tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},), got "
                         f"{(tuple(y.shape), y.dtype) if isinstance(y, Tensor) else type(y).__name__}")
    for name, v in (("epochs", epochs), ("adv_from", adv_from)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    need = {"seed", "lr", "batch_size"} | ({"eps", "pgd_steps", "pgd_step", "clean_weight"} if adv_from < epochs else set())
    missing = sorted(need - set(rec))
    if missing:
        raise ValueError(f"rec is missing the recipe keys {missing}")
    with _one_thread():
        torch.manual_seed(rec["seed"])
        gen = torch.Generator().manual_seed(rec["seed"] + 1)
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=rec["lr"])
        steps_per_epoch = -(-x.shape[0] // rec["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
        for ep in range(epochs):
            perm = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], rec["batch_size"]):
                b = perm[i:i + rec["batch_size"]]
                xb, yb = x[b], y[b]
                if ep >= adv_from:
                    model.eval()
                    xa = _pgd_linf(model, xb, yb, rec["eps"], rec["pgd_steps"], rec["pgd_step"], gen)
                    model.train()
                    w = rec["clean_weight"]
                    loss = w * F.cross_entropy(model(xb), yb) + (1 - w) * F.cross_entropy(model(xa), yb)
                else:
                    model.train()
                    loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return _frozen(model)


def train_digits_cnn(kind: str = "standard", *, epochs: int | None = None) -> DigitsCNN:
    """Train a :class:`DigitsCNN` with recipe ``RECIPES[kind]`` on the train split (no caching).

    ``epochs`` overrides the recipe's epoch count (tests use it for short runs). Deterministic:
    fixed seeds, one torch thread. Returns the model in eval mode with frozen parameters.
    """
    _check_kind(kind)
    rec = dict(RECIPES[kind])
    if epochs is not None:
        rec["epochs"] = int(epochs)
    x, y = load_digits("train")
    n_ep = rec["epochs"]
    return fit_classifier(DigitsCNN, x, y, rec, epochs=n_ep, adv_from=0 if rec["adversarial"] else n_ep)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _atomic_save(state: dict[str, Tensor], path: Path) -> None:
    from adv.records import atomic_write

    atomic_write(path, lambda fh: torch.save(state, fh))


def _load_state(path: Path) -> dict[str, Tensor] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt or foreign file: retrain and overwrite it
        logger.warning("adv.zoo: could not read the cached weights %s (%s: %s); retraining", path,
                       type(exc).__name__, exc)
        return None
    if not isinstance(state, dict):
        logger.warning("adv.zoo: %s does not hold a state dict; retraining", path)
        return None
    return state


def default_model(kind: str = "standard", cache: str | os.PathLike[str] | None = None,
                  device: str | torch.device = "cpu", retrain: bool = False) -> DigitsCNN:
    """A trained :class:`DigitsCNN` (``"standard"`` or ``"adversarial"``, see the module docstring).

    Loaded from ``cache`` (default :func:`cache_dir`) when the file of the current recipe version
    is there; otherwise (or with ``retrain=True``) trained on the train split (well under a
    minute on a small CPU) and written there atomically. If the cache directory is not writable
    the trained model is still returned (a warning is logged).

    Returns:
        the model in eval mode, float32, on ``device``, with ``requires_grad=False`` parameters.

    Raises:
        ValueError: unknown ``kind``. ImportError: scikit-learn is missing (needed to train).
    """
    _check_kind(kind)
    path = cache_path(kind, cache)
    state = None if retrain else _load_state(path)
    model = DigitsCNN()
    if state is not None:
        try:
            model.load_state_dict(state)
            logger.debug("adv.zoo: loaded %s model from %s", kind, path)
            return _frozen(model).to(device)
        except (RuntimeError, KeyError) as exc:
            logger.warning("adv.zoo: cached weights %s do not fit DigitsCNN (%s); retraining", path, exc)
    logger.info("adv.zoo: training the %s digits CNN (recipe %s); it is cached in %s", kind, RECIPE_VERSION, path)
    t = time.monotonic()
    model = train_digits_cnn(kind)
    logger.info("adv.zoo: trained the %s digits CNN in %.1f s", kind, time.monotonic() - t)
    try:
        _atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
        logger.info("adv.zoo: cached the %s model in %s", kind, path)
    except OSError as exc:
        logger.warning("adv.zoo: could not write the cache %s (%s); the model is not cached", path, exc)
    return model.to(device)
