"""Task `siamese`: the identity verification network of PP-SIR, trained with a contrastive loss on
pairs re-drawn every epoch; evaluated for verification and closed-set identification."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from ppgan.data import ImageData, load_dataset
from ppgan.data.pairs import sample_pairs
from ppgan.engine import (
    RunContext,
    Selection,
    build,
    build_model,
    epoch_generator,
    load_checkpoint,
)
from ppgan.engine.context import require_finite
from ppgan.engine.inference import collect
from ppgan.errors import PpganError
from ppgan.losses.contrastive import contrastive
from ppgan.metrics.verification import (
    balanced_accuracy_at,
    best_threshold,
    pair_masks,
    rank_k,
    verification_metrics,
)
from ppgan.models.siamese import pair_distance

log = logging.getLogger(__name__)


def split_distances(net, data: ImageData, split: str, batch_size: int) -> tuple[Tensor, Tensor]:
    """Distances of every same-identity and every different-identity pair of a split."""
    idx = data.indices(split)
    emb = collect(net, data.batches(idx, batch_size)).float()
    d = torch.cdist(emb, emb)
    same, diff = pair_masks(data.ids[idx])
    return d[same], d[diff]


def evaluate_split(net, data: ImageData, split: str, batch_size: int) -> dict[str, float]:
    d_same, d_diff = split_distances(net, data, split, batch_size)
    return {
        **verification_metrics(d_same, d_diff),
        "d_same_mean": _stat(d_same, torch.mean),
        "d_diff_mean": _stat(d_diff, torch.mean),
    }


def _stat(d: Tensor, fn) -> float:
    """A statistic of a distance set; NaN when the split has no such pairs."""
    return float(fn(d)) if len(d) else float("nan")


def gallery(data: ImageData, per_identity: int) -> Tensor:
    """Indices of the first `per_identity` training images of each identity (0 = all of them)."""
    idx = data.indices("train")
    if per_identity <= 0:
        return idx
    ids = data.ids[idx]
    keep = [idx[ids == i][:per_identity] for i in range(data.n_ids)]
    return torch.cat(keep)


def test_metrics(net, data: ImageData, cfg: DictConfig) -> dict[str, float]:
    """Verification and identification on the test split (threshold chosen on validation)."""
    bs = cfg.trainer.eval_batch_size
    d_same, d_diff = split_distances(net, data, "test", bs)
    if not len(d_same):
        log.warning("the test split has no two images of one identity: verification is NaN")
    val_same, val_diff = split_distances(net, data, "val", bs)
    threshold = best_threshold(val_same, val_diff) if len(val_same) else float("nan")
    out = {
        **verification_metrics(d_same, d_diff),
        "d_same_mean": _stat(d_same, torch.mean),
        "d_same_max": _stat(d_same, torch.max),
        "d_diff_mean": _stat(d_diff, torch.mean),
        "d_diff_min": _stat(d_diff, torch.min),
        "threshold": threshold,
        "verif_acc": balanced_accuracy_at(d_same, d_diff, threshold) if len(d_same) else math.nan,
    }
    gal, test = gallery(data, cfg.task.gallery_per_identity), data.indices("test")
    emb_g = collect(net, data.batches(gal, bs)).float()
    emb_q = collect(net, data.batches(test, bs)).float()
    dist = torch.cdist(emb_q, emb_g)
    for k in (1, 5):
        out[f"rank{k}"] = rank_k(dist, data.ids[test], data.ids[gal], k)
    return out


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    with ctx.dist.main_first():  # rank 0 generates the cached synthetic data, if needed
        data = load_dataset(cfg.dataset, require_splits=("train", "val", "test"))
    data.to(ctx.device)
    data.require_ids("task=siamese")
    model, spec = build_model(cfg.model, in_shape=list(data.shape))
    model.to(ctx.device)
    opt = build(cfg.optimizer, params=model.parameters())
    scaler = ctx.grad_scaler()
    nets, opts = {"model": (model, spec)}, {"opt": opt}
    select = Selection(task.patience)
    start = ctx.resume(nets, opts, select)
    train_model = ctx.wrap(model)

    train_idx = data.indices("train")
    train_ids = data.ids[train_idx]
    # Pairs need two people, and someone with two training images; without them the pair
    # sampler has nothing to draw (it would loop forever or yield no positive pair).
    counts = torch.bincount(train_ids)
    if int((counts > 0).sum()) < 2 or int(counts.max()) < 2:
        raise PpganError(
            f"{data.path}: key 'id': task=siamese needs at least 2 identities in the training "
            "split and one of them with 2 images"
        )
    noise_std = math.sqrt(task.pairs.noise_var)
    bar = ctx.progress(range(start, task.epochs), desc="siamese", initial=start, total=task.epochs)
    for epoch in bar:
        if select.should_stop:
            log.info("early stop at epoch %d (best epoch %d)", epoch, select.best_epoch)
            break
        model.train()
        ctx.seed_epoch(epoch)
        gen = epoch_generator(ctx.seed, epoch, data.device)
        pairs, same = sample_pairs(train_ids, gen, task.pairs.max_positive, task.pairs.neg_ratio)
        # The original doubles the pair set with Gaussian-noise copies (sigma^2 = 0.05).
        copies = 2 if task.pairs.noise_copies else 1
        noisy = torch.arange(copies, device=data.device).repeat_interleave(len(pairs))
        pairs, same = pairs.repeat(copies, 1), same.repeat(copies)
        order = torch.randperm(len(pairs), generator=gen, device=data.device)
        ctx.dist.check_batch(task.batch_size, len(pairs), "the epoch's pairs", drop_last=False)
        loss_sum = torch.zeros((), device=ctx.device)
        for start_i in range(0, len(pairs), task.batch_size):
            sel_global = order[start_i : start_i + task.batch_size]
            sel = ctx.dist.part(sel_global)  # this rank's pairs of the global batch
            p, y = pairs[sel], same[sel]
            images = data.batch(train_idx[p.T.flatten()])["images"]  # [2B, C, H, W]: a then b
            # The global batch's noise, drawn on every rank, so the stream stays the same.
            shape = (2 * len(sel_global), *images.shape[1:])
            noise = torch.randn(shape, generator=gen, device=data.device) * noise_std
            if ctx.dist.world > 1:  # this rank's rows: its part of the a half and of the b half
                noise = torch.cat([ctx.dist.part(half) for half in noise.chunk(2)])
            images = torch.where(
                noisy[sel].repeat(2).bool()[:, None, None, None],
                (images + noise).clamp(-1, 1),
                images,
            )
            with ctx.autocast():
                # One pass: shared weights, shared BN batch.
                emb_a, emb_b = train_model(images).chunk(2)
                loss = contrastive(pair_distance(emb_a, emb_b), y, task.margin)
            opt.zero_grad(set_to_none=True)
            scaler.scale(ctx.dist.scale(loss, len(y), len(sel_global))).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach() * len(y)
        train_loss = ctx.dist.sum({"loss": loss_sum})["loss"] / len(pairs)
        require_finite(train_loss, "the contrastive loss")
        # Every rank validates; rank 0's numbers decide, so selection and early stopping agree.
        val = ctx.dist.broadcast(evaluate_split(model, data, "val", cfg.trainer.eval_batch_size))
        ctx.writer.add_scalar("train/loss", float(train_loss), epoch + 1)
        for name, value in val.items():
            ctx.writer.add_scalar(f"val/{name}", value, epoch + 1)
        bar.set_postfix(loss=f"{float(train_loss):.3f}", val_auc=f"{val['auc']:.3f}")
        # Best AUC; ties broken by the separation of the two distance distributions.
        improved = select.update((-val["auc"], val["d_same_mean"] / val["d_diff_mean"]), epoch)
        ctx.end_epoch(epoch, nets, opts, select, improved)

    model.load_state_dict(load_checkpoint(ctx.ckpt_dir / "best.pt")["model"])
    metrics = {f"test/{k}": v for k, v in test_metrics(model, data, cfg).items()}
    metrics.update({"best_epoch": select.best_epoch + 1, "chance/rank1": 1.0 / data.n_ids})
    return ctx.finish(metrics)
