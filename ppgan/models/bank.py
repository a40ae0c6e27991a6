"""A memory of the latest latent of every item (PP-RID's `latent` term, README "PP-RID")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentBank(nn.Module):
    """Row i holds the latest latent computed for data set item i (detached), with the item's
    identity and disease; `valid[i]` says whether it holds one yet. A statistic of the whole
    training set, with the current batch's rows substituted (`with_batch`), has every image of
    each person behind it instead of the one or two of the same person a batch of 32 holds:
    batch-only estimates were too noisy to remove identity in the toy tests
    (tests/test_anonymizer.py).

    Buffers, not parameters: saved in the checkpoint, so a resumed run continues with the bank
    it stopped with.

    Args:
        n_items: number of items of the data set (rows, by item number).
        dim: size of a latent.
        n_ids, n_classes: number of identities and disease classes.
    """

    def __init__(self, n_items: int, dim: int, n_ids: int, n_classes: int):
        super().__init__()
        self.n_ids, self.n_classes = n_ids, n_classes
        self.register_buffer("latents", torch.zeros(n_items, dim))
        self.register_buffer("valid", torch.zeros(n_items, dtype=torch.bool))
        self.register_buffer("ids", torch.zeros(n_items, dtype=torch.long))
        self.register_buffer("dis", torch.zeros(n_items, dtype=torch.long))

    @torch.no_grad()
    def label(self, ids: Tensor, dis: Tensor) -> LatentBank:
        """Set every row's identity and disease (the data set's `id` and `dis`, by item)."""
        self.ids.copy_(ids), self.dis.copy_(dis)
        return self

    def with_batch(self, index: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(latents, valid) with rows `index` replaced by `z`, through which gradients flow."""
        latents = self.latents.index_put((index,), z.float())
        valid = self.valid.index_put((index,), torch.ones_like(index, dtype=torch.bool))
        return latents, valid

    @torch.no_grad()
    def update(self, index: Tensor, z: Tensor) -> None:
        self.latents[index] = z.detach().float()
        self.valid[index] = True
