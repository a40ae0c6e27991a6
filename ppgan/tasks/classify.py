"""Tasks `disease` and `identity`: the paper's recognition CNN, trained with Adam,
early stopping and best-validation checkpointing."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ppgan.data import ImageData, load_dataset
from ppgan.engine import (
    RunContext,
    Selection,
    build,
    build_model,
    epoch_generator,
    load_checkpoint,
)
from ppgan.engine.inference import collect
from ppgan.errors import PpganError
from ppgan.metrics.classification import classification_metrics

log = logging.getLogger(__name__)


def labels_of(data: ImageData, label: str, task: str) -> tuple[str, int]:
    """The batch key and class count of `label` ('dis' or 'id')."""
    if label == "id":
        data.require_ids(task)
        if data.n_ids < 2:
            raise PpganError(f"{data.path}: key 'id': {task} needs at least 2 identities")
        return "id", data.n_ids
    return "dis", data.n_classes


def evaluate(model, data: ImageData, split: str, key: str, n_classes: int, batch_size: int) -> dict:
    """Loss and classification metrics of `model` on a split."""
    idx = data.indices(split)
    logits = collect(model, data.batches(idx, batch_size))
    labels = data.dis[idx] if key == "dis" else data.ids[idx]
    metrics = classification_metrics(logits, labels, n_classes)
    metrics["loss"] = float(F.cross_entropy(logits.float(), labels))
    return metrics


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    with ctx.dist.main_first():  # rank 0 generates the cached synthetic data, if needed
        data = load_dataset(cfg.dataset, require_splits=("train", "val", "test"))
    data.to(ctx.device)
    key, n_classes = labels_of(data, task.label, f"task={task.name}")
    model, spec = build_model(cfg.model, in_shape=list(data.shape), n_classes=n_classes)
    model.to(ctx.device)
    opt = build(cfg.optimizer, params=model.parameters())
    scaler = ctx.grad_scaler()
    nets, opts = {"model": (model, spec)}, {"opt": opt}
    select = Selection(task.patience)
    start = ctx.resume(nets, opts, select)
    train_model = ctx.wrap(model)

    n_train = len(data.indices("train"))
    ctx.dist.check_batch(task.batch_size, n_train, "the training split", drop_last=False)
    log.info(
        "task=%s: %d classes, %d train images of shape %s on %s",
        task.name,
        n_classes,
        n_train,
        data.shape,
        ctx.device,
    )
    bar = ctx.progress(range(start, task.epochs), desc=task.name, initial=start, total=task.epochs)
    for epoch in bar:
        if select.should_stop:
            log.info("early stop at epoch %d (best epoch %d)", epoch, select.best_epoch)
            break
        model.train()
        ctx.seed_epoch(epoch)
        loss_sum = torch.zeros((), device=ctx.device)
        correct = torch.zeros((), device=ctx.device)
        gen = epoch_generator(ctx.seed, epoch, data.device)
        # Every rank draws the same global batches and trains on its part of each.
        for idx in data.index_batches("train", task.batch_size, shuffle=True, generator=gen):
            batch = data.batch(ctx.dist.part(idx))
            with ctx.autocast():
                logits = train_model(batch["images"])
                loss = F.cross_entropy(logits.float(), batch[key])
            opt.zero_grad(set_to_none=True)
            scaler.scale(ctx.dist.scale(loss, len(logits), len(idx))).backward()
            scaler.step(opt)
            scaler.update()
            # Accumulate on the device; the host reads once per epoch (one sync, not one a step).
            loss_sum += loss.detach() * len(logits)
            correct += (logits.argmax(1) == batch[key]).sum()
        # Every rank validates; rank 0's numbers decide, so selection and early stopping agree.
        val = ctx.dist.broadcast(
            evaluate(model, data, "val", key, n_classes, cfg.trainer.eval_batch_size)
        )
        sums = ctx.dist.sum({"loss": loss_sum, "correct": correct})
        train_loss, train_acc = float(sums["loss"]) / n_train, float(sums["correct"]) / n_train
        for name, value in [
            ("train/loss", train_loss),
            ("train/acc", train_acc),
            ("val/loss", val["loss"]),
            ("val/acc", val["acc"]),
        ]:
            ctx.writer.add_scalar(name, value, epoch + 1)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val['acc']:.3f}")
        improved = select.update((1 - val["acc"], val["loss"]), epoch)
        ctx.end_epoch(epoch, nets, opts, select, improved)

    best = load_checkpoint(ctx.ckpt_dir / "best.pt")
    model.load_state_dict(best["model"])
    test = evaluate(model, data, "test", key, n_classes, cfg.trainer.eval_batch_size)
    val = evaluate(model, data, "val", key, n_classes, cfg.trainer.eval_batch_size)
    metrics = {f"test/{k}": v for k, v in test.items()}
    metrics.update(
        {"val/acc": val["acc"], "best_epoch": select.best_epoch + 1, "chance": 1.0 / n_classes}
    )
    return ctx.finish(metrics)
