"""One WGAN-GP training iteration (paper, Sec. III; Gulrajani et al. 2017) and its plumbing.

`GanStep` is the only implementation of the iteration: `task=anonymizer`, `task=counterfactual`
and `experiments/bench_gan_step.py` all call it, with their own fake-making and loss functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ppgan.data import ImageData
from ppgan.engine.context import epoch_generator
from ppgan.engine.speed import memory_format_of, to_memory_format
from ppgan.errors import PpganError
from ppgan.losses.adversarial import gradient_penalty
from ppgan.losses.combine import weighted_sum
from ppgan.losses.generator import Judges, Objective, generator_terms
from ppgan.models.vae import reparameterize

# The frozen judges each objective variant cannot do without.
REQUIRED_JUDGES = {
    "mir": ("disease", "identity"),
    "sir": ("disease", "siamese"),
    "rid": ("disease",),
}


def train_stream(
    data: ImageData,
    batch_size: int,
    seed: int,
    epoch: int,
    part: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[dict]:
    """Endless shuffled training batches for one epoch, a function of (seed, epoch) only.

    An "epoch" of a GAN loop is `len(train) // batch_size` iterations, each of which draws
    `n_critic + n_gen` batches, so the stream makes as many passes over the data as it needs.
    `batch_size` must not exceed the training split (see `engine.fit_batch_size`): with the last
    incomplete batch dropped, a pass would otherwise yield nothing and the stream never end.
    `part` keeps one rank's part of each global batch (data-parallel training).
    """
    if batch_size > len(data.indices("train")):
        raise ValueError(f"batch_size={batch_size} exceeds the training split")
    n_pass = 0
    while True:
        gen = epoch_generator(seed, epoch, data.device, stream="train", n_pass=n_pass)
        yield from data.batches(
            "train", batch_size, shuffle=True, generator=gen, drop_last=True, part=part
        )
        n_pass += 1


def require_bf16(amp_dtype: torch.dtype | None) -> None:
    """The AMP policy of the GAN loops: fp32 or bf16 autocast. fp16 needs a loss scaler, which the
    gradient penalty's double backward breaks."""
    if amp_dtype == torch.float16:
        raise PpganError("trainer.amp_dtype=float16: the gradient penalty needs bfloat16 autocast")


def reference_embeddings(
    siamese: nn.Module, data: ImageData, gen: torch.Generator, bs: int
) -> Tensor:
    """PP-SIR: the siamese embedding of one random training image of every identity [n_ids, D]."""
    idx = data.indices("train")
    ids = data.ids[idx]
    noise = torch.rand(len(idx), generator=gen, device=gen.device).to(idx.device)
    # Per identity, the image with the largest random key: one uniform draw per identity.
    key = ids.double() * 2 + noise.double()
    order = torch.argsort(key)
    last = torch.ones_like(ids[order], dtype=torch.bool)
    last[:-1] = ids[order][1:] != ids[order][:-1]
    pick = idx[order][last]  # sorted by identity
    with torch.no_grad():
        return torch.cat([siamese(b["images"]) for b in data.batches(pick, bs)]).float()


# How the critic phase updates the critic: `combined` = one step on the WGAN-GP loss (ppgan, and
# Gulrajani et al.); `separate` = the original code's three optimizer steps per round, on the real
# batch, the fake batch and the penalty (README, "Deviations"), kept only as the benchmark's
# reference: experiments/bench_gan_step.py times ppgan against that structure.
CRITIC_UPDATES = ("combined", "separate")


