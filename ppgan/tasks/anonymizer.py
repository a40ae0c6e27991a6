"""Task `anonymizer`: train the privacy-preserving VAE-GAN, PP-MIR or PP-SIR (paper, Sec. III).

Per iteration: `n_critic` critic steps on the combined WGAN-GP loss with the fake batch generated
under no_grad, then `n_gen` generator (encoder + decoder) steps with the critic frozen. The
disease, identity and siamese networks are pre-trained and frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ppgan.data import ImageData, load_dataset
from ppgan.engine import (
    RunContext,
    Selection,
    build,
    build_model,
    epoch_generator,
    fit_batch_size,
    load_checkpoint,
)
from ppgan.engine.images import rows_grid
from ppgan.engine.judges import Judges, load_judges
from ppgan.errors import PpganError
from ppgan.losses.adversarial import critic_terms
from ppgan.losses.combine import weighted_sum
from ppgan.losses.generator import generator_terms
from ppgan.losses.privacy import jittered_uniform, soft_cross_entropy
from ppgan.models.siamese import pair_distance
from ppgan.models.vae import reparameterize

log = logging.getLogger(__name__)
REQUIRED = {"mir": ("disease", "identity"), "sir": ("disease", "siamese")}


def train_stream(data: ImageData, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
    """Endless shuffled training batches for one epoch, a function of (seed, epoch) only.

    `batch_size` must not exceed the training split (see `fit_batch_size`): with the last
    incomplete batch dropped, a pass would otherwise yield nothing and the stream never end.
    """
    if batch_size > len(data.indices("train")):
        raise ValueError(f"batch_size={batch_size} exceeds the training split")
    n_pass = 0
    while True:
        gen = epoch_generator(seed, epoch, data.device, stream="train", n_pass=n_pass)
        yield from data.batches("train", batch_size, shuffle=True, generator=gen, drop_last=True)
        n_pass += 1


def require_bf16(ctx: RunContext) -> None:
    """fp16 autocast needs a loss scaler, which the gradient penalty's double backward breaks."""
    if ctx.amp_dtype == torch.float16:
        raise PpganError("trainer.amp_dtype=float16: the gradient penalty needs bfloat16 autocast")


def critic_phase(
    ctx: RunContext, critic, opt_c, stream: Iterator[dict], fake_of, n_steps: int, gp_weight: float
) -> dict[str, Tensor]:
    """`n_steps` critic steps on the combined WGAN-GP loss, each on a fresh real batch, the fake
    batch made by `fake_of(batch)` under no_grad. Leaves the critic frozen for the generator phase.

    Returns:
        The last step's terms (`wasserstein`, `gp`, `loss`), for logging.
    """
    critic.requires_grad_(True)
    for _ in range(n_steps):
        b = next(stream)
        with torch.no_grad(), ctx.autocast():
            fake = fake_of(b)
        with ctx.autocast():
            terms = critic_terms(critic, b["images"], fake.float())
        terms["loss"] = terms["wasserstein"] + gp_weight * terms["gp"]
        opt_c.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_c.step()
    critic.requires_grad_(False)  # the generator's gradients must not train the critic
    return terms


def reference_embeddings(judges: Judges, data: ImageData, gen: torch.Generator, bs: int) -> Tensor:
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
        return torch.cat([judges.siamese(b["images"]) for b in data.batches(pick, bs)]).float()


