"""Task `evaluate`: privacy, utility, realism and retrieval of every anonymizer, by one suite.

Privacy is measured by attackers the generator never saw, not only by the frozen networks it was
trained to fool: an unseen identity classifier of another architecture, an adaptive one trained on
the anonymized training split, and linkage of anonymized test images to the original training
images. Each number is reported next to the same attack on the original images and chance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ppgan.baselines import Anonymizer, quantize
from ppgan.data import SPLITS, ImageData, load_dataset
from ppgan.engine import (
    RunContext,
    build,
    build_model,
    load_frozen,
    load_frozen_parts,
    save_checkpoint,
    snapshot,
)
from ppgan.engine.fit import fit_classifier
from ppgan.engine.images import rows_grid
from ppgan.engine.inference import batched, collect
from ppgan.engine.judges import Judges, load_judges
from ppgan.errors import PpganError
from ppgan.losses.counterfactual import target_classes
from ppgan.metrics.classification import classification_metrics, topk_accuracy
from ppgan.metrics.openset import openset_attacks
from ppgan.metrics.realism import fid_kid, region_psnr, region_ssim
from ppgan.metrics.report import write_report
from ppgan.metrics.retrieval import precision_at_k
from ppgan.metrics.verification import rank_k, verification_metrics
from ppgan.models.resnet import FeatureExtractor

log = logging.getLogger(__name__)


def train_attacker(
    ctx: RunContext,
    name: str,
    data: ImageData,
    images: dict,
    labels: str,
    n_classes: int,
    seed: int,
) -> nn.Module:
    """Train a network of `task.attacker`'s architecture on `images` with labels `labels`.

    Saved under `<run dir>/attackers/` and loaded from there when the evaluation is re-run
    (a killed evaluation continues without retraining what it already has).
    """
    task = ctx.cfg.task
    path = ctx.out_dir / "attackers" / f"{name}.pt"
    if path.is_file():
        return load_frozen(path, ctx.device, key=f"attackers/{name}.pt")[0]
    torch.manual_seed(seed)  # its own initialisation: a different seed from the judges
    net, spec = build_model(task.attacker, in_shape=list(data.shape), n_classes=n_classes)
    log.info("training attacker %s (%d classes)", name, n_classes)
    net = fit_classifier(
        net.to(ctx.device),
        (images["train"], labels_of(data, "train", labels)),
        (images["val"], labels_of(data, "val", labels)),
        task.attack.epochs,
        task.attack.batch_size,
        task.attack.lr,
        seed,
        ctx.progress,
    )
    save_checkpoint(path, snapshot(task.attack.epochs, {"model": (net, spec)}, {}))
    return net.requires_grad_(False)


def labels_of(data: ImageData, split: str, key: str) -> Tensor:
    idx = data.indices(split)
    return data.ids[idx] if key == "id" else data.dis[idx]


def anonymize_all(method: Anonymizer, data: ImageData, bs: int) -> dict[str, Tensor]:
    """The method's output for every split, in memory ({split: [N, C, H, W]})."""
    out = {}
    for split in SPLITS:
        with torch.no_grad():
            out[split] = torch.cat([method(b) for b in data.batches(split, bs)])
    return out


def _outputs(net: nn.Module, x: Tensor, bs: int) -> Tensor:
    return collect(net, batched(x, bs))


def _features(net: nn.Module, x: Tensor, bs: int) -> Tensor:
    return collect(net, batched(x, bs), lambda n, b: n.features(b["images"]))


def linkage_spaces(judges: Judges, unseen: nn.Module, bs: int) -> dict:
    """The embeddings linkage ranks by: siamese embedding and unseen-network features."""
    return {
        "siamese": lambda x: _outputs(judges.siamese, x, bs).float(),
        "unseen": lambda x: _features(unseen, x, bs).float(),
    }


def original_references(orig: dict, judges: Judges, unseen: nn.Module, bs: int) -> dict:
    """What every method is compared against, computed once: the original training images in
    each linkage space, and the disease network's logits and features on the original test set."""
    spaces = linkage_spaces(judges, unseen, bs)
    return {
        "gallery": {space: embed(orig["train"]) for space, embed in spaces.items()},
        "disease_logits": _outputs(judges.disease, orig["test"], bs),
        "disease_features": _features(judges.disease, orig["test"], bs),
    }


