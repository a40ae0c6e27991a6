"""A compact supervised loop on in-memory tensors, for the networks `task=evaluate` trains itself
(unseen and adaptive attackers, the independent disease network)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgan.engine.context import Selection, epoch_generator, require_finite
from ppgan.engine.inference import batched, collect

log = logging.getLogger(__name__)
# (images [B, C, H, W], generator) -> augmented images of the same shape.
Augment = Callable[[Tensor, torch.Generator], Tensor]


def fit_classifier(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress=None,
    patience: int = 0,
    augment: Augment | None = None,
) -> nn.Module:
    """Train with Adam and cross-entropy; returns the model at its best validation accuracy
    (ties broken by the validation loss).

    Args:
        train, val: (images [N, C, H, W], labels [N]) on the model's device. Only `val` takes
            part in selection and stopping.
        epochs: the most passes over `train`.
        seed: fixes the initialisation-independent randomness (batch order, dropout,
            augmentation).
        patience: stop after this many epochs without a better validation score (0: never).
        augment: applied to each training batch (a fresh draw per batch, seeded by epoch).
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = train
    select = Selection(patience)
    best_state = None
    epochs_iter = progress(range(epochs), desc="fit") if progress else range(epochs)
    ran = 0
    for epoch in epochs_iter:
        if select.should_stop:
            break
        ran = epoch + 1
        model.train()
        perm = torch.randperm(
            len(x), generator=epoch_generator(seed, epoch, x.device), device=x.device
        )
        aug_gen = epoch_generator(seed, epoch, x.device, stream="augment") if augment else None
        loss_sum = torch.zeros((), device=x.device)
        for start in range(0, len(x), batch_size):
            sel = perm[start : start + batch_size]
            if len(sel) < 2:  # BatchNorm needs two samples
                continue
            images = augment(x[sel], aug_gen) if augment else x[sel]
            loss = F.cross_entropy(model(images), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        require_finite(loss_sum, "attacker training loss")
        logits = collect(model, batched(val[0], 256))
        acc = float((logits.argmax(1) == val[1]).float().mean())
        if select.update((1.0 - acc, float(F.cross_entropy(logits.float(), val[1]))), epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log.info(
        "fit: best validation accuracy %.3f at epoch %d of %d run (at most %d)",
        1.0 - select.best[0],
        select.best_epoch + 1,
        ran,
        epochs,
    )
    model.load_state_dict(best_state)
    return model.eval()
