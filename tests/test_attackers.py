"""Adaptive attackers: they learn, they choose on validation only, they are reproducible."""

from __future__ import annotations

import pytest
import torch

from ppgan.attackers import Augment
from ppgan.data import load_dataset
from ppgan.engine import RunContext
from ppgan.engine.fit import fit_classifier
from ppgan.tasks.evaluate import fit_adaptive, labels_of
from tests.conftest import make_cfg


class TestSplitUnread(dict):
    """An `anon` mapping whose evaluated split must not be read while attackers train."""

    __test__ = False  # not a pytest class

    def __getitem__(self, split):
        if split == "test":
            raise AssertionError("the test split was read while training/selecting an attacker")
        return super().__getitem__(split)

    def get(self, split, default=None):
        return self[split] if split == "test" else super().get(split, default)

    def items(self):
        raise AssertionError("the attacker iterated over every split")

    values = items


@pytest.fixture(scope="module")
def tiny(data_dir):
    cfg = make_cfg(f"paths.data_dir={data_dir}", "task=evaluate")
    data = load_dataset(cfg.dataset, require_splits=("train", "val", "test"))
    images = {s: data.split_tensors(s)["images"] for s in ("train", "val", "test")}
    return cfg, data, images


def _fit(cfg, data, anon, out, method="m"):
    ctx = RunContext(cfg, out)
    key = {"data": "d", "seed": ctx.seed, "method": method}
    return fit_adaptive(ctx, method, data, anon, key)


def _acc(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def on_originals(tiny, tmp_path_factory):
    """Every attacker trained on an *un*-anonymized release (the test split unreadable)."""
    cfg, data, images = tiny
    out = tmp_path_factory.mktemp("adaptive") / "a"
    return _fit(cfg, data, TestSplitUnread(images), out), out


def test_every_attacker_learns_originals_and_not_noise(tiny, on_originals, tmp_path):
    """Trained on an *un*-anonymized release, each attacker re-identifies test images far above
    chance; trained on pure noise, none does better than chance by much."""
    cfg, data, images = tiny
    chance = 1 / data.n_ids  # 6 identities, 12 test images
    ids = labels_of(data, "test", "id")
    nets, _ = on_originals
    assert set(nets) == {"resnet", "resnet_aug", "linear", "knn"}
    for name, net in nets.items():
        assert _acc(net, images["test"], ids) >= 0.6 > 3 * chance, name
    g = torch.Generator().manual_seed(0)
    noise = {s: torch.rand(x.shape, generator=g) * 2 - 1 for s, x in images.items()}
    nets = _fit(cfg, data, TestSplitUnread(noise), tmp_path / "noise")
    for name, net in nets.items():
        assert _acc(net, noise["test"], ids) <= 2.5 * chance + 1e-9, name


def test_attackers_are_deterministic_and_cached(tiny, on_originals, tmp_path):
    cfg, data, images = tiny
    a, out = on_originals
    b = _fit(cfg, data, TestSplitUnread(images), tmp_path / "b")
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    files = sorted(p.name for p in (out / "attackers").iterdir())
    assert files == [f"adaptive_m_{n}.pt" for n in ("knn", "linear", "resnet", "resnet_aug")]
    # Reused while the key matches; other method outputs (another key) retrain. Checked on the
    # cheap attackers only, to keep the test short.
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "attackers").iterdir()}
    _fit(cfg, data, TestSplitUnread(images), out)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "attackers").iterdir()}
    cheap = make_cfg(
        f"paths.data_dir={cfg.paths.data_dir}",
        "task=evaluate",
        "~task.adaptive.resnet",
        "~task.adaptive.resnet_aug",
    )
    key = {"data": "d", "seed": 0, "method": "another generator"}
    nets = fit_adaptive(RunContext(cheap, out), "m", data, TestSplitUnread(images), key)
    assert set(nets) == {"linear", "knn"}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "attackers").iterdir()}
    assert sorted(n for n in stamps if after[n] != stamps[n]) == [
        "adaptive_m_knn.pt",
        "adaptive_m_linear.pt",
    ]


def test_early_stopping_is_on_validation(tiny):
    """Validation labels that have nothing to do with the images: the best epoch comes early and
    training stops after `patience` epochs without improvement, long before `epochs`."""
    _, data, images = tiny
    torch.manual_seed(0)
    from ppgan.models.classifier import Classifier

    net = Classifier(list(data.shape), data.n_ids, channels=(8, 8), kernels=(3, 3), hidden=16)
    epochs = []

    def progress(it, **_):
        for e in it:
            epochs.append(e)
            yield e

    g = torch.Generator().manual_seed(1)
    wrong = torch.randint(0, data.n_ids, labels_of(data, "val", "id").shape, generator=g)
    fit_classifier(
        net,
        (images["train"], labels_of(data, "train", "id")),
        (images["val"], wrong),
        epochs=50,
        batch_size=16,
        lr=1e-3,
        seed=0,
        progress=progress,
        patience=3,
    )
    assert len(epochs) < 50


def test_augment_keeps_shape_range_and_orientation():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 32).repeat(4, 3, 32, 1)  # a left-to-right ramp
    out = Augment(shift=0.0625, brightness=0.1, contrast=0.1, noise=0.0)(x, g)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert (out[..., -1] > out[..., 0]).all()  # never mirrored
    same = Augment(shift=0.0625, brightness=0.1, contrast=0.1, noise=0.03)
    a = same(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, same(x, torch.Generator().manual_seed(3)))
