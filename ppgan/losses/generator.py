"""The privacy-preserving generator's objective: named terms, weighted by config (paper, Sec. III).

Every term is a mean over the batch; `objective.loss` gives the weights and a term with weight 0 is
not computed at all. Pure: tensors and modules in, tensors out (no data or engine imports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ppgan.losses.adversarial import generator_adversarial
from ppgan.losses.privacy import (
    different_loss,
    identity_explained_variance,
    jittered_uniform,
    soft_cross_entropy,
)
from ppgan.losses.utility import disease_preservation, disease_terms, roi_reconstruction
from ppgan.losses.vae import kl_divergence
from ppgan.models.bank import LatentBank
from ppgan.models.siamese import pair_distance


class Judges(Protocol):
    """The frozen networks that judge generated images (see `ppgan.engine.judges`)."""

    disease: nn.Module
    identity: nn.Module | None
    siamese: nn.Module | None


@dataclass(frozen=True)
class Objective:
    """What PP-MIR / PP-SIR's generator minimises, built once from the `objective` config.

    Attributes:
        variant: `mir` (identity classifier, Sec. III-A) or `sir` (siamese network, Sec. III-B).
        weights: loss term -> weight; a zero weight switches the term off (it is not computed).
        roi_rec_reduction: `mean` (per element) or `sum` (the original's Σ over batch and pixels).
        jitter: per-sample jitter of the uniform identity target, as in the original.
        margin: PP-SIR's contrastive margin, in the siamese network's distance units.
    """

    variant: str
    weights: dict[str, float] = field(default_factory=dict)
    roi_rec_reduction: str = "mean"
    jitter: bool = True
    margin: float = 1.0

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Objective:
        return cls(
            variant=node["variant"],
            weights={k: float(v) for k, v in node["loss"].items()},
            roi_rec_reduction=node.get("roi_rec_reduction", "mean"),
            jitter=bool(node.get("jitter", True)),
            margin=float(1.0 if node.get("margin") is None else node["margin"]),
        )

    def uses(self, term: str) -> bool:
        return bool(self.weights.get(term))


def privacy_terms(
    fake: Tensor,
    real: Tensor,
    judges: Judges,
    variant: str,
    weights: Mapping[str, float],
    margin: float,
    jitter: bool,
    refs: Tensor | None = None,
) -> dict[str, Tensor]:
    """`identity` (and for PP-SIR `identity_self`): identity recognition must fail on `fake`.

    PP-MIR: CE between a jittered uniform target and the identity classifier's prediction.
    PP-SIR: 'different' contrastive loss between `fake` and one reference embedding of every
    identity (`refs` [n_ids, D]), and, weighted separately, between `fake` and its own original.
    """
    terms: dict[str, Tensor] = {}
    if variant == "mir":
        if weights.get("identity"):
            logits = judges.identity(fake)
            target = jittered_uniform(len(fake), logits.shape[1], jitter, fake.device)
            terms["identity"] = soft_cross_entropy(target, logits)
        return terms
    emb = judges.siamese(fake).float()
    if weights.get("identity"):
        terms["identity"] = different_loss(torch.cdist(emb, refs), margin)
    if weights.get("identity_self"):
        with torch.no_grad():
            emb_real = judges.siamese(real).float()
        terms["identity_self"] = different_loss(pair_distance(emb, emb_real), margin)
    return terms


def generator_terms(
    real: Tensor,
    mask: Tensor,
    fake: Tensor,
    mu: Tensor,
    logvar: Tensor,
    critic: nn.Module,
    judges: Judges,
    objective: Objective,
    refs: Tensor | None = None,
) -> dict[str, Tensor]:
    """All generator terms that `objective` uses (non-zero weight), unweighted."""
    terms: dict[str, Tensor] = {}
    if objective.uses("kl"):
        terms["kl"] = kl_divergence(mu.float(), logvar.float())
    if objective.uses("adv"):
        terms["adv"] = generator_adversarial(critic, fake)
    if objective.uses("disease"):
        with torch.no_grad():
            logits_real = judges.disease(real)
        terms["disease"] = disease_preservation(logits_real, judges.disease(fake))
    if objective.uses("roi_rec"):
        terms["roi_rec"] = roi_reconstruction(real, fake, mask, objective.roi_rec_reduction)
    terms.update(
        privacy_terms(
            fake,
            real,
            judges,
            objective.variant,
            objective.weights,
            objective.margin,
            objective.jitter,
            refs,
        )
    )
    return terms


def random_identity_terms(
    real: Tensor,
    mask: Tensor,
    recon: Tensor,
    fake: Tensor,
    mu: Tensor,
    logvar: Tensor,
    code: Tensor,
    code_of_fake: Tensor | None,
    critic: nn.Module,
    judges: Judges,
    adversary: nn.Module,
    objective: Objective,
    id_support: Tensor,
    content: Tensor | None = None,
    batch: Mapping[str, Tensor] | None = None,
    bank: LatentBank | None = None,
) -> dict[str, Tensor]:
    """PP-RID's generator terms (README, "PP-RID"), unweighted; zero-weight terms are skipped.

    Args:
        recon: the decoding of the image's own posterior sample (identity code included).
        fake: the release image, decoded from the content and a prior draw `code`.
        code_of_fake: the encoder's identity code of `fake` (for the `code` term), or None.
        adversary: the identity classifier trained *during* GAN training on the release images
            (the adaptive attacker inside the loop); its parameters are not updated here.
        id_support: [N, n_ids] 0/1, the identities each image's release may be mistaken for:
            those with training images of the same disease class. The release shows the disease,
            so the best an anonymizer can do is `chance | disease` -- uniform over this set;
            asking for uniform over *all* identities would ask it to hide the diagnosis too.
        content, batch, bank: for the `latent` term: the content part of the release latent
            (the posterior mean) of `batch` (its item numbers `index`), and the bank of every
            training image's latest content.

    Terms: `kl` (both parts to N(0, I)), `rec` (whole-image reconstruction from the posterior:
    keeps the autoencoder realistic and teaches the decoder to render an identity from the code),
    `adv` (WGAN realism of the release image), `disease` (the frozen disease network's decision
    kept), `identity` (frozen identity classifier pushed to uniform, as PP-MIR), `adaptive` (the
    in-loop adversary pushed to uniform), `latent` (the share of the release latent's content
    variance, beyond the disease, that identity explains over the training set:
    `identity_explained_variance`), `roi_rec` (release image vs original inside the ROI),
    `code` (the identity code is recoverable from the release image, so the decoder cannot
    ignore it: distinct draws give distinct people), `disease_feat` (the disease network's
    penultimate features of the release match the original's: `disease_terms`).
    """
    w = objective.weights
    terms: dict[str, Tensor] = {}
    if w.get("kl"):
        terms["kl"] = kl_divergence(mu.float(), logvar.float())
    if w.get("rec"):
        terms["rec"] = (real - recon).float().pow(2).mean()
    if w.get("adv"):
        terms["adv"] = generator_adversarial(critic, fake)
    if w.get("disease") or w.get("disease_feat"):
        terms.update(
            disease_terms(
                judges.disease, real, fake, bool(w.get("disease")), bool(w.get("disease_feat"))
            )
        )
    if w.get("identity") or w.get("adaptive"):
        n = len(id_support)
        target = jittered_uniform(n, id_support.shape[1], objective.jitter, id_support.device)
        target = target * id_support
        target = target / target.sum(1, keepdim=True)
    if w.get("identity"):
        terms["identity"] = soft_cross_entropy(target, judges.identity(fake))
    if w.get("adaptive"):
        terms["adaptive"] = soft_cross_entropy(target, adversary(fake))
    if w.get("latent") and content is not None:
        latents, valid = bank.with_batch(batch["index"], content)
        terms["latent"] = identity_explained_variance(
            latents, bank.ids, bank.dis, valid, bank.n_ids, bank.n_classes
        )
    if w.get("roi_rec"):
        terms["roi_rec"] = roi_reconstruction(real, fake, mask, objective.roi_rec_reduction)
    if w.get("code") and code_of_fake is not None:
        terms["code"] = (code_of_fake.float() - code.float()).pow(2).mean()
    return terms
