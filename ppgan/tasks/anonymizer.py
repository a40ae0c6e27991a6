"""Task `anonymizer`: train the privacy-preserving VAE-GAN: PP-MIR or PP-SIR (paper, Sec. III),
or PP-RID (random identity per image, against an in-loop adaptive attacker; `ppgan.gan.rid`).

Per iteration (`ppgan.gan.GanStep`): `objective.n_critic` critic steps on the combined WGAN-GP loss
with the fake batch generated under no_grad, (PP-RID: updates of the in-loop identity adversary,)
then `objective.n_gen` generator (encoder + decoder) steps with the critic frozen. The disease,
identity and siamese networks are pre-trained and frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ppgan.baselines import check_temperature
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
from ppgan.engine.ema import WeightAverage
from ppgan.engine.images import rows_grid
from ppgan.engine.judges import Judges, load_judges
from ppgan.errors import PpganError, require_nonnegative
from ppgan.gan import (
    REQUIRED_JUDGES,
    anonymizer_step,
    identity_support,
    random_identity_step,
    reference_embeddings,
    require_bf16,
    run_epoch,
    train_stream,
)
from ppgan.losses.privacy import jittered_uniform, soft_cross_entropy
from ppgan.models.siamese import pair_distance

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(
    enc, dec, judges: Judges, data: ImageData, cfg: DictConfig, adversary=None
) -> dict[str, float]:
    """Validation metrics and the model-selection score (lower is better), on the release latent
    (z = mu; PP-RID: the content mean and a prior draw of the identity code)."""
    obj, sel = cfg.objective, cfg.objective.selection
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
        if adversary is not None:
            adversary.eval()
            out["adaptive_acc"] = (adversary(fake).argmax(1) == b["id"]).float().sum()
            adversary.train()
        if judges.siamese is not None:
            out["siamese_dist"] = pair_distance(judges.siamese(fake), judges.siamese(real)).sum()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n += len(real)
    enc.train(), dec.train()
    val = {k: v / n for k, v in sums.items()}
    if obj.variant == "mir":
        val["score"] = val["disease_ce"] + sel.identity * val["identity_ce_uniform"]
    elif obj.variant == "rid":
        val["score"] = val["disease_ce"] + sel.adaptive * val["adaptive_acc"]
        if "identity_ce_uniform" in val:
            val["score"] += sel.identity * val["identity_ce_uniform"]
    else:  # deviation: capped at `distance_cap`; the original zeroes the term above it
        val["score"] = val["disease_ce"] - sel.siamese * min(val["siamese_dist"], sel.distance_cap)
    val["score"] += sel.roi_rec * val["roi_rec"]
    return val


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task, m, obj = cfg.task, cfg.model, cfg.objective
    require_bf16(ctx.amp_dtype)
    if obj.get("variant") not in REQUIRED_JUDGES:
        raise PpganError(
            f"objective.variant={obj.get('variant')}: must be one of {sorted(REQUIRED_JUDGES)}"
        )
    # Recorded in the checkpoints for task=export / task=evaluate (ppgan.baselines); checked
    # here so that a bad value fails before training, not after it.
    release_t = obj.get("release_temperature", 0.0)
    check_temperature(release_t, "objective.release_temperature")
    rid = obj.variant == "rid"
    if rid and not m.encoder.get("identity_dim"):
        raise PpganError(
            "objective=pp_rid needs an encoder with an identity code "
            "(model.encoder.identity_dim > 0): add model=rid_gan"
        )
    if not rid and m.encoder.get("identity_dim"):
        raise PpganError(
            f"model.encoder.identity_dim={m.encoder.identity_dim}: only objective=pp_rid "
            "uses an identity code (use model=vae_gan)"
        )
    if rid and ctx.dist.world > 1:
        # Its step calls Encoder.posterior and trains a third player (the adversary): neither
        # goes through a DistributedDataParallel forward yet.
        raise PpganError("objective=pp_rid: data-parallel training is not supported yet")
    with ctx.dist.main_first():  # rank 0 generates the cached synthetic data, if needed
        data = load_dataset(cfg.dataset, require_splits=("train", "val"))
    data.to(ctx.device)
    data.require_ids("task=anonymizer")
    required = REQUIRED_JUDGES[obj.variant]
    if rid and obj.loss.get("identity"):
        required += ("identity",)
    judges = load_judges(task, data, ctx.device, required)
    shape = list(data.shape)
    enc, enc_spec = build_model(m.encoder, in_shape=shape)
    dec, dec_spec = build_model(m.decoder, in_shape=shape)
    critic, critic_spec = build_model(m.critic, in_shape=shape)
    for net in (enc, dec, critic):
        net.to(ctx.device)
    opt_g = build(cfg.optimizer, params=[*enc.parameters(), *dec.parameters()])
    opt_c = build(cfg.critic_optimizer, params=critic.parameters())
    fixed = data.batch(data.indices("val")[: task.n_samples])
    n_train = len(data.indices("train"))
    batch_size = fit_batch_size(n_train, task.batch_size, "task=anonymizer")
    iters = max(1, n_train // batch_size)
    ctx.dist.check_batch(batch_size, n_train, "task=anonymizer", drop_last=True)
    nets = {"encoder": (enc, enc_spec), "decoder": (dec, dec_spec), "critic": (critic, critic_spec)}
    averages = release_averages(obj, enc, dec, iters)
    if averages:  # the checkpoints' encoder/decoder are the released averages (README, "PP-RID")
        nets = {
            "encoder": (averages[0].avg, enc_spec),
            "decoder": (averages[1].avg, dec_spec),
            "encoder_live": (enc, enc_spec),
            "decoder_live": (dec, dec_spec),
            "critic": (critic, critic_spec),
        }
    # The generator that is validated, selected, sampled and saved as encoder/decoder.
    rel_enc, rel_dec = (averages[0].avg, averages[1].avg) if averages else (enc, dec)
    opts = {"opt_g": opt_g, "opt_c": opt_c}
    adversary = support = bank = None
    if rid:  # the adaptive attacker inside the loop, an identity classifier of its own
        if m.get("adversary") is None:
            raise PpganError("objective=pp_rid needs model.adversary (use model=rid_gan)")
        adversary, adv_spec = build_model(m.adversary, in_shape=shape, n_classes=data.n_ids)
        adversary.to(ctx.device)
        opt_a = build(cfg.critic_optimizer, params=adversary.parameters())
        nets["adversary"] = (adversary, adv_spec)
        opts["opt_a"] = opt_a
        train = data.indices("train")
        support = identity_support(data.ids[train], data.dis[train], data.n_ids, data.n_classes)
        if obj.loss.get("latent"):  # the latest content latent of every item (README, "PP-RID")
            content_dim = int(m.encoder.z_dim) - int(m.encoder.identity_dim)
            bank, bank_spec = build_model(
                {"_target_": "ppgan.models.bank.LatentBank"},
                n_items=len(data),
                dim=content_dim,
                n_ids=data.n_ids,
                n_classes=data.n_classes,
            )
            bank.to(ctx.device).label(data.ids, data.dis)
            nets["latent_bank"] = (bank, bank_spec)
    keep = task.select
    if keep not in ("best", "last"):
        raise PpganError(f"task.select={keep}: must be 'best' or 'last'")
    # select=last: best.pt is the final epoch's, no early stop (at 128 px the validation score
    # favoured epoch 24 of 100 while the releases kept improving to the end; README, "A second
    # data shape"). The score is still logged.
    select = Selection(
        patience=task.patience if keep == "best" else 0, warmup=task.selection_warmup
    )
    start = ctx.resume(nets, opts, select)
    for average in averages:  # the ramp-up continues where the killed run left it
        average.steps = start * iters
    # Generator and critic wrapped separately: each phase all-reduces its own player's gradients.
    train_enc, train_dec, train_critic = (ctx.wrap(net) for net in (enc, dec, critic))
    objective, roi_scale = rank_objective(obj, ctx.dist.world)

    meta = {
        "variant": obj.variant,
        "release_temperature": float(release_t),
        "margin": float(obj.margin),
        "n_ids": data.n_ids,
        "n_classes": data.n_classes,
    }
    log.info(
        "task=anonymizer objective.variant=%s: %d epochs x %d iterations (%d critic + %d gen "
        "steps each) on %s",
        obj.variant,
        task.epochs,
        iters,
        obj.n_critic,
        obj.n_gen,
        ctx.device,
    )
    bar = ctx.progress(
        range(start, task.epochs), desc=f"pp_{obj.variant}", initial=start, total=task.epochs
    )
    for epoch in bar:
        if select.should_stop:  # also a resumed run that had stopped early
            log.info(
                "early stop before epoch %d: no better validation score since epoch %d (%d "
                "epochs; raise task.patience, or set it to 0, to train on)",
                epoch + 1,
                select.best_epoch + 1,
                select.bad_epochs,
            )
            break
        ctx.seed_epoch(epoch)
        stream = train_stream(data, batch_size, ctx.seed, epoch, part=ctx.dist.part)
        refs = None
        if obj.variant == "sir":
            gen = epoch_generator(ctx.seed, epoch, data.device, stream="references")
            refs = reference_embeddings(judges.siamese, data, gen, cfg.trainer.eval_batch_size)
        if rid:
            step = random_identity_step(
                enc,
                dec,
                critic,
                adversary,
                opt_g,
                opt_c,
                opt_a,
                judges,
                obj,
                support,
                ctx.autocast,
                bank,
                # The training indices found once, not on every refresh (a host sync each time).
                lambda: data.batches(train, cfg.trainer.eval_batch_size),
            )
        else:
            step = anonymizer_step(
                train_enc,
                train_dec,
                train_critic,
                opt_g,
                opt_c,
                judges,
                objective,
                refs,
                ctx.autocast,
            )
        sums = run_epoch(step, stream, iters, after=update_averages(averages, enc, dec))
        if roi_scale > 1 and "gen/roi_rec" in sums:
            sums["gen/roi_rec"] = sums["gen/roi_rec"] * roi_scale
        ctx.log_means(sums, iters, epoch + 1)
        # Every rank validates; rank 0's numbers decide, so model selection agrees.
        val = ctx.dist.broadcast(validate(rel_enc, rel_dec, judges, data, cfg, adversary))
        for k, v in val.items():
            ctx.writer.add_scalar(f"val/{k}", v, epoch + 1)
        # No extra grid on an early stop's last epoch: PP-RID's grid draws codes from the run's
        # one random stream, and a stopped run extended later must draw what an unstopped one would.
        final = epoch + 1 == task.epochs
        if ctx.dist.is_main and ((epoch + 1) % task.sample_every == 0 or final):
            save_samples(ctx, rel_enc, rel_dec, fixed, epoch + 1)
        bar.set_postfix(score=f"{val['score']:.3f}", agree=f"{val['disease_agreement']:.2f}")
        # select=last: also a run resumed with more epochs ends on its own last epoch.
        improved = final if keep == "last" else select.update((val["score"],), epoch)
        ctx.end_epoch(epoch, nets, opts, select, improved, **meta)

    bar.close()
    if not (ctx.ckpt_dir / "best.pt").exists():  # warm-up longer than the run: keep the last
        ctx.save("best", load_checkpoint(ctx.ckpt_dir / "last.pt"))
    best = load_checkpoint(ctx.ckpt_dir / "best.pt")
    rel_enc.load_state_dict(best["encoder"]), rel_dec.load_state_dict(best["decoder"])
    if adversary is not None:
        adversary.load_state_dict(best["adversary"])
    # The final numbers are a function of the kept checkpoint: the same random draws whether
    # training ran to the end, stopped early or was resumed.
    torch.manual_seed(ctx.seed)
    val = validate(rel_enc, rel_dec, judges, data, cfg, adversary)
    metrics = {f"val/{k}": v for k, v in val.items()}
    metrics.update({"best_epoch": best["epoch"], "chance/identity": 1.0 / data.n_ids})
    return ctx.finish(metrics)


def release_averages(obj: DictConfig, enc, dec, iters: int) -> tuple[WeightAverage, ...]:
    """The moving averages of encoder and decoder that the run releases instead of the trained
    networks (`objective.ema_half_life` epochs, 0: none, the trained networks themselves).

    Measured in epochs so that one setting means the same share of training on data sets of any
    size; the ramp-up (`objective.ema_rampup`) caps the half-life at that fraction of the steps
    taken so far. The averages are built from the networks' initial weights and draw nothing
    from the random stream, so the trained networks follow the same trajectory with or without
    them (only what is validated, kept and released differs)."""
    half_life = obj.get("ema_half_life", 0.0)
    rampup = obj.get("ema_rampup", 0.5)
    require_nonnegative(half_life, "objective.ema_half_life")
    require_nonnegative(rampup, "objective.ema_rampup")
    if not half_life:
        return ()
    if not rampup:
        raise PpganError("objective.ema_rampup=0: must be > 0 when objective.ema_half_life > 0")
    return tuple(WeightAverage(net, half_life * iters, rampup) for net in (enc, dec))


def update_averages(averages: tuple[WeightAverage, ...], enc, dec):
    """The per-iteration hook of `run_epoch` that moves the averages (None without them)."""
    if not averages:
        return None

    def after() -> None:
        averages[0].update(enc), averages[1].update(dec)

    return after


def rank_objective(obj: DictConfig, world: int) -> tuple[DictConfig, int]:
    """The objective one of `world` ranks trains with, and the factor of its logged ROI term.

    A sum-reduced ROI term (`objective.roi_rec_reduction=sum`, the paper presets) sums over this
    rank's shard only, 1/world of the global batch's sum, and DDP averages the ranks' gradients:
    weighted `world` times it gives one process's gradient (mean-reduced terms need nothing).
    """
    if world == 1 or obj.get("roi_rec_reduction", "mean") != "sum":
        return obj, 1
    return OmegaConf.merge(obj, {"loss": {"roi_rec": obj.loss.roi_rec * world}}), world


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
