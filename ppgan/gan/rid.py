"""PP-RID's training iteration: random identity per image, against an adaptive adversary.

PP-MIR and PP-SIR (paper, Sec. III) rewrite an image until *frozen* recognisers fail on it; the
generator is deterministic in the image, so every output of one person keeps that person's
consistent look, and an attacker who trains on the outputs learns it back. PP-RID (README,
"PP-RID") removes the consistency instead:

* the latent is split into a content part and an identity code (`Encoder(identity_dim > 0)`);
  training reconstructs each image from its own posterior (a VAE: the decoder learns to render a
  person from a code), while the *release* image decodes the content with a code drawn from the
  prior -- a new random person per image, as DeepPrivacy2 draws a new face per detection;
* an identity classifier is trained during GAN training on the release images with the true
  identities (the adaptive attacker inside the loop, as PriCheXy-Net's retrained verifier
  argues), and the generator pushes its prediction to uniform -- so identity left in the content
  part is found and removed;
* optionally (`loss.latent`), identity is removed from the content part of the release latent
  with no adversary: the share of its variance, beyond the disease, that identity explains
  over the whole training set (`identity_explained_variance`, from a bank of every training
  image's latest content, `LatentBank`) is pushed down. The release image depends on the
  person only through that content (the code is drawn independently of anyone), so identity
  removed there cannot be rendered back. An adversary pushed to uniform (the `adaptive` term,
  or one on the latent) is evaded by moving the identities around rather than removing them:
  in a toy test (tests/test_anonymizer.py) a fresh probe still read identity almost perfectly;
* the WGAN critic judges the release images (realism), the frozen disease network keeps the
  diagnosis, and the code must be recoverable from the release image (no collapse to one
  picture per class).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgan.errors import PpganError
from ppgan.gan.step import GanStep, prepare_objective
from ppgan.losses.generator import Judges, random_identity_terms
from ppgan.models.bank import LatentBank
from ppgan.models.vae import reparameterize


def shift_augment(x: Tensor, max_shift: int) -> Tensor:
    """Random translations by up to `max_shift` pixels (reflect padding), per image: the in-loop
    attacker must not learn the generator's pixel grid instead of the person."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, [max_shift] * 4, mode="reflect")
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), device=x.device)).unbind(0)
    rows = (torch.arange(h, device=x.device)[None] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None] + dx[:, None])[:, None, None, :]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return pad[idx_n, idx_c, rows, cols]


def identity_support(ids: Tensor, dis: Tensor, n_ids: int, n_classes: int) -> Tensor:
    """[n_classes, n_ids] float 0/1: identity i has a (training) image of disease class c."""
    support = torch.zeros(n_classes, n_ids, device=ids.device)
    support[dis, ids] = 1.0
    return support


