"""adv.zoo: the bundled digits data, the DigitsCNN, cache resolution and the atomic weight cache.

The fast tests stub the training with a 1-epoch run; the full recipes (about 6 s and 35 s) and
their accuracy thresholds are marked ``slow``.
"""

from __future__ import annotations

import logging
import sys
import threading

import pytest
import torch
from torch import nn

import adv
from adv import zoo


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NCVX_ADV_CACHE", str(d))
    return d


@pytest.fixture
def quick_training(monkeypatch):
    """Replace the full recipe by a 1-epoch run and count the calls."""
    calls: list[str] = []
    real = zoo.train_digits_cnn

    def fake(kind: str = "standard", *, epochs: int | None = None) -> zoo.DigitsCNN:
        calls.append(kind)
        return real(kind, epochs=1)

    monkeypatch.setattr(zoo, "train_digits_cnn", fake)
    return calls


def test_load_digits_shapes_range_and_split_sizes():
    x, y = zoo.load_digits("test")
    assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (360,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # pixel values are multiples of 1/16
    assert torch.equal(x * 16, (x * 16).round())
    xt, yt = zoo.load_digits("train")
    xa, ya = zoo.load_digits("all")
    assert xt.shape == (1437, 1, 8, 8) and xa.shape == (1797, 1, 8, 8)
    # stratified: every class has 35 to 37 test images, and the class counts add up
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert torch.equal(counts + torch.bincount(yt, minlength=10), torch.bincount(ya, minlength=10))


def test_split_is_deterministic_and_disjoint():
    x1, y1 = zoo.load_digits("test")
    x2, y2 = zoo.load_digits("test")
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    xt, _ = zoo.load_digits("train")
    xa, _ = zoo.load_digits("all")
    # train + test is a permutation of all (compare sorted rows as byte strings)
    rows = sorted(r.numpy().tobytes() for r in torch.cat([xt, x1]).reshape(-1, 64))
    rows_all = sorted(r.numpy().tobytes() for r in xa.reshape(-1, 64))
    assert rows == rows_all


def test_load_digits_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be"):
        zoo.load_digits("validation")


def test_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "ncvx-core\[adv\]"'):
        zoo.load_digits("test")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NCVX_ADV_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NCVX_ADV_CACHE")
    assert zoo.cache_dir() == tmp_path / "xdg" / "ncvx-adv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "ncvx-adv"
    p = zoo.cache_path("adversarial", tmp_path / "c")
    assert p.parent == tmp_path / "c" and zoo.RECIPE_VERSION in p.name and "adversarial" in p.name


def test_digits_cnn_has_no_batchnorm_and_is_per_sample():
    torch.manual_seed(0)
    m = zoo.DigitsCNN().eval()
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    assert not any(isinstance(mod, nn.Dropout) for mod in m.modules())
    x, _ = zoo.load_digits("test")
    out = m(x[:5])
    assert out.shape == (5, 10)
    # a sample's logits do not depend on the rest of the batch
    torch.testing.assert_close(m(x[2:3]), out[2:3], rtol=1e-5, atol=1e-6, msg="batch dependence")
    # the perceptual feature hooks find the ReLU maps
    maps = adv.classifier_features(m)(x[:2])
    assert len(maps) == 2 and maps[0].shape == (2, 16, 8, 8)


def test_default_model_trains_once_then_loads_identical_weights(tmp_cache, quick_training, caplog):
    with caplog.at_level(logging.INFO, logger="adv"):
        m1 = zoo.default_model("standard")
    assert quick_training == ["standard"]
    path = zoo.cache_path("standard")
    assert path.is_file() and path.parent == tmp_cache
    assert any("training" in r.message and str(path) in r.message for r in caplog.records)
    assert not m1.training and all(not p.requires_grad for p in m1.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m1.parameters())
    m2 = zoo.default_model("standard")
    assert quick_training == ["standard"]  # loaded, not retrained
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_cache.iterdir()) == [path.name]
    zoo.default_model("standard", retrain=True)
    assert quick_training == ["standard", "standard"]


def test_explicit_cache_argument_and_kinds(tmp_path, quick_training, monkeypatch):
    monkeypatch.setenv("NCVX_ADV_CACHE", str(tmp_path / "unused"))
    m = zoo.default_model("adversarial", cache=tmp_path / "explicit", device="cpu")
    assert isinstance(m, zoo.DigitsCNN)
    assert (tmp_path / "explicit" / zoo.cache_path("adversarial").name).is_file()
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="did you mean 'adversarial'"):
        zoo.default_model("adversarail", cache=tmp_path)


def test_corrupt_cache_is_retrained(tmp_cache, quick_training, caplog):
    path = zoo.cache_path("standard")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="adv"):
        m = zoo.default_model("standard")
    assert quick_training == ["standard"]
    assert any("retraining" in r.message for r in caplog.records)
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["fc2.weight"], m.fc2.weight)


def test_concurrent_first_use_leaves_a_readable_cache(tmp_cache, quick_training):
    models: list[zoo.DigitsCNN] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            models.append(zoo.default_model("standard"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(models) == 3
    path = zoo.cache_path("standard")
    state = torch.load(path, weights_only=True)
    assert set(state) == set(models[0].state_dict())
    assert [p.name for p in tmp_cache.iterdir()] == [path.name]


def test_training_is_deterministic():
    a = zoo.train_digits_cnn("standard", epochs=1)
    b = zoo.train_digits_cnn("standard", epochs=1)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    c = zoo.train_digits_cnn("adversarial", epochs=1)
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


@pytest.mark.slow
def test_standard_model_accuracy(tmp_cache):
    m = zoo.default_model("standard")
    x, y = zoo.load_digits("test")
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.97, acc


@pytest.mark.slow
def test_adversarial_model_accuracy_and_robustness(tmp_cache):
    m = zoo.default_model("adversarial")
    std = zoo.default_model("standard")
    x, y = zoo.load_digits("test")
    x, y = x[:120], y[:120]
    with torch.no_grad():
        acc = (m(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.90, acc
    rob = (~adv.apgd(m, x, y, "linf", 0.1, loss="ce", n_iter=30).success).double().mean().item()
    rob_std = (~adv.apgd(std, x, y, "linf", 0.1, loss="ce", n_iter=30).success).double().mean().item()
    assert rob >= 0.7 and rob > rob_std + 0.2, (rob, rob_std)
