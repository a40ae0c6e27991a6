"""Task `counterfactual`: a second decoder that shows each case with another diagnosis.

Stage 2 of the paper's counterfactual module: the trained encoder and factual decoder are frozen;
the counterfactual decoder learns a disease term toward the target class, an ROI-complement term
(everything outside the ROI as in the factual image), the privacy terms and — unlike the original
code, which built it but left it out of the loss — the adversarial term, so it stays realistic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ppgan.data import ImageData, load_dataset
from ppgan.engine import (
    RunContext,
    Selection,
    build,
    epoch_generator,
    fit_batch_size,
    load_checkpoint,
    load_frozen_parts,
    rebuild,
)
from ppgan.engine.checkpoint import network_from
from ppgan.engine.images import rows_grid
from ppgan.engine.judges import load_judges
from ppgan.errors import PpganError
from ppgan.gan import (
    REQUIRED_JUDGES,
    GanStep,
    reference_embeddings,
    require_bf16,
    run_epoch,
    train_stream,
)
from ppgan.losses.adversarial import generator_adversarial
from ppgan.losses.counterfactual import robust_disease_flip, target_classes
from ppgan.losses.generator import privacy_terms
from ppgan.losses.utility import roi_complement

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(enc, dec, cf_dec, judges, data, cfg: DictConfig) -> dict[str, float]:
    """Flip rates, ROI-complement error and identity accuracy on validation (z = mu).

    `robust_flip_rate` counts a flip only when it also holds on the low-passed view of the
    counterfactual; model selection uses it, so an early adversarial pattern that flips the
    training network alone is not selected.
    """
    cf_dec.eval()
    lowpass = cfg.objective.disease_views.lowpass
    sums = {"flip_rate": 0.0, "robust_flip_rate": 0.0, "roi_complement": 0.0, "identity_acc": 0.0}
    n = 0
    for b in data.batches("val", cfg.trainer.eval_batch_size):
        z = enc(b["images"], b["masks"])[0]
        factual, cf = dec(z), cf_dec(z)
        target = target_classes(judges.disease(b["images"]), cfg.task.target_class)
        flipped = judges.disease(cf).argmax(1) == target
        if lowpass > 1:
            low = F.interpolate(F.avg_pool2d(cf, lowpass), size=cf.shape[-2:], mode="bilinear")
            robust = flipped & (judges.disease(low).argmax(1) == target)
        else:
            robust = flipped
        sums["flip_rate"] += float(flipped.sum())
        sums["robust_flip_rate"] += float(robust.sum())
        sums["roi_complement"] += float(roi_complement(factual, cf, roi_of(data, b))) * len(z)
        if judges.identity is not None:
            sums["identity_acc"] += float((judges.identity(cf).argmax(1) == b["id"]).sum())
        n += len(z)
    cf_dec.train()
    val = {k: v / n for k, v in sums.items()}
    val["score"] = (1 - val["robust_flip_rate"]) + cfg.objective.selection_roi * val[
        "roi_complement"
    ]
    return val


def roi_of(data: ImageData, b: dict) -> torch.Tensor:
    """The region the counterfactual may change. Without masks every pixel counts as ROI for the
    encoder, which would leave the proximity term nothing outside to keep (0, silently); there
    the whole image is kept close to the factual one instead (the flip term still wins where
    the disease demands a change), as the data set's load warning says."""
    return b["masks"] if data.has_masks else torch.zeros_like(b["masks"])


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task, obj = cfg.task, cfg.objective
    require_bf16(ctx.amp_dtype)
    with ctx.dist.main_first():  # rank 0 generates the cached synthetic data, if needed
        data = load_dataset(cfg.dataset, require_splits=("train", "val"))
    data.to(ctx.device)
    data.require_ids("task=counterfactual")
    (enc, dec), gan = load_frozen_parts(
        task.checkpoint, ("encoder", "decoder"), data.shape, ctx.device, "task.checkpoint"
    )
    variant = gan.get("variant")
    if variant not in REQUIRED_JUDGES:
        raise PpganError(f"task.checkpoint: {task.checkpoint} is not a task=anonymizer checkpoint")
    # PP-RID's counterfactual keeps the factual image's random identity code (same z); its
    # identity term is PP-MIR's (the frozen identity classifier).
    privacy_variant = "mir" if variant == "rid" else variant
    required = REQUIRED_JUDGES[variant]
    if variant == "rid" and obj.loss.get("identity"):
        required += ("identity",)
    judges = load_judges(task, data, ctx.device, required)
    # Same architecture as the factual decoder; warm-started from it (a deviation: the original
    # starts from scratch) so training begins at the factual image and only learns the change.
    where, expect = f"task.checkpoint: {task.checkpoint}", {"in_shape": list(data.shape)}
    cf_dec, cf_spec = network_from(gan, "decoder", where, expect), gan["decoder_spec"]
    critic, critic_spec = network_from(gan, "critic", where, expect), gan["critic_spec"]
    if not task.init_from_factual:  # same architectures, trained from scratch
        cf_dec, critic = rebuild(cf_spec, where), rebuild(critic_spec, where)
    cf_dec, critic = cf_dec.to(ctx.device), critic.to(ctx.device)
    opt_g = build(cfg.optimizer, params=cf_dec.parameters())
    opt_c = build(cfg.critic_optimizer, params=critic.parameters())
    nets = {"cf_decoder": (cf_dec, cf_spec), "critic": (critic, critic_spec)}
    opts = {"opt_g": opt_g, "opt_c": opt_c}
    select = Selection(patience=0, warmup=task.selection_warmup)
    start = ctx.resume(nets, opts, select)
    # Decoder and critic wrapped separately (the frozen stage-1 networks are not trained).
    train_cf_dec, train_critic = ctx.wrap(cf_dec), ctx.wrap(critic)

    margin = obj.margin if obj.margin is not None else gan.get("margin")
    if margin is None and variant == "sir":
        raise PpganError("objective.margin: the checkpoint does not record its margin; set it")
    weights = OmegaConf.to_container(obj.loss)
    robust = OmegaConf.to_container(obj.disease_views)
    privacy_w = {k: v for k, v in weights.items() if k in ("identity", "identity_self")}
    # The frozen stage-1 networks travel in the checkpoint as the modules are *now*, so explain and
    # evaluate load one file, and the tests can check that training left them untouched.
    frozen_nets = {"encoder": (enc, gan["encoder_spec"]), "decoder": (dec, gan["decoder_spec"])}
    fixed = data.batch(data.indices("val")[: task.n_samples])
    n_train = len(data.indices("train"))
    batch_size = fit_batch_size(n_train, task.batch_size, "task=counterfactual")
    iters = max(1, n_train // batch_size)
    ctx.dist.check_batch(batch_size, n_train, "task=counterfactual", drop_last=True)
    bar = ctx.progress(
        range(start, task.epochs), desc="counterfactual", initial=start, total=task.epochs
    )
    for epoch in bar:
        ctx.seed_epoch(epoch)
        stream = train_stream(data, batch_size, ctx.seed, epoch, part=ctx.dist.part)
        refs = None
        if variant == "sir":
            gen = epoch_generator(ctx.seed, epoch, data.device, stream="references")
            refs = reference_embeddings(judges.siamese, data, gen, cfg.trainer.eval_batch_size)

        def terms_of(b: dict, refs=refs) -> dict[str, torch.Tensor]:
            with torch.no_grad():  # frozen stage 1: no gradient, no BN updates
                z = enc(b["images"], b["masks"])[0]
                factual = dec(z)
                target = target_classes(judges.disease(b["images"]), task.target_class)
            cf = train_cf_dec(z)
            return {
                "disease": robust_disease_flip(judges.disease, cf, target, **robust),
                "roi_complement": roi_complement(factual.float(), cf.float(), roi_of(data, b)),
                "adv": generator_adversarial(train_critic, cf),
                **privacy_terms(
                    cf, b["images"], judges, privacy_variant, privacy_w, margin, True, refs
                ),
            }

        step = GanStep(
            critic=train_critic,
            opt_c=opt_c,
            opt_g=opt_g,
            fake_of=lambda b: train_cf_dec(enc(b["images"], b["masks"])[0]),
            terms_of=terms_of,
            weights=weights,
            n_critic=obj.n_critic,
            n_gen=obj.n_gen,
            gp_weight=obj.gp_weight,
            gp_every=obj.gp_every,
            autocast=ctx.autocast,
            prefix="cf",
        )
        sums = run_epoch(step, stream, iters)
        ctx.log_means(sums, iters, epoch + 1)
        # Every rank validates; rank 0's numbers decide, so model selection agrees.
        val = ctx.dist.broadcast(validate(enc, dec, cf_dec, judges, data, cfg))
        for k, v in val.items():
            ctx.writer.add_scalar(f"val/{k}", v, epoch + 1)
        if ctx.dist.is_main:
            save_cf_samples(ctx, enc, dec, cf_dec, fixed, epoch + 1)
        bar.set_postfix(flip=f"{val['flip_rate']:.2f}")
        improved = select.update((val["score"],), epoch)
        # The target travels with the checkpoint, so every scorer flips toward the same class.
        ctx.end_epoch(
            epoch,
            nets | frozen_nets,
            opts,
            select,
            improved,
            variant=variant,
            target_class=task.target_class,
        )

    if not (ctx.ckpt_dir / "best.pt").exists():
        ctx.save("best", load_checkpoint(ctx.ckpt_dir / "last.pt"))
    best = load_checkpoint(ctx.ckpt_dir / "best.pt")
    cf_dec.load_state_dict(best["cf_decoder"])
    # The final numbers are a function of the kept checkpoint: the same random draws whether
    # training ran to the end, stopped early or was resumed.
    torch.manual_seed(ctx.seed)
    val = validate(enc, dec, cf_dec, judges, data, cfg)
    return ctx.finish({**{f"val/{k}": v for k, v in val.items()}, "best_epoch": best["epoch"]})


@torch.no_grad()
def save_cf_samples(ctx: RunContext, enc, dec, cf_dec, fixed: dict, epoch: int) -> None:
    """The fixed validation grid original | factual | counterfactual, to TensorBoard and PNG."""
    cf_dec.eval()
    z = enc(fixed["images"], fixed["masks"])[0]
    grid = rows_grid(
        [fixed["images"], dec(z), cf_dec(z)], ctx.out_dir / "samples" / f"epoch_{epoch:04d}.png"
    )
    cf_dec.train()
    ctx.writer.add_image("samples/original|factual|counterfactual", grid, epoch)
