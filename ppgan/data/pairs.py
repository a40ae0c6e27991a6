"""Pair sampling for the siamese network, drawn from indices (never materialising image pairs)."""

from __future__ import annotations

import torch
from torch import Tensor


def positive_pairs(ids: Tensor) -> Tensor:
    """Every unordered same-identity pair (i < j) of positions in `ids` -> [P, 2]."""
    same = ids[:, None] == ids[None, :]
    return torch.nonzero(torch.triu(same, diagonal=1))


def sample_pairs(
    ids: Tensor,
    generator: torch.Generator,
    max_positive: int = 0,
    neg_ratio: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """One epoch's pairs: every same-identity pair plus `neg_ratio` as many different-identity ones.

    As in the paper's code, about half as many different-identity pairs as same-identity pairs,
    spread over the images. Everything is a function of `generator`, so a seed fixes the pairs.

    Args:
        ids: identity of each candidate image [N] (positions are returned, not dataset indices).
        generator: the epoch's generator (on the same device as `ids`).
        max_positive: sub-sample the positive pairs to at most this many (0 = keep all).
        neg_ratio: number of negative pairs per positive pair.

    Returns:
        pairs [M, 2] of positions into `ids`, and same [M] (1 = same identity), shuffled.
    """
    dev = ids.device
    pos = positive_pairs(ids)
    if max_positive and len(pos) > max_positive:
        pos = pos[torch.randperm(len(pos), generator=generator, device=dev)[:max_positive]]
    n_neg = round(neg_ratio * len(pos))
    first = torch.randint(len(ids), (n_neg,), generator=generator, device=dev)
    second = torch.randint(len(ids), (n_neg,), generator=generator, device=dev)
    # Redraw the partners that share the identity; with >= 2 identities this ends quickly.
    while bool((clash := ids[first] == ids[second]).any()):
        second[clash] = torch.randint(
            len(ids), (int(clash.sum()),), generator=generator, device=dev
        )
    neg = torch.stack([first, second], 1)
    pairs = torch.cat([pos, neg])
    same = torch.cat([torch.ones(len(pos), device=dev), torch.zeros(n_neg, device=dev)])
    order = torch.randperm(len(pairs), generator=generator, device=dev)
    return pairs[order], same[order]