def random_identity_step(
    enc: nn.Module,
    dec: nn.Module,
    critic: nn.Module,
    adversary: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_c: torch.optim.Optimizer,
    opt_a: torch.optim.Optimizer,
    judges: Judges,
    objective_cfg: Mapping[str, Any],
    id_support: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    bank: LatentBank | None = None,
    bank_items: Callable[[], Iterable[dict]] | None = None,
) -> GanStep:
    """The PP-RID iteration (`task=anonymizer objective=pp_rid model=rid_gan`).

    Critic phase on release images (`enc(...)` draws the code), then `n_adversary` updates of
    the in-loop identity adversary on fresh release images, then the generator phase.

    Args:
        id_support: [n_classes, n_ids] 0/1, which identities have training images of each
            disease class (`identity_support`).
        bank: for the `latent` term (required when `loss.latent > 0`): the bank of every
            item's latest content latent, updated by each generator step.
        bank_items: () -> batches of every training item; with `latent_refresh` k > 0 the whole
            bank is re-encoded by the current encoder every k generator steps (an encoder
            forward of the training split, no gradients).
    """
    objective_cfg, objective = prepare_objective(objective_cfg, critic, judges)
    n_adversary = int(objective_cfg.get("n_adversary", 1))
    shift = int(objective_cfg.get("adversary_shift", 0))
    if objective.uses("latent") and bank is None:
        raise PpganError("objective.loss.latent > 0 needs a LatentBank (task=anonymizer builds it)")
    refresh = int(objective_cfg.get("latent_refresh", 0)) if objective.uses("latent") else 0
    if refresh and bank_items is None:
        raise PpganError("objective.latent_refresh > 0 needs the training items to re-encode")
    gen_steps = 0

    @torch.no_grad()
    def refresh_bank() -> None:
        # Contents written during earlier steps came from earlier encoders: the encoder can move
        # each person's contents faster than a stale bank follows, and the statistic then
        # misses identity the current encoder shows (README "PP-RID": without the refresh the
        # bank read 2.7 while the same training images re-encoded read 5.5, floor 1.5).
        enc.eval()
        for items in bank_items():
            with autocast():
                mu = enc.posterior(items["images"], items["masks"])[0]
            bank.update(items["index"], enc.split(mu)[0])
        enc.train()

    def release(b: dict) -> Tensor:
        return dec(enc(b["images"], b["masks"])[0])

    def adversary_update(b: dict) -> dict[str, Tensor]:
        adversary.requires_grad_(True)
        for _ in range(n_adversary):
            with torch.no_grad(), autocast():
                fake = release(b)
            with autocast():
                logits = adversary(shift_augment(fake.float(), shift))
            loss = F.cross_entropy(logits.float(), b["id"])
            opt_a.zero_grad(set_to_none=True)
            loss.backward()
            opt_a.step()
        adversary.requires_grad_(False)  # the generator's gradients must not train it
        acc = (logits.argmax(1) == b["id"]).float().mean()
        return {"ce": loss, "acc": acc}

    def terms_of(b: dict) -> dict[str, Tensor]:
        real, mask = b["images"], b["masks"]
        mu, logvar = enc.posterior(real, mask)
        z = reparameterize(mu, logvar)
        content, _ = enc.split(z)
        code = torch.randn(len(real), enc.identity_dim, device=z.device, dtype=z.dtype)
        # One decoder pass for both: the reconstruction and the release image.
        recon, fake = dec(torch.cat([z, torch.cat([content, code], 1)])).chunk(2)
        # The refresh comes after this step's training-mode encoder pass (whose BatchNorm
        # statistics update it then sees): the order the measured runs used.
        nonlocal gen_steps
        if refresh and gen_steps % refresh == 0:
            refresh_bank()
        gen_steps += 1
        content_mu = None
        if objective.uses("latent"):
            # What is released is the eval-mode posterior mean (no dropout, BatchNorm's running
            # statistics): judge that, with gradients. The training-mode mean carries dropout
            # noise, which inflates the within-person spread the statistic divides by, so
            # identity the release shows could look removed.
            enc.eval()
            content_mu = enc.split(enc.posterior(real, mask)[0])[0]
            enc.train()
        code_of_fake = None
        if objective.uses("code"):
            code_of_fake = enc.split(enc.posterior(fake, mask)[0])[1]
        terms = random_identity_terms(
            real,
            mask,
            recon,
            fake,
            mu,
            logvar,
            code,
            code_of_fake,
            critic,
            judges,
            adversary,
            objective,
            id_support[b["dis"]],
            content=content_mu,
            batch=b,
            bank=bank,
        )
        if content_mu is not None:
            bank.update(b["index"], content_mu)
        return terms

    return GanStep(
        critic=critic,
        opt_c=opt_c,
        opt_g=opt_g,
        fake_of=release,
        terms_of=terms_of,
        weights=objective.weights,
        n_critic=int(objective_cfg["n_critic"]),
        n_gen=int(objective_cfg["n_gen"]),
        gp_weight=float(objective_cfg["gp_weight"]),
        autocast=autocast,
        adversary=adversary_update,
        gp_every=int(objective_cfg.get("gp_every", 1)),
    )
