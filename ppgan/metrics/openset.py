"""Open-set identity attacks: link anonymized images of people the attacker never trained on to
other, original images of the same people.

With a subject-disjoint split, no test subject is among the training identities, so closed-set
attacks (an identity classifier, ranking the training images) score 0 on the original images and
on any anonymization alike and measure nothing. An attacker who holds a gallery of other photos of
the test subjects (e.g. from another hospital visit) can still try to link: rank the gallery by
distance to each anonymized image (identification) or decide same/other person per pair
(verification). Each image's own original is left out of its gallery: linking an image to its
own source is a different and easier question.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ppgan.metrics.verification import verification_metrics


def openset_linkage(
    dist: Tensor,
    probe_ids: Tensor,
    gallery_ids: Tensor,
    exclude: Tensor | None = None,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """Rank-k identification and verification AUC of probes against a gallery, with chance.

    An identity's distance to a probe is that of its nearest gallery image; tied identities are
    broken at random (in expectation), so a method whose outputs are all alike scores chance,
    not a perfect rank. Probes whose identity has no usable gallery image are left out.

    Args:
        dist: probe-to-gallery distances [Q, G] (lower = more alike).
        probe_ids: [Q]; gallery_ids: [G].
        exclude: [Q, G] bool, pairs left out (each probe's own original).

    Returns:
        `rank<k>` and `chance_rank<k>` for each k, `auc` (chance 0.5), `n_probes`; NaN when no
        probe has a gallery image of its identity.
    """
    d = dist.float().clone()
    if exclude is not None:
        d[exclude] = float("inf")
    same = probe_ids[:, None] == gallery_ids[None, :]  # [Q, G]
    usable = (same & torch.isfinite(d)).any(1)
    out: dict[str, float] = {"n_probes": float(usable.sum())}
    if not usable.any():
        nan = float("nan")
        return out | {"auc": nan} | {f"{p}rank{k}": nan for k in ks for p in ("", "chance_")}
    d, same, probe_ids = d[usable], same[usable], probe_ids[usable]
    ids, inverse = torch.unique(gallery_ids, return_inverse=True)
    per_id = d.new_full((len(d), len(ids)), float("inf"))
    per_id = per_id.scatter_reduce(1, inverse.expand_as(d), d, reduce="amin")  # [Q, I]
    own = torch.searchsorted(ids, probe_ids)
    d_own = per_id.gather(1, own[:, None])  # [Q, 1]
    closer = (per_id < d_own).sum(1).float()
    ties = (per_id == d_own).sum(1).float() - 1  # other identities exactly as near
    candidates = torch.isfinite(per_id).sum(1).float()
    for k in ks:
        # P(own identity among the first k) when ties are ordered at random.
        out[f"rank{k}"] = float(((k - closer) / (ties + 1)).clamp(0, 1).mean())
        out[f"chance_rank{k}"] = float((k / candidates).clamp(max=1).mean())
    finite = torch.isfinite(d)
    out["auc"] = verification_metrics(d[same & finite], d[~same & finite])["auc"]
    return out


def openset_attacks(
    spaces: Mapping[str, Callable[[Tensor], Tensor]],
    anon_test: Tensor,
    orig_test: Tensor,
    test_ids: Tensor,
    train_ids: Tensor,
) -> dict[str, float]:
    """`openset_linkage` of the anonymized test images whose subject is absent from training,
    against the original test images, in each embedding space.

    Args:
        spaces: name -> images [N, C, H, W] to embeddings [N, D] (e.g. a siamese network).
        anon_test, orig_test: anonymized and original test images, in the same order [N, ...].
        test_ids: [N]; train_ids: identities of the training split.

    Returns:
        `privacy/openset_<space>_<metric>` plus the shared `privacy/openset_chance_rank<k>` and
        `privacy/openset_n_probes`; {} when every test subject is a training identity.
    """
    probe = ~torch.isin(test_ids, train_ids)
    if not probe.any():
        return {}
    own = torch.eye(len(test_ids), dtype=torch.bool, device=test_ids.device)[probe]  # [Q, N]
    m = {}
    for space, embed in spaces.items():
        d = torch.cdist(embed(anon_test[probe]), embed(orig_test))  # [Q, N]
        for k, v in openset_linkage(d, test_ids[probe], test_ids, exclude=own).items():
            key = k if k.startswith(("chance", "n_")) else f"{space}_{k}"
            m[f"privacy/openset_{key}"] = v
    return m