def evaluate_method(
    ctx,
    data: ImageData,
    orig: dict,
    anon: dict,
    judges: Judges,
    unseen,
    indep,
    name: str,
    ref: dict,
) -> dict[str, float]:
    """Every metric of one anonymizer, as a flat dict (`ref`: see `original_references`)."""
    task, bs, seed = ctx.cfg.task, ctx.cfg.trainer.eval_batch_size, ctx.seed
    test_ids, train_ids = labels_of(data, "test", "id"), labels_of(data, "train", "id")
    test_dis, train_dis = labels_of(data, "test", "dis"), labels_of(data, "train", "dis")
    masks = data.split_tensors("test")["masks"]
    m: dict[str, float] = {}

    # Privacy: seen, unseen and adaptive identity classifiers; linkage to the originals.
    m.update(
        identity_attacks(anon["test"], ref["gallery"], test_ids, train_ids, judges, unseen, bs)
    )
    spaces = linkage_spaces(judges, unseen, bs)
    m.update(openset_attacks(spaces, anon["test"], orig["test"], test_ids, train_ids))
    adaptive = train_attacker(ctx, f"adaptive_{name}", data, anon, "id", data.n_ids, seed + 3)
    m["privacy/adaptive_acc"] = _acc(_outputs(adaptive, anon["test"], bs), test_ids)

    # Utility: disease recognition on anonymized test images.
    logits = _outputs(judges.disease, anon["test"], bs)
    for k, v in classification_metrics(logits, test_dis, data.n_classes).items():
        m[f"utility/disease_{k}"] = v
    m["utility/agreement"] = _acc(logits, ref["disease_logits"].argmax(1))
    for k, v in classification_metrics(
        _outputs(indep, anon["test"], bs), test_dis, data.n_classes
    ).items():
        m[f"utility/indep_{k}"] = v

    # Realism in the unseen identity network's feature space (in-domain, never seen by the GAN).
    fid, kid, _ = fid_kid(orig["test"], anon["test"], FeatureExtractor(unseen), bs)
    m["realism/fid"], m["realism/kid"] = fid, kid
    for region, mask in (("roi", masks), ("outside", 1 - masks)):
        if float(mask.sum()) > 0:
            m[f"realism/ssim_{region}"] = float(
                region_ssim(orig["test"], anon["test"], mask).nanmean()
            )
            m[f"realism/psnr_{region}"] = float(
                region_psnr(orig["test"], anon["test"], mask).nanmean()
            )

    # Retrieval: nearest anonymized training cases of each (original) test query, disease features.
    base = _features(judges.disease, anon["train"], bs)
    m[f"retrieval/precision_at_{task.k}"] = precision_at_k(
        ref["disease_features"], test_dis, base, train_dis, task.k
    )
    return m


def identity_attacks(
    anon_test: Tensor,
    gallery: dict[str, Tensor],
    test_ids: Tensor,
    train_ids: Tensor,
    judges: Judges,
    unseen: nn.Module,
    bs: int,
) -> dict[str, float]:
    """Seen and unseen identity classifiers, and linkage of each anonymized test image to the
    original training images, whose embeddings in each linkage space are `gallery`."""
    m = {"privacy/seen_acc": _acc(_outputs(judges.identity, anon_test, bs), test_ids)}
    logits = _outputs(unseen, anon_test, bs)
    m["privacy/unseen_acc"] = _acc(logits, test_ids)
    m["privacy/unseen_top5"] = topk_accuracy(logits, test_ids, 5)
    for space, embed in linkage_spaces(judges, unseen, bs).items():
        d = torch.cdist(embed(anon_test), gallery[space])  # [Q, G]
        m[f"privacy/link_{space}_rank1"] = rank_k(d, test_ids, train_ids, 1)
        m[f"privacy/link_{space}_rank5"] = rank_k(d, test_ids, train_ids, 5)
        same = test_ids[:, None] == train_ids[None, :]
        m[f"privacy/link_{space}_auc"] = verification_metrics(d[same], d[~same])["auc"]
    return m


