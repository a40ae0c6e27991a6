"""Privacy terms: make identity recognition fail on the generated image (paper, Sec. III)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def jittered_uniform(n: int, k: int, jitter: bool, device: torch.device | str) -> Tensor:
    """Targets close to uniform over k identities, [n, k].

    As in the original, each entry is drawn in [1/(2k), 2/k] and the row renormalised, so the
    generator is not asked for one exact (and easily detected) distribution.
    """
    if not jitter:
        return torch.full((n, k), 1.0 / k, device=device)
    t = torch.empty(n, k, device=device).uniform_(0.5 / k, 2.0 / k)
    return t / t.sum(1, keepdim=True)


def soft_cross_entropy(target: Tensor, logits: Tensor) -> Tensor:
    """Cross-entropy of `logits` [N, K] against a probability target [N, K], batch mean."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def different_loss(d: Tensor, margin: float) -> Tensor:
    """The contrastive loss with target 'different': mean(max(margin − d, 0)^2) over all entries."""
    return (margin - d).clamp(min=0).pow(2).mean()


def identity_explained_variance(
    z: Tensor,
    ids: Tensor,
    dis: Tensor,
    valid: Tensor,
    n_ids: int,
    n_classes: int,
    ridge: float = 1e-3,
) -> Tensor:
    """How much of a latent's variance, beyond the disease, identity explains: tr(S_w^-1 S_b)
    of the latents with their disease-class means removed, S_b the scatter of the per-identity
    means and S_w the (detached) covariance, over the rows `valid` of `z` [N, D].

    This is what a linear probe reads (the Mahalanobis distances between the identities'
    means): D when identity determines every direction, about D * n_ids / N (the sampling floor)
    when the latent is independent of identity given the disease. Its value is scale-free
    (rescaling the latent changes nothing); its gradient is not, since S_w is detached: it also
    pulls the latent toward the class means, the harder the smaller the latent (a known
    limitation). `ridge` (times the mean variance) keeps S_w invertible.
    Computed without host syncs (`cholesky_ex`).
    """
    # fp32 whatever the caller's autocast: a bf16 covariance can lose positive definiteness.
    with torch.autocast(z.device.type, enabled=False):
        return _explained_variance(
            z.float(), valid.float()[:, None], ids, dis, n_ids, n_classes, ridge
        )


def _explained_variance(
    z: Tensor, w: Tensor, ids: Tensor, dis: Tensor, n_ids: int, n_classes: int, ridge: float
) -> Tensor:
    """`identity_explained_variance` in fp32: z [N, D], w [N, 1] the 0/1 weights of valid rows."""
    count = w.sum().clamp(min=1)

    def group_means(v: Tensor, group: Tensor, k: int) -> tuple[Tensor, Tensor]:
        sums = v.new_zeros(k, v.shape[1]).index_add(0, group, v * w)
        counts = v.new_zeros(k).index_add(0, group, w[:, 0])
        return sums / counts.clamp(min=1)[:, None], counts

    class_means, _ = group_means(z, dis, n_classes)
    r = (z - class_means[dis]) * w
    cov = (r.T @ r / count).detach()
    eye = torch.eye(len(cov), device=z.device)
    cov = cov + (ridge * cov.diagonal().mean() + 1e-12) * eye  # 1e-12: collapsed content
    chol, _ = torch.linalg.cholesky_ex(cov)
    id_means, id_counts = group_means(r, ids, n_ids)
    # sum_i (n_i / N) m_i^T S_w^-1 m_i
    white = torch.linalg.solve_triangular(chol, id_means.T, upper=False)  # [D, n_ids]
    return (white.pow(2).sum(0) * id_counts).sum() / count
