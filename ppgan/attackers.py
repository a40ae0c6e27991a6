"""Adaptive identity attackers of `task=evaluate` (each a config node of `task.adaptive`).

An adaptive attacker holds a released data set with identities for its training part: it learns
identity from a method's anonymized *training* images and makes every choice (stopping epoch,
regularisation, k) on the anonymized *validation* images; the evaluated split is scored once,
afterwards, by the caller. Several architectures, because each under-reports a different leak:
a ResNet and a small CNN (trained to convergence with early stopping and augmentation), a linear
classifier and k nearest neighbours on whitened principal components of the pixels. Privacy is
judged by the best of them.

Each `fit` returns a network of `ppgan.models` and its spec, so attackers are cached and rebuilt
like every other checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ppgan.engine.build import build_model
from ppgan.engine.fit import fit_classifier

log = logging.getLogger(__name__)

Split = tuple[Tensor, Tensor]  # (images [N, C, H, W] in [-1, 1], labels [N])


class Augment:
    """Training-time augmentation of identity attackers, for images in [-1, 1].

    Shifts by up to `shift` of the image size (edge pixels repeated), a brightness gain and a
    contrast change about the image mean within +-`brightness` / +-`contrast`, Gaussian noise of
    standard deviation up to `noise`: the capture changes between photographs of one person. No
    flips: a mirrored eye is another eye (furrow twist, crypt and mole positions, canthal tilt
    change sides), so a flip teaches the attacker to confuse people.
    """

    def __init__(self, shift: float, brightness: float, contrast: float, noise: float):
        self.shift, self.brightness, self.contrast, self.noise = shift, brightness, contrast, noise

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        dev = x.device

        def uniform(lo: float, hi: float) -> Tensor:  # [N, 1, 1, 1]
            return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen, device=dev)

        m = round(self.shift * h)
        if m > 0:
            padded = F.pad(x, (m, m, m, m), mode="replicate")
            dy, dx = (torch.randint(0, 2 * m + 1, (2, n), generator=gen, device=dev)).unbind(0)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            batch = torch.arange(n, device=dev)[:, None, None, None]
            chan = torch.arange(c, device=dev)[None, :, None, None]
            x = padded[batch, chan, rows, cols]  # [N, C, H, W]
        unit = (x + 1) / 2
        mean = unit.mean(dim=(1, 2, 3), keepdim=True)
        unit = (unit - mean) * uniform(1 - self.contrast, 1 + self.contrast) + mean
        unit = unit * uniform(1 - self.brightness, 1 + self.brightness)
        noise = torch.randn(x.shape, generator=gen, device=dev) * uniform(0, self.noise)
        return ((unit + noise) * 2 - 1).clamp(-1, 1)


class NetworkAttacker:
    """A network (`network`: a `ppgan.models` node) trained with Adam and cross-entropy for at
    most `max_epochs`, stopped after `patience` epochs without a better validation accuracy,
    kept at its best validation epoch; training batches augmented by `augment` (null: none).
    `standardize`: the network's per-pixel input statistics are those of the training images
    (networks with a `standardize` argument, e.g. `SmallResNet`)."""

    def __init__(
        self,
        network: DictConfig,
        max_epochs: int,
        patience: int,
        batch_size: int,
        lr: float,
        augment: DictConfig | dict | None = None,
        standardize: bool = False,
    ):
        self.network, self.max_epochs, self.patience = network, max_epochs, patience
        self.batch_size, self.lr, self.standardize = batch_size, lr, standardize
        self.augment = Augment(**augment) if augment else None

    def fit(self, train: Split, val: Split, n_classes: int, seed: int, progress=None):
        torch.manual_seed(seed)  # its own initialisation
        extra = {"standardize": True} if self.standardize else {}
        net, spec = build_model(
            self.network, in_shape=list(train[0].shape[1:]), n_classes=n_classes, **extra
        )
        if self.standardize:
            x = train[0].double()
            std = x.std(0)
            with torch.no_grad():
                net.input_mean.copy_(x.mean(0))
                net.input_scale.copy_(torch.where(std > 1e-3, std, torch.ones_like(std)))
        net = fit_classifier(
            net.to(train[0].device),
            train,
            val,
            self.max_epochs,
            self.batch_size,
            self.lr,
            seed,
            progress,
            patience=self.patience,
            augment=self.augment,
        )
        return net, spec


def _val_accuracy(net: nn.Module, val: Split) -> float:
    with torch.no_grad():
        return float((net(val[0]).argmax(1) == val[1]).float().mean())


class LinearAttacker:
    """Multinomial logistic regression (scikit-learn, L-BFGS) on `n_components` whitened principal
    components of standardized pixels; the inverse regularisation strength is picked from
    `c_grid` on validation accuracy (ties: the stronger regularisation)."""

    def __init__(self, n_components: int, c_grid: Sequence[float], max_iter: int = 300):
        self.n_components, self.c_grid, self.max_iter = n_components, list(c_grid), max_iter

    def fit(self, train: Split, val: Split, n_classes: int, seed: int, progress=None):
        from sklearn.linear_model import LogisticRegression

        k = min(self.n_components, len(train[0]))
        node = {"_target_": "ppgan.models.probe.PcaLinear", "n_components": k}
        net, spec = build_model(node, in_shape=list(train[0].shape[1:]), n_classes=n_classes)
        net = net.to(train[0].device)
        feats = net.pca.fit(train[0]).cpu().double().numpy()
        labels = train[1].cpu().numpy()
        best = (-1.0, None)
        for c in sorted(self.c_grid):
            model = LogisticRegression(C=c, max_iter=self.max_iter, random_state=seed)
            model.fit(feats, labels)
            # The classes present in training: scatter into all n_classes (absent ones never win).
            weight = np.zeros((n_classes, k))
            bias = np.full(n_classes, -1e9)
            coef, intercept = model.coef_, model.intercept_
            if len(model.classes_) == 2:  # scikit-learn's binary form: one row for class 1
                coef, intercept = (
                    np.concatenate([-coef, coef]) / 2,
                    np.r_[-intercept, intercept] / 2,
                )
            weight[model.classes_], bias[model.classes_] = coef, intercept
            with torch.no_grad():
                net.head.weight.copy_(torch.from_numpy(weight))
                net.head.bias.copy_(torch.from_numpy(bias))
            acc = _val_accuracy(net, val)
            log.info("linear attacker: C=%g, val acc %.3f", c, acc)
            if acc > best[0]:
                best = (acc, {k_: v.clone() for k_, v in net.state_dict().items()})
        net.load_state_dict(best[1])
        return net.eval(), spec


class NearestNeighbourAttacker:
    """k nearest anonymized training images (cosine similarity of `n_components` whitened
    principal components), k picked from `k_grid` on validation accuracy (ties: the smaller)."""

    def __init__(self, n_components: int, k_grid: Sequence[int]):
        self.n_components, self.k_grid = n_components, list(k_grid)

    def fit(self, train: Split, val: Split, n_classes: int, seed: int, progress=None):
        n_comp = min(self.n_components, len(train[0]))
        best = (-1.0, None, None)
        for k in sorted(self.k_grid):
            node = {
                "_target_": "ppgan.models.probe.PcaNearestNeighbours",
                "n_components": n_comp,
                "n_gallery": len(train[0]),
                "k": k,
            }
            net, spec = build_model(node, in_shape=list(train[0].shape[1:]), n_classes=n_classes)
            net = net.to(train[0].device)
            if best[1] is None:
                net.pca.fit(train[0])
                pca_state = net.pca.state_dict()
            else:  # the projection does not depend on k
                net.pca.load_state_dict(pca_state)
            with torch.no_grad():
                net.gallery.copy_(net.features(train[0]))
                net.gallery_labels.copy_(train[1])
            acc = _val_accuracy(net, val)
            log.info("nearest-neighbour attacker: k=%d, val acc %.3f", k, acc)
            if acc > best[0]:
                best = (acc, net, spec)
        return best[1].eval(), best[2]
