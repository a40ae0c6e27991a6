"""A compact supervised loop on in-memory tensors, for the networks `task=evaluate` trains itself
(unseen and adaptive attackers, the independent disease network)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgan.engine.context import epoch_generator, require_finite
from ppgan.engine.inference import batched, collect


def fit_classifier(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress=None,
) -> nn.Module:
    """Train with Adam and cross-entropy; returns the model at its best validation accuracy.

    Args:
        train, val: (images [N, C, H, W], labels [N]) on the model's device.
        seed: fixes the initialisation-independent randomness (batch order, dropout).
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = train
    best_acc, best_state = -1.0, None
    epochs_iter = progress(range(epochs), desc="fit") if progress else range(epochs)
    for epoch in epochs_iter:
        model.train()
        perm = torch.randperm(
            len(x), generator=epoch_generator(seed, epoch, x.device), device=x.device
        )
        loss_sum = torch.zeros((), device=x.device)
        for start in range(0, len(x), batch_size):
            sel = perm[start : start + batch_size]
            if len(sel) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(x[sel]), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        require_finite(loss_sum, "attacker training loss")
        acc = float((collect(model, batched(val[0], 256)).argmax(1) == val[1]).float().mean())
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()
