"""One WGAN-GP training iteration (paper, Sec. III; Gulrajani et al. 2017) and its plumbing.

`GanStep` is the only implementation of the iteration: `task=anonymizer`, `task=counterfactual`
and `experiments/bench_gan_step.py` all call it, with their own fake-making and loss functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ppgan.data import ImageData
from ppgan.engine.context import epoch_generator
from ppgan.errors import PpganError
from ppgan.losses.adversarial import critic_terms
from ppgan.losses.combine import weighted_sum
from ppgan.losses.generator import Judges, Objective, generator_terms
from ppgan.models.vae import reparameterize

# The frozen judges each objective variant cannot do without.
REQUIRED_JUDGES = {"mir": ("disease", "identity"), "sir": ("disease", "siamese")}


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


def critic_phase(
    critic: nn.Module,
    opt_c: torch.optim.Optimizer,
    stream: Iterator[dict],
    fake_of: Callable[[dict], Tensor],
    n_steps: int,
    gp_weight: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, Tensor]:
    """`n_steps` critic steps on the combined WGAN-GP loss, each on a fresh real batch, the fake
    batch made by `fake_of(batch)` under no_grad. Leaves the critic frozen for the generator phase.

    Returns:
        The last step's terms (`wasserstein`, `gp`, `loss`), for logging.
    """
    critic.requires_grad_(True)
    for _ in range(n_steps):
        b = next(stream)
        with torch.no_grad(), autocast():
            fake = fake_of(b)
        with autocast():
            terms = critic_terms(critic, b["images"], fake.float())
        terms["loss"] = terms["wasserstein"] + gp_weight * terms["gp"]
        opt_c.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_c.step()
    critic.requires_grad_(False)  # the generator's gradients must not train the critic
    return terms


@dataclass
class GanStep:
    """One iteration: `n_critic` critic steps, then `n_gen` generator steps.

    Attributes:
        fake_of: batch -> the generator's output for the critic phase (called under no_grad).
        terms_of: batch -> the generator's named loss terms (called under autocast), combined
            with `weights` (a term without a weight is an error, see `weighted_sum`).
        prefix: TensorBoard prefix of the generator's terms (`gen`, `cf`).
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

    def __post_init__(self) -> None:
        for name in ("n_critic", "n_gen"):
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
        )
        for _ in range(self.n_gen):
            b = next(stream)
            with self.autocast():
                terms_g = self.terms_of(b)
            loss_g = weighted_sum(terms_g, self.weights)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
        logged = {f"critic/{k}": v for k, v in terms_c.items()}
        logged |= {f"{self.prefix}/{k}": v for k, v in terms_g.items()}
        logged[f"{self.prefix}/total"] = loss_g
        return {k: v.detach().float() for k, v in logged.items()}


def run_epoch(step: GanStep, stream: Iterator[dict], iters: int) -> dict[str, Tensor]:
    """`iters` iterations; the per-tag sums stay on the device (the host reads them once an
    epoch, in `RunContext.log_means`, not once a step)."""
    sums: dict[str, Tensor] = {}
    for _ in range(iters):
        for k, v in step(stream).items():
            sums[k] = sums.get(k, 0) + v
    return sums


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
    if isinstance(objective_cfg, DictConfig):
        objective_cfg = OmegaConf.to_container(objective_cfg, resolve=True)
    objective = Objective.from_config(objective_cfg)

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
    )