@torch.no_grad()
def validate(enc, dec, judges: Judges, data: ImageData, cfg: DictConfig) -> dict[str, float]:
    """Validation metrics and the paper's model-selection score (lower is better), z = mu."""
    m, sel = cfg.model, cfg.model.selection
    enc.eval(), dec.eval()
    sums: dict[str, float] = {}
    n = 0
    for b in data.batches("val", cfg.trainer.eval_batch_size):
        real, mask = b["images"], b["masks"]
        fake = dec(enc(real, mask)[0])
        logits_real, logits_fake = judges.disease(real), judges.disease(fake)
        out = {
            "disease_agreement": (logits_real.argmax(1) == logits_fake.argmax(1)).float().sum(),
            "disease_ce": soft_cross_entropy(logits_real.softmax(1), logits_fake) * len(real),
            # The original's reconstruction term is a sum over pixels: per image here.
            "roi_rec": ((real - fake) * mask).pow(2).flatten(1).sum(1).sum(),
        }
        if judges.identity is not None:
            logits_id = judges.identity(fake)
            out["identity_acc"] = (logits_id.argmax(1) == b["id"]).float().sum()
            uniform = jittered_uniform(len(real), logits_id.shape[1], False, real.device)
            out["identity_ce_uniform"] = soft_cross_entropy(uniform, logits_id) * len(real)
        if judges.siamese is not None:
            out["siamese_dist"] = pair_distance(judges.siamese(fake), judges.siamese(real)).sum()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += len(real)
    enc.train(), dec.train()
    val = {k: v / n for k, v in sums.items()}
    if m.variant == "mir":
        val["score"] = val["disease_ce"] + sel.identity * val["identity_ce_uniform"]
    else:  # deviation: capped at `distance_cap`; the original zeroes the term above it
        val["score"] = val["disease_ce"] - sel.siamese * min(val["siamese_dist"], sel.distance_cap)
    val["score"] += sel.roi_rec * val["roi_rec"]
    return val


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task, m = cfg.task, cfg.model
    require_bf16(ctx)
    if m.variant not in REQUIRED:
        raise PpganError(f"model.variant={m.variant}: must be 'mir' or 'sir'")
    data = load_dataset(cfg.dataset, require_splits=("train", "val")).to(ctx.device)
    data.require_ids("task=anonymizer")
    judges = load_judges(task, data, ctx.device, REQUIRED[m.variant])
    shape = list(data.shape)
    enc, enc_spec = build_model(m.encoder, in_shape=shape)
    dec, dec_spec = build_model(m.decoder, in_shape=shape)
    critic, critic_spec = build_model(m.critic, in_shape=shape)
    for net in (enc, dec, critic):
        net.to(ctx.device)
    opt_g = build(cfg.optimizer, params=[*enc.parameters(), *dec.parameters()])
    opt_c = build(cfg.optimizer, params=critic.parameters())
    nets = {"encoder": (enc, enc_spec), "decoder": (dec, dec_spec), "critic": (critic, critic_spec)}
    opts = {"opt_g": opt_g, "opt_c": opt_c}
    select = Selection(patience=0, warmup=task.selection_warmup)
    start = ctx.resume(nets, opts, select)

    weights = OmegaConf.to_container(m.loss)
    model_cfg = OmegaConf.to_container(m)
    meta = {
        "variant": m.variant,
        "margin": float(m.margin),
        "n_ids": data.n_ids,
        "n_classes": data.n_classes,
    }
    fixed = data.batch(data.indices("val")[: task.n_samples])
    n_train = len(data.indices("train"))
    batch_size = fit_batch_size(n_train, task.batch_size, "task=anonymizer")
    iters = max(1, n_train // batch_size)
    log.info(
        "task=anonymizer model.variant=%s: %d epochs x %d iterations (%d critic + %d gen "
        "steps each) on %s",
        m.variant,
        task.epochs,
        iters,
        m.n_critic,
        m.n_gen,
        ctx.device,
    )
    bar = ctx.progress(
        range(start, task.epochs), desc=f"pp_{m.variant}", initial=start, total=task.epochs
    )
    for epoch in bar:
        stream = train_stream(data, batch_size, ctx.seed, epoch)
        refs = None
        if m.variant == "sir":
            gen = epoch_generator(ctx.seed, epoch, data.device, stream="references")
            refs = reference_embeddings(judges, data, gen, cfg.trainer.eval_batch_size)
        sums: dict[str, Tensor] = {}
        for _ in range(iters):
            terms_c = critic_phase(
                ctx,
                critic,
                opt_c,
                stream,
                lambda b: dec(reparameterize(*enc(b["images"], b["masks"]))),
                m.n_critic,
                m.gp_weight,
            )
            for _ in range(m.n_gen):
                b = next(stream)
                with ctx.autocast():
                    mu, logvar = enc(b["images"], b["masks"])
                    fake = dec(reparameterize(mu, logvar))
                    terms_g = generator_terms(
                        b["images"], b["masks"], fake, mu, logvar, critic, judges, model_cfg, refs
                    )
                loss_g = weighted_sum(terms_g, weights)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
            # Sums stay on the device: the host reads them once per epoch, not once per step.
            logged = {f"critic/{k}": v for k, v in terms_c.items()}
            logged |= {f"gen/{k}": v for k, v in terms_g.items()}
            logged["gen/total"] = loss_g
            for k, v in logged.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        ctx.log_means(sums, iters, epoch + 1)
        val = validate(enc, dec, judges, data, cfg)
        for k, v in val.items():
            ctx.writer.add_scalar(f"val/{k}", v, epoch + 1)
        if (epoch + 1) % task.sample_every == 0 or epoch + 1 == task.epochs:
            save_samples(ctx, enc, dec, fixed, epoch + 1)
        bar.set_postfix(score=f"{val['score']:.3f}", agree=f"{val['disease_agreement']:.2f}")
        improved = select.update((val["score"],), epoch)
        ctx.end_epoch(epoch, nets, opts, select, improved, **meta)

    if not (ctx.ckpt_dir / "best.pt").exists():  # warm-up longer than the run: keep the last
        ctx.save("best", load_checkpoint(ctx.ckpt_dir / "last.pt"))
    best = load_checkpoint(ctx.ckpt_dir / "best.pt")
    enc.load_state_dict(best["encoder"]), dec.load_state_dict(best["decoder"])
    val = validate(enc, dec, judges, data, cfg)
    metrics = {f"val/{k}": v for k, v in val.items()}
    metrics.update({"best_epoch": best["epoch"], "chance/identity": 1.0 / data.n_ids})
    return ctx.finish(metrics)


@torch.no_grad()
def save_samples(ctx: RunContext, enc, dec, fixed: dict, epoch: int) -> None:
    """The fixed validation grid, original | mask | anonymized (z = mu), to TensorBoard and PNG."""
    enc.eval(), dec.eval()
    fake = dec(enc(fixed["images"], fixed["masks"])[0])
    enc.train(), dec.train()
    grid = rows_grid(
        [fixed["images"], fixed["masks"] * 2 - 1, fake],
        ctx.out_dir / "samples" / f"epoch_{epoch:04d}.png",
    )
    ctx.writer.add_image("samples/original|mask|anonymized", grid, epoch)