def has_batch_coupling(net: nn.Module) -> bool:
    """Whether a sample's output depends on the rest of its batch (batch statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())


def critic_scores(
    critic: nn.Module, real: Tensor, fake: Tensor, one_forward: bool | None = None
) -> tuple[Tensor, Tensor]:
    """critic(real), critic(fake) [N] each.

    `one_forward` (default: on CUDA) scores both batches in one forward over cat(real, fake):
    fewer, larger kernels, and the same function where the critic has no batch statistics
    (dropout draws from the same distribution). On the CPU it measured no faster, and two forwards
    keep the CPU's numbers bit for bit (tests/test_pinned_losses.py).
    """
    if one_forward is None:
        one_forward = real.is_cuda
    if one_forward and not has_batch_coupling(critic):
        return critic(torch.cat([real, fake])).split([len(real), len(fake)])
    d_fake = critic(fake)  # fake first: the order the random draws (dropout) were pinned in
    return critic(real), d_fake


def critic_phase(
    critic: nn.Module,
    opt_c: torch.optim.Optimizer,
    stream: Iterator[dict],
    fake_of: Callable[[dict], Tensor],
    n_steps: int,
    gp_weight: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    gp_every: int = 1,
    first_step: int = 0,
    updates: str = "combined",
) -> dict[str, Tensor]:
    """`n_steps` critic steps on the combined WGAN-GP loss, each on a fresh real batch, the fake
    batch made by `fake_of(batch)` under no_grad. Leaves the critic frozen for the generator phase.

    Lazy regularisation (Karras et al. 2020, StyleGAN2): with `gp_every` = k > 1 the penalty is
    computed only on critic steps whose index (counted from `first_step`) is a multiple of k, with
    weight k·λ, so its expected weight per step stays λ; k = 1 is the paper's WGAN-GP.

    Returns:
        The last step's terms (`wasserstein`, `loss`) and the phase's latest `gp`, if any.
    """
    if updates not in CRITIC_UPDATES:
        raise ValueError(f"critic updates {updates!r}: choose from {CRITIC_UPDATES}")
    critic.requires_grad_(True)
    gp = None
    for i in range(n_steps):
        b = next(stream)
        with torch.no_grad(), autocast():
            fake = fake_of(b)
        real, fake = b["images"], fake.float()
        if updates == "separate":
            terms = _separate_updates(critic, opt_c, real, fake, gp_weight, autocast)
            continue
        with_gp = (first_step + i) % gp_every == 0
        with autocast():
            d_real, d_fake = critic_scores(critic, real, fake)
            terms = {"wasserstein": d_fake.mean() - d_real.mean()}
            if with_gp:
                gp = gradient_penalty(critic, real, fake)
        terms["loss"] = terms["wasserstein"]
        if with_gp:
            terms["loss"] = terms["loss"] + gp_every * gp_weight * gp
        opt_c.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_c.step()
    critic.requires_grad_(False)  # the generator's gradients must not train the critic
    if gp is not None and updates == "combined":
        terms["gp"] = gp  # the phase's latest penalty (a lazy one may skip the last step)
    return terms


def _separate_updates(critic, opt_c, real, fake, gp_weight, autocast) -> dict[str, Tensor]:
    """The original code's critic round: three optimizer steps, on −E[D(real)], on E[D(fake)]
    and on λ·penalty, each with the critic as the previous step left it."""

    def update(loss: Tensor) -> None:
        opt_c.zero_grad(set_to_none=True)
        loss.backward()
        opt_c.step()

    with autocast():
        d_real = critic(real).mean()
    update(-d_real)
    with autocast():
        d_fake = critic(fake).mean()
    update(d_fake)
    with autocast():
        gp = gradient_penalty(critic, real, fake)
    update(gp_weight * gp)
    wasserstein = (d_fake - d_real).detach()
    return {"wasserstein": wasserstein, "gp": gp.detach(), "loss": wasserstein + gp_weight * gp}


@dataclass
class GanStep:
    """One iteration: `n_critic` critic steps, then `n_gen` generator steps.

    Attributes:
        fake_of: batch -> the generator's output for the critic phase (called under no_grad).
        terms_of: batch -> the generator's named loss terms (called under autocast), combined
            with `weights` (a term without a weight is an error, see `weighted_sum`).
        prefix: TensorBoard prefix of the generator's terms (`gen`, `cf`).
        adversary: optional batch -> terms; one update of an in-loop adversary (PP-RID's
            adaptive identity attacker), run between the critic and the generator phases.
    """

    critic: nn.Module
    opt_c: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    fake_of: Callable[[dict], Tensor]
    terms_of: Callable[[dict], dict[str, Tensor]]
    weights: Mapping[str, float]
    n_critic: int
    n_gen: int
    gp_weight: float
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    prefix: str = "gen"
    adversary: Callable[[dict], dict[str, Tensor]] | None = None
    gp_every: int = 1
    critic_updates: str = "combined"  # `separate`: the original's structure (benchmark reference)
    critic_steps: int = field(default=0, init=False)  # counts critic steps for `gp_every`
    last_gp: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("n_critic", "n_gen", "gp_every"):
            if int(getattr(self, name)) < 1:
                raise PpganError(f"objective.{name}={getattr(self, name)}: must be >= 1")

    def __call__(self, stream: Iterator[dict]) -> dict[str, Tensor]:
        """Run one iteration on batches of `stream`; returns its terms, detached, on the device."""
        terms_c = critic_phase(
            self.critic,
            self.opt_c,
            stream,
            self.fake_of,
            self.n_critic,
            self.gp_weight,
            self.autocast,
            gp_every=self.gp_every,
            first_step=self.critic_steps,
            updates=self.critic_updates,
        )
        self.critic_steps += self.n_critic
        # With a lazy penalty the last critic step may have skipped it: log the latest value.
        # Detached: kept across iterations, it must not keep that step's autograd graph alive.
        if "gp" in terms_c:
            self.last_gp = terms_c["gp"].detach()
        terms_c["gp"] = self.last_gp
        terms_a = self.adversary(next(stream)) if self.adversary is not None else {}
        for _ in range(self.n_gen):
            b = next(stream)
            with self.autocast():
                terms_g = self.terms_of(b)
            loss_g = weighted_sum(terms_g, self.weights)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
        logged = {f"critic/{k}": v for k, v in terms_c.items()}
        logged |= {f"adversary/{k}": v for k, v in terms_a.items()}
        logged |= {f"{self.prefix}/{k}": v for k, v in terms_g.items()}
        logged[f"{self.prefix}/total"] = loss_g
        return {k: v.detach().float() for k, v in logged.items()}


def run_epoch(
    step: GanStep, stream: Iterator[dict], iters: int, after: Callable[[], None] | None = None
) -> dict[str, Tensor]:
    """`iters` iterations, each followed by `after()` if given (the release averages' update);
    the per-tag sums stay on the device (the host reads them once an epoch, in
    `RunContext.log_means`, not once a step)."""
    sums: dict[str, Tensor] = {}
    for _ in range(iters):
        for k, v in step(stream).items():
            sums[k] = sums.get(k, 0) + v
        if after is not None:
            after()
    return sums


def prepare_objective(
    objective_cfg: Mapping[str, Any], critic: nn.Module, judges: Judges
) -> tuple[dict, Objective]:
    """The objective config as a plain dict and its `Objective`; the frozen judges put in the
    trained networks' memory layout (`trainer.channels_last`), since they see the generator's
    output (or every judge convolution would convert its input first)."""
    if isinstance(objective_cfg, DictConfig):
        objective_cfg = OmegaConf.to_container(objective_cfg, resolve=True)
    fmt = memory_format_of(critic)
    for net in (judges.disease, judges.identity, judges.siamese):
        if net is not None:
            to_memory_format(net, fmt)
    return dict(objective_cfg), Objective.from_config(objective_cfg)


def anonymizer_step(
    enc: nn.Module,
    dec: nn.Module,
    critic: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_c: torch.optim.Optimizer,
    judges: Judges,
    objective_cfg: Mapping[str, Any],
    refs: Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> GanStep:
    """The PP-MIR / PP-SIR iteration (`task=anonymizer`; timed by experiments/bench_gan_step.py).

    The critic sees decoded samples z ~ N(mu, sigma^2) of real batches; the generator (encoder and
    decoder) minimises the objective's weighted terms on its own fresh batches.
    """
    objective_cfg, objective = prepare_objective(objective_cfg, critic, judges)

    def terms_of(b: dict) -> dict[str, Tensor]:
        mu, logvar = enc(b["images"], b["masks"])
        fake = dec(reparameterize(mu, logvar))
        return generator_terms(
            b["images"], b["masks"], fake, mu, logvar, critic, judges, objective, refs
        )

    return GanStep(
        critic=critic,
        opt_c=opt_c,
        opt_g=opt_g,
        fake_of=lambda b: dec(reparameterize(*enc(b["images"], b["masks"]))),
        terms_of=terms_of,
        weights=objective.weights,
        n_critic=int(objective_cfg["n_critic"]),
        n_gen=int(objective_cfg["n_gen"]),
        gp_weight=float(objective_cfg["gp_weight"]),
        autocast=autocast,
        gp_every=int(objective_cfg.get("gp_every", 1)),
    )
