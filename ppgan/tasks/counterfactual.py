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

from ppgan.data import load_dataset
from ppgan.engine import (
    RunContext,
    Selection,
    build,
    epoch_generator,
    load_checkpoint,
    load_frozen_parts,
    rebuild,
)
from ppgan.engine.images import rows_grid
from ppgan.engine.judges import load_judges
from ppgan.errors import PpganError
from ppgan.losses.adversarial import generator_adversarial
from ppgan.losses.combine import weighted_sum
from ppgan.losses.counterfactual import robust_disease_flip, target_classes
from ppgan.losses.generator import privacy_terms
from ppgan.losses.utility import roi_complement
from ppgan.tasks.anonymizer import (
    REQUIRED,
    critic_phase,
    reference_embeddings,
    require_bf16,
    train_stream,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(enc, dec, cf_dec, judges, data, cfg: DictConfig) -> dict[str, float]:
    """Flip rates, ROI-complement error and identity accuracy on validation (z = mu).

    `robust_flip_rate` counts a flip only when it also holds on the low-passed view of the
    counterfactual; model selection uses it, so an early adversarial pattern that flips the
    training network alone is not selected.
    """
    cf_dec.eval()
    lowpass = cfg.task.disease_views.lowpass
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
        sums["roi_complement"] += float(roi_complement(factual, cf, b["masks"])) * len(z)
        if judges.identity is not None:
            sums["identity_acc"] += float((judges.identity(cf).argmax(1) == b["id"]).sum())
        n += len(z)
    cf_dec.train()
    val = {k: v / n for k, v in sums.items()}
    val["score"] = (1 - val["robust_flip_rate"]) + cfg.task.selection_roi * val["roi_complement"]
    return val


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    require_bf16(ctx)
    data = load_dataset(cfg.dataset, require_splits=("train", "val")).to(ctx.device)
    data.require_ids("task=counterfactual")
    (enc, dec), gan = load_frozen_parts(
        task.checkpoint, ("encoder", "decoder"), data.shape, ctx.device, "task.checkpoint"
    )
    variant = gan.get("variant")
    if variant not in REQUIRED:
        raise PpganError(f"task.checkpoint: {task.checkpoint} is not a task=anonymizer checkpoint")
    judges = load_judges(task, data, ctx.device, REQUIRED[variant])
    # Same architecture as the factual decoder; warm-started from it (a deviation: the original
    # starts from scratch) so training begins at the factual image and only learns the change.
    cf_dec, cf_spec = rebuild(gan["decoder_spec"]).to(ctx.device), gan["decoder_spec"]
    critic, critic_spec = rebuild(gan["critic_spec"]).to(ctx.device), gan["critic_spec"]
    if task.init_from_factual:
        cf_dec.load_state_dict(gan["decoder"])
        critic.load_state_dict(gan["critic"])
    opt_g = build(cfg.optimizer, params=cf_dec.parameters())
    opt_c = build(cfg.optimizer, params=critic.parameters())
    nets = {"cf_decoder": (cf_dec, cf_spec), "critic": (critic, critic_spec)}
    opts = {"opt_g": opt_g, "opt_c": opt_c}
    select = Selection(patience=0, warmup=task.selection_warmup)
    start = ctx.resume(nets, opts, select)

    margin = task.margin if task.margin is not None else gan.get("margin")
    if margin is None and variant == "sir":
        raise PpganError("task.margin: the checkpoint does not record its margin; set it")
    weights = OmegaConf.to_container(task.loss)
    robust = OmegaConf.to_container(task.disease_views)
    privacy_w = {k: v for k, v in weights.items() if k in ("identity", "identity_self")}
    # The frozen stage-1 networks travel in the checkpoint as the modules are *now*, so explain and
    # evaluate load one file, and the tests can check that training left them untouched.
    frozen_nets = {"encoder": (enc, gan["encoder_spec"]), "decoder": (dec, gan["decoder_spec"])}
    fixed = data.batch(data.indices("val")[: task.n_samples])
    iters = max(1, len(data.indices("train")) // task.batch_size)
    bar = ctx.progress(
        range(start, task.epochs), desc="counterfactual", initial=start, total=task.epochs
    )
    for epoch in bar:
        stream = train_stream(data, task.batch_size, ctx.seed, epoch)
        refs = None
        if variant == "sir":
            gen = epoch_generator(ctx.seed, epoch, data.device)
            refs = reference_embeddings(judges, data, gen, cfg.trainer.eval_batch_size)
        sums: dict[str, torch.Tensor] = {}
        for _ in range(iters):
            terms_c = critic_phase(
                ctx,
                critic,
                opt_c,
                stream,
                lambda b: cf_dec(enc(b["images"], b["masks"])[0]),
                task.n_critic,
                task.gp_weight,
            )
            b = next(stream)
            with torch.no_grad(), ctx.autocast():  # frozen stage 1: no gradient, no BN updates
                z = enc(b["images"], b["masks"])[0]
                factual = dec(z)
                target = target_classes(judges.disease(b["images"]), task.target_class)
            with ctx.autocast():
                cf = cf_dec(z)
                terms = {
                    "disease": robust_disease_flip(judges.disease, cf, target, **robust),
                    "roi_complement": roi_complement(factual.float(), cf.float(), b["masks"]),
                    "adv": generator_adversarial(critic, cf),
                    **privacy_terms(
                        cf, b["images"], judges, variant, privacy_w, margin, True, refs
                    ),
                }
            loss_g = weighted_sum(terms, weights)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            logged = {f"critic/{k}": v for k, v in terms_c.items()} | {"cf/total": loss_g}
            logged |= {f"cf/{k}": v for k, v in terms.items()}
            for k, v in logged.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        ctx.log_means(sums, iters, epoch + 1)
        val = validate(enc, dec, cf_dec, judges, data, cfg)
        for k, v in val.items():
            ctx.writer.add_scalar(f"val/{k}", v, epoch + 1)
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
