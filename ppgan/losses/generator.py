"""The privacy-preserving generator's objective: named terms, weighted by config (paper, Sec. III).

Every term is a mean over the batch; `model.loss` gives the weights and a term with weight 0 is not
computed at all.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ppgan.engine.judges import Judges
from ppgan.losses.adversarial import generator_adversarial
from ppgan.losses.privacy import different_loss, jittered_uniform, soft_cross_entropy
from ppgan.losses.utility import disease_preservation, roi_reconstruction
from ppgan.losses.vae import kl_divergence
from ppgan.models.siamese import pair_distance


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
    model_cfg: Mapping,
    refs: Tensor | None = None,
) -> dict[str, Tensor]:
    """All generator terms with a non-zero weight in `model_cfg.loss`."""
    w = model_cfg["loss"]
    terms: dict[str, Tensor] = {}
    if w.get("kl"):
        terms["kl"] = kl_divergence(mu.float(), logvar.float())
    if w.get("adv"):
        terms["adv"] = generator_adversarial(critic, fake)
    if w.get("disease"):
        with torch.no_grad():
            logits_real = judges.disease(real)
        terms["disease"] = disease_preservation(logits_real, judges.disease(fake))
    if w.get("roi_rec"):
        terms["roi_rec"] = roi_reconstruction(real, fake, mask, model_cfg["roi_rec_reduction"])
    terms.update(
        privacy_terms(
            fake,
            real,
            judges,
            model_cfg["variant"],
            w,
            model_cfg["margin"],
            model_cfg["jitter"],
            refs,
        )
    )
    return terms