def evaluate_counterfactual(
    ctx, data: ImageData, ref: dict, judges: Judges, unseen, indep, path: str
) -> dict[str, float]:
    """Flip rate (training and independent disease networks), proximity outside the ROI,
    realism and the identity attacks, for the counterfactuals of the test split."""
    bs = ctx.cfg.trainer.eval_batch_size
    (enc, dec, cf_dec), _ = load_frozen_parts(
        path, ("encoder", "decoder", "cf_decoder"), data.shape, ctx.device, "task.counterfactuals"
    )
    test = data.split_tensors("test")
    with torch.no_grad():
        z = torch.cat([enc(b["images"], b["masks"])[0] for b in data.batches("test", bs)])
        factual = torch.cat([dec(z[i : i + bs]) for i in range(0, len(z), bs)])
        cf = quantize(torch.cat([cf_dec(z[i : i + bs]) for i in range(0, len(z), bs)]))
    m = {}
    for tag, net in (("", judges.disease), ("indep_", indep)):
        target = target_classes(collect(net, batched(test["images"], bs)), ctx.cfg.task.cf_target)
        m[f"cf/{tag}flip_rate"] = _acc(collect(net, batched(cf, bs)), target)
    outside = 1 - test["masks"]
    m["cf/ssim_outside"] = float(region_ssim(factual, cf, outside).nanmean())
    m["cf/psnr_outside"] = float(region_psnr(factual, cf, outside).nanmean())
    m["realism/fid"], m["realism/kid"], _ = fid_kid(
        test["images"], cf, FeatureExtractor(unseen), bs
    )
    m.update(
        identity_attacks(
            cf, ref["gallery"], test["id"], labels_of(data, "train", "id"), judges, unseen, bs
        )
    )
    spaces, train_ids = linkage_spaces(judges, unseen, bs), labels_of(data, "train", "id")
    m.update(openset_attacks(spaces, cf, test["images"], test["id"], train_ids))
    return m


def _acc(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    data = load_dataset(cfg.dataset, require_splits=SPLITS).to(ctx.device)
    if data.lazy:
        raise PpganError(
            f"{data.path}: task=evaluate holds the splits in memory; raise dataset.in_memory_max_gb"
        )
    data.require_ids("task=evaluate")
    judges = load_judges(task, data, ctx.device, ("disease", "identity", "siamese"))
    orig = {s: data.split_tensors(s)["images"] for s in SPLITS}
    unseen = train_attacker(ctx, "unseen_identity", data, orig, "id", data.n_ids, ctx.seed + 1)
    indep = train_attacker(
        ctx, "independent_disease", data, orig, "dis", data.n_classes, ctx.seed + 2
    )

    ref = original_references(orig, judges, unseen, cfg.trainer.eval_batch_size)
    rows: dict[str, dict[str, float]] = {}
    grid_rows = [orig["test"][: task.n_samples]]
    for name, node in task.methods.items():
        if node is None or ("checkpoint" in node and not node.checkpoint):
            log.warning("task.methods.%s: no checkpoint given, skipped", name)
            continue
        method = build(node).fit(data)
        log.info("evaluating %s", name)
        anon = anonymize_all(method, data, cfg.trainer.eval_batch_size)
        rows[name] = evaluate_method(ctx, data, orig, anon, judges, unseen, indep, name, ref)
        grid_rows.append(anon["test"][: task.n_samples])
        for k, v in rows[name].items():
            ctx.writer.add_scalar(f"{name}/{k}", v, 0)
    if not rows:
        raise PpganError("task.methods: nothing to evaluate")
    for name, path in (task.counterfactuals or {}).items():
        if path:
            log.info("evaluating the counterfactuals of %s", name)
            rows[f"{name}_cf"] = evaluate_counterfactual(
                ctx, data, ref, judges, unseen, indep, path
            )
    grid = rows_grid(grid_rows, out_dir / "samples" / "methods.png")
    ctx.writer.add_image("samples/original|" + "|".join(rows), grid, 0)

    chance = {
        "identity": 1.0 / data.n_ids,
        "identity_top5": min(1.0, 5.0 / data.n_ids),
        "disease": float(torch.bincount(labels_of(data, "test", "dis")).max())
        / len(data.indices("test")),
    }
    metrics = {f"{name}/{k}": v for name, row in rows.items() for k, v in row.items()}
    metrics |= {f"chance/{k}": v for k, v in chance.items()}
    for name, row in rows.items():  # scores for sweeps: higher is better for both
        if "utility/indep_acc" in row:
            metrics[f"{name}/privacy_score"] = 1.0 - row["privacy/unseen_acc"]
            metrics[f"{name}/utility_score"] = row["utility/indep_acc"]
    report = write_report(rows, chance, task.k, out_dir)
    log.info("report: %s", report)
    return ctx.finish(metrics)
