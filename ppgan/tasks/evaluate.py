"""Task `evaluate`: privacy, utility, realism and retrieval of every anonymizer, by one suite.

Privacy is measured by attackers the generator never saw, not only by the frozen networks it was
trained to fool: an unseen identity classifier of another architecture, adaptive attackers of
several kinds trained on the anonymized training split and tuned on the anonymized validation split
(`ppgan.attackers`), and linkage of anonymized images to the original training images.
A shipped release (`task.release_files`) is attacked as a file too: row order, masks, metadata and
pixels joined to the original file. Every rate comes with a bootstrap 95 % interval and is shown
next to the same attack on the original images and chance. `task.split` is `test` for the one
final table and `val` for every choice made from numbers (sweeps, defaults).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ppgan.baselines import Anonymizer, quantize
from ppgan.data import SPLITS, ImageData, load_dataset
from ppgan.data.hdf5 import load_images
from ppgan.data.release import export_release
from ppgan.engine import (
    RunContext,
    build,
    build_model,
    frozen_from,
    load_checkpoint,
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
from ppgan.metrics import release as side
from ppgan.metrics.bootstrap import CI_HI, CI_LO, clustered_auc_ci, mean_ci
from ppgan.metrics.classification import classification_metrics, topk_accuracy
from ppgan.metrics.diversity import diversity_ratio
from ppgan.metrics.openset import openset_attacks
from ppgan.metrics.realism import fid_kid, region_psnr, region_ssim
from ppgan.metrics.report import adaptive_key, write_report
from ppgan.metrics.retrieval import precision_per_query
from ppgan.metrics.verification import rank_k_hits, verification_metrics
from ppgan.models.resnet import FeatureExtractor

log = logging.getLogger(__name__)
EVAL_SPLITS = ("val", "test")


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (data sets and checkpoints here are MBs: a fraction of a second)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(**parts) -> str:
    """A short hash of what an attacker was trained on (configs, data and checkpoint digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_network(ctx: RunContext, name: str, key: str, fit: Callable) -> nn.Module:
    """The network `fit()` returns (a `(net, spec)` pair), saved under `<run dir>/attackers/`
    with `key` (see `cache_key`: the data, the method's checkpoint and the attack config it was
    trained with) and reused by a re-run only while the key matches: a killed evaluation
    continues without retraining, a changed generator, attack config or data set retrains."""
    path = ctx.out_dir / "attackers" / f"{name}.pt"
    if path.is_file():
        ckpt = load_checkpoint(path, f"attackers/{name}.pt")
        if ckpt.get("cache_key") == key:
            return frozen_from(ckpt, "model", ctx.device, f"attackers/{name}.pt")
        log.info("attacker %s was trained on other inputs: retraining", name)
    log.info("training attacker %s", name)
    net, spec = fit()
    save_checkpoint(path, snapshot(0, {"model": (net, spec)}, {}, cache_key=key))
    return net.eval().requires_grad_(False)


def train_attacker(
    ctx: RunContext,
    name: str,
    data: ImageData,
    images: dict,
    labels: str,
    n_classes: int,
    seed: int,
    key: str,
) -> nn.Module:
    """Train a network of `task.attacker`'s architecture on the original `images` with labels
    `labels` for `task.attack.epochs` (the unseen attacker, the independent disease network)."""
    task = ctx.cfg.task

    def fit():
        torch.manual_seed(seed)  # its own initialisation: a different seed from the judges
        net, spec = build_model(task.attacker, in_shape=list(data.shape), n_classes=n_classes)
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
        return net, spec

    return cached_network(ctx, name, key, fit)


def fit_adaptive(
    ctx: RunContext, method: str, data: ImageData, anon: Mapping[str, Tensor], key: dict
) -> dict[str, nn.Module]:
    """The adaptive attackers of `task.adaptive` for one method ({attacker name: network}).

    Each learns identity from the method's anonymized training split with the true identities
    and makes every choice (stopping epoch, regularisation, k) on the anonymized validation
    split; `anon`'s evaluated split is not read here (a test checks it). `key`: what the method's
    outputs depend on; each attacker's cache key adds its own resolved config.
    """
    train = (anon["train"], labels_of(data, "train", "id"))
    val = (anon["val"], labels_of(data, "val", "id"))
    nets = {}
    for name, node in (ctx.cfg.task.adaptive or {}).items():
        if node is None:
            continue
        spec = OmegaConf.to_container(node, resolve=True)  # ${task.attacker} resolved here
        attacker = build(OmegaConf.create(spec))

        def fit(attacker=attacker):
            return attacker.fit(train, val, data.n_ids, ctx.seed + 3, ctx.progress)

        nets[name] = cached_network(
            ctx, f"adaptive_{method}_{name}", cache_key(**key, attacker=spec), fit
        )
    if not nets:
        raise PpganError("task.adaptive: no adaptive attacker configured")
    return nets


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


def _hits(logits: Tensor, labels: Tensor) -> np.ndarray:
    return (logits.argmax(1) == labels).cpu().numpy()


class Scores(dict):
    """A method's metrics; rates get their bootstrap interval as `<key>_ci_lo/_ci_hi`."""

    def __init__(self, boot: DictConfig):
        super().__init__()
        self.boot = boot

    def rate(self, key: str, per_item) -> None:
        values = np.asarray(per_item, dtype=np.float64)
        self[key] = float(values.mean()) if len(values) else float("nan")
        self[key + CI_LO], self[key + CI_HI] = mean_ci(values, self.boot.n, self.boot.seed)

    def auc(self, key: str, d: Tensor, same: Tensor, keep: Tensor | None = None) -> None:
        """Verification AUC of query-gallery distances `d` [Q, G] (`same`: same identity) over
        the pairs `keep` (default all), its interval resampling queries (a query's pairs are
        not independent)."""
        keep = torch.ones_like(same) if keep is None else keep
        self[key] = verification_metrics(d[same & keep], d[~same & keep])["auc"]
        q, g = d.shape
        flat = keep.cpu().numpy().ravel()
        self[key + CI_LO], self[key + CI_HI] = clustered_auc_ci(
            -d.double().cpu().numpy().ravel()[flat],
            same.cpu().numpy().ravel()[flat],
            np.repeat(np.arange(q), g)[flat],
            q,
            self.boot.n,
            self.boot.seed,
        )


def linkage_spaces(judges: Judges, unseen: nn.Module, bs: int) -> dict:
    """The embeddings linkage ranks by: siamese embedding and unseen-network features."""
    return {
        "siamese": lambda x: _outputs(judges.siamese, x, bs).float(),
        "unseen": lambda x: _features(unseen, x, bs).float(),
    }


def original_references(
    orig: dict, judges: Judges, unseen: nn.Module, indep: nn.Module, split: str, bs: int
) -> dict:
    """What every method is compared against, computed once: the original training images in
    each linkage space, and the disease networks' logits and features on the evaluated split."""
    spaces = linkage_spaces(judges, unseen, bs)
    return {
        "gallery": {space: embed(orig["train"]) for space, embed in spaces.items()},
        "disease_logits": _outputs(judges.disease, orig[split], bs),
        "disease_features": _features(judges.disease, orig[split], bs),
        "indep_features": _features(indep, orig[split], bs),
    }


def evaluate_method(
    ctx, data, orig, anon, judges, unseen, indep, name: str, ref: dict, keys: dict
) -> Scores:
    """Every metric of one anonymizer on `task.split` (`ref`: see `original_references`)."""
    task, bs, seed = ctx.cfg.task, ctx.cfg.trainer.eval_batch_size, ctx.seed
    split = task.split
    ids, train_ids = labels_of(data, split, "id"), labels_of(data, "train", "id")
    dis, train_dis = labels_of(data, split, "dis"), labels_of(data, "train", "dis")
    masks = data.split_tensors(split)["masks"]
    m = Scores(task.bootstrap)

    # Privacy: seen, unseen and adaptive identity classifiers; linkage to the originals.
    identity_attacks(
        m, anon[split], ref["gallery"], ids, train_ids, judges, unseen, bs, dis, train_dis
    )
    spaces = linkage_spaces(judges, unseen, bs)
    m.update(openset_attacks(spaces, anon[split], orig[split], ids, train_ids))
    # Adaptive attackers, trained and chosen on the anonymized train / val splits; the strongest
    # on the evaluated split is the method's adaptive attack (as privacy_ratios takes the worst
    # attack): a max over a few attackers on the evaluated images favours the attacker, which is
    # the conservative side for privacy.
    adaptive = fit_adaptive(ctx, name, data, anon, keys["adaptive"])
    for attacker, net in adaptive.items():
        m.rate(adaptive_key(attacker), _hits(_outputs(net, anon[split], bs), ids))
    strongest = max(adaptive, key=lambda a: m[adaptive_key(a)])
    for suffix in ("", CI_LO, CI_HI):
        m["privacy/adaptive_acc" + suffix] = m[adaptive_key(strongest) + suffix]

    # Utility: disease recognition on anonymized images.
    logits = _outputs(judges.disease, anon[split], bs)
    for k, v in classification_metrics(logits, dis, data.n_classes).items():
        m[f"utility/disease_{k}"] = v
    m.rate("utility/disease_acc", _hits(logits, dis))
    m.rate("utility/agreement", _hits(logits, ref["disease_logits"].argmax(1)))
    indep_logits = _outputs(indep, anon[split], bs)
    for k, v in classification_metrics(indep_logits, dis, data.n_classes).items():
        m[f"utility/indep_{k}"] = v
    m.rate("utility/indep_acc", _hits(indep_logits, dis))
    if ref["indep_others"]:  # task.indep_networks > 1: the range over every network
        accs = [m["utility/indep_acc"]]
        accs += [
            float(_hits(_outputs(net, anon[split], bs), dis).mean()) for net in ref["indep_others"]
        ]
        m["utility/indep_acc_nets_min"], m["utility/indep_acc_nets_max"] = min(accs), max(accs)

    # Collapse: within-class spread in the independent disease network's feature space, as a
    # ratio to the originals' (a class prototype scores 0, the originals 1).
    anon_indep = _features(indep, anon[split], bs)
    m["realism/diversity"] = diversity_ratio(anon_indep, ref["indep_features"], dis)

    # Realism: in the unseen identity network's feature space (in-domain, never seen by the GAN)
    # and in the disease network's, where a changed identity does not count as unrealistic.
    m["realism/fid"], m["realism/kid"], _ = fid_kid(
        orig[split], anon[split], FeatureExtractor(unseen), bs, seed
    )
    m["realism/fid_disease"], m["realism/kid_disease"], _ = fid_kid(
        orig[split], anon[split], FeatureExtractor(judges.disease, data.shape), bs, seed
    )
    regions = [("roi", masks)] + ([("outside", 1 - masks)] if data.has_masks else [])
    for region, mask in regions:
        m[f"realism/ssim_{region}"] = float(region_ssim(orig[split], anon[split], mask).nanmean())
        m[f"realism/psnr_{region}"] = float(region_psnr(orig[split], anon[split], mask).nanmean())

    # Retrieval: nearest anonymized training cases of each (original) query, disease features.
    base = _features(judges.disease, anon["train"], bs)
    m.rate(
        f"retrieval/precision_at_{task.k}",
        precision_per_query(ref["disease_features"], dis, base, train_dis, task.k).cpu().numpy(),
    )
    return m


def identity_attacks(
    m: Scores,
    anon: Tensor,
    gallery: dict[str, Tensor],
    ids: Tensor,
    train_ids: Tensor,
    judges: Judges,
    unseen: nn.Module,
    bs: int,
    dis: Tensor | None = None,
    train_dis: Tensor | None = None,
) -> None:
    """Seen and unseen identity classifiers, and linkage of each anonymized image to the
    original training images, whose embeddings in each linkage space are `gallery`.

    With the disease labels, also the linkage AUC over pairs of the same disease
    (`..._auc_same_disease`, chance 0.5): where the disease is a trait of the person, a release
    that keeps it is closer to its own person's originals than to a random other person's (half
    of whom have another disease) by the disease alone -- a class prototype scores above 0.5 --
    so the plain AUC cannot tell identity leakage from kept disease evidence."""
    m.rate("privacy/seen_acc", _hits(_outputs(judges.identity, anon, bs), ids))
    logits = _outputs(unseen, anon, bs)
    m.rate("privacy/unseen_acc", _hits(logits, ids))
    m["privacy/unseen_top5"] = topk_accuracy(logits, ids, 5)
    same = ids[:, None] == train_ids[None, :]
    for space, embed in linkage_spaces(judges, unseen, bs).items():
        d = torch.cdist(embed(anon), gallery[space])  # [Q, G]
        for k in (1, 5):
            m.rate(f"privacy/link_{space}_rank{k}", rank_k_hits(d, ids, train_ids, k).cpu())
        m.auc(f"privacy/link_{space}_auc", d, same)
        if dis is not None and train_dis is not None:
            same_dis = dis[:, None] == train_dis[None, :]
            m.auc(f"privacy/link_{space}_auc_same_disease", d, same, same_dis)


def privacy_ratios(row: dict, chance_disease: float) -> dict[str, float]:
    """Each learned attack relative to `chance | disease`, the floor any disease-keeping output
    leaves an attacker; the worst of them is the method's privacy (paper: privacy is judged by
    the strongest attacker, not by the network the generator was trained against)."""
    keys = [
        "privacy/unseen_acc",
        "privacy/adaptive_acc",
        "privacy/link_siamese_rank1",
        "privacy/link_unseen_rank1",
    ]
    return {k: row[k] / chance_disease for k in keys if k in row}


def evaluate_counterfactual(ctx, data, ref, judges, unseen, indep, path: str) -> dict:
    """Flip rate (training and independent disease networks, toward the same target), proximity
    outside the ROI, realism and the identity attacks, for the counterfactuals of `task.split`."""
    task, bs = ctx.cfg.task, ctx.cfg.trainer.eval_batch_size
    (enc, dec, cf_dec), ckpt = load_frozen_parts(
        path, ("encoder", "decoder", "cf_decoder"), data.shape, ctx.device, "task.counterfactuals"
    )
    split = task.split
    images = data.split_tensors(split)
    with torch.no_grad():
        z = torch.cat([enc(b["images"], b["masks"])[0] for b in data.batches(split, bs)])
        factual = torch.cat([dec(z[i : i + bs]) for i in range(0, len(z), bs)])
        cf = quantize(torch.cat([cf_dec(z[i : i + bs]) for i in range(0, len(z), bs)]))
    # The target is the one the counterfactual was trained toward (stored in its checkpoint),
    # from the training disease network's decision on the original; both networks are scored
    # against it (with K > 2 the independent network's own "other class" may differ).
    target_class = ckpt.get("target_class", task.cf_target)
    target = target_classes(_outputs(judges.disease, images["images"], bs), target_class)
    m = Scores(task.bootstrap)
    for tag, net in (("", judges.disease), ("indep_", indep)):
        m.rate(f"cf/{tag}flip_rate", _hits(_outputs(net, cf, bs), target))
    if data.has_masks:  # without masks there is no "outside the ROI" to keep
        outside = 1 - images["masks"]
        m["cf/ssim_outside"] = float(region_ssim(factual, cf, outside).nanmean())
        m["cf/psnr_outside"] = float(region_psnr(factual, cf, outside).nanmean())
    m["realism/fid"], m["realism/kid"], _ = fid_kid(
        images["images"], cf, FeatureExtractor(unseen), bs, ctx.seed
    )
    identity_attacks(
        m, cf, ref["gallery"], images["id"], labels_of(data, "train", "id"), judges, unseen, bs
    )
    spaces, train_ids = linkage_spaces(judges, unseen, bs), labels_of(data, "train", "id")
    m.update(openset_attacks(spaces, cf, images["images"], images["id"], train_ids))
    return m


def release_side_channels(
    path: str,
    data: ImageData,
    anon: dict[str, Tensor],
    split: str,
    boot: DictConfig,
    bs: int,
    method: Anonymizer | None = None,
) -> Scores:
    """Attack an exported release file (`task=export`) with the original file in hand.

    The truth (who each released row shows) is known to the evaluation only: the release's `id`
    if it was exported with `task.keep_identity=true`, else `match_truth` against the method's
    outputs (`anon`, the same generator at z = mu). All rates are means over rows, so they do not
    depend on the release's (random) order.

    A stochastic method (PP-RID draws a new person per image and per export) matches none of its
    own outputs: from the shipped file nobody can tell who a row shows, the evaluation included.
    Its file is then checked for what the exporter writes (columns, attributes), and the joins
    are scored on a *twin*: the same exporter and `method`, identities recorded, written to a
    temporary directory and deleted (`release/twin` = 1). A deterministic method (or none given)
    whose release matches none of its outputs is an error (another checkpoint's file), never a
    made-up truth.
    """
    rel = load_images(path, require_splits=(split,))
    if rel.shape != data.shape:
        raise PpganError(f"task.release_files: {path} holds images of shape {rel.shape}")
    r_idx = rel.indices(split).cpu()
    o_idx = data.indices(split).cpu()
    orig_ids = data.ids.cpu().numpy()
    rel_images = rel.batch(r_idx)["images"].cpu()
    if rel.ids is not None:
        true_ids = rel.ids[r_idx].numpy()
    else:
        outputs = quantize(anon[split]).cpu()
        true_ids = side.match_truth(rel_images, outputs, orig_ids[o_idx.numpy()], data.n_ids)
        if true_ids is None:
            if method is None or not method.stochastic:  # a deterministic method must match
                raise PpganError(
                    f"task.release_files: {path}: its images match no output of this method "
                    "(exported by another checkpoint?)"
                )
            return twin_side_channels(path, rel, data, anon, split, boot, bs, method)
    rel_split, orig_split = rel.split.cpu().numpy(), data.split.cpu().numpy()
    rel_dis, orig_dis = rel.dis[r_idx].cpu().numpy(), data.dis.cpu().numpy()
    m = Scores(boot)

    def score(key: str, guess: np.ndarray) -> None:
        m.rate(f"release/{key}", side.identity_hits(guess, true_ids, orig_ids))

    score("position_join", side.position_join(rel_split, orig_split)[r_idx.numpy()])
    m["release/position_chance"] = side.chance_rate(
        true_ids, rel_split[r_idx.numpy()], orig_ids, orig_split
    )
    with h5py.File(path, "r") as f:
        cols = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset) and k != "images"}
        m["release/n_attributes"] = float(
            len(f.attrs) + sum(len(f[k].attrs) for k in f if isinstance(f[k], h5py.Dataset))
        )
    with h5py.File(data.path, "r") as f:
        orig_cols = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset) and k != "images"}
    if "masks" in cols and data.has_masks:
        orig_masks = data.masks[:, 0].cpu().numpy()
        score("mask_join", side.mask_join(cols["masks"][r_idx.numpy()], orig_masks))
    rel_cols = {k: v[r_idx.numpy()] for k, v in cols.items() if v.shape[:1] == (len(rel),)}
    candidates, _ = side.metadata_join(rel_cols, orig_cols)
    m.rate("release/metadata_join", side.candidate_hits(candidates, true_ids, orig_ids))
    score("pixel_join", side.pixel_join(rel_images, data.images.cpu(), bs))
    m["release/join_chance"] = side.chance_rate(true_ids, rel_dis, orig_ids, orig_dis)
    return m


def twin_side_channels(
    path: str,
    rel: ImageData,
    data: ImageData,
    anon: dict[str, Tensor],
    split: str,
    boot: DictConfig,
    bs: int,
    method: Anonymizer,
) -> Scores:
    """The side channels of a stochastic method's release, scored on a twin export (see
    `release_side_channels`): the shipped file must have the twin's columns (less `id`)."""
    splits = [s for s in SPLITS if len(rel.indices(s))]
    idx = torch.cat([data.indices(s) for s in splits]).sort().values
    with h5py.File(path, "r") as f:
        shipped = {k for k in f if isinstance(f[k], h5py.Dataset)}
        n_attributes = len(f.attrs) + sum(len(f[k].attrs) for k in shipped)
    masks = "class_canonical" if "masks" in shipped else "none"
    log.info("%s: a stochastic release; scoring its side channels on a twin export", path)
    with tempfile.TemporaryDirectory(prefix="ppgan-twin-") as tmp:
        twin = Path(tmp) / "twin.h5"
        export_release(twin, data, idx, method, bs, masks=masks, keep_identity=True)
        with h5py.File(twin, "r") as f:
            expected = {k for k in f if isinstance(f[k], h5py.Dataset)} - {"id"}
        if shipped != expected:
            raise PpganError(
                f"task.release_files: {path} has columns {sorted(shipped)}, the exporter writes "
                f"{sorted(expected)}: not a release of this exporter, its side channels unknown"
            )
        m = release_side_channels(str(twin), data, anon, split, boot, bs)
    m["release/n_attributes"] = float(n_attributes)  # the shipped file's own
    m["release/twin"] = 1.0
    return m


def chance_levels(data: ImageData, split: str) -> dict[str, float]:
    """Chance rates. `identity_disease` (`chance | disease`): an output that keeps the disease
    lets an attacker guess among the identities with that disease only, so the floor is the mean
    over evaluated images of 1 / #(training identities with the image's disease)."""
    ids, dis = labels_of(data, "train", "id"), labels_of(data, "train", "dis")
    per_class = {int(c): len(torch.unique(ids[dis == c])) for c in torch.unique(dis)}
    eval_dis = labels_of(data, split, "dis")
    return {
        "identity": 1.0 / data.n_ids,
        "identity_top5": min(1.0, 5.0 / data.n_ids),
        "identity_disease": float(
            np.mean([1.0 / max(per_class.get(int(c), data.n_ids), 1) for c in eval_dis.cpu()])
        ),
        "disease": float(torch.bincount(eval_dis).max()) / len(eval_dis),
    }


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    if task.split not in EVAL_SPLITS:
        raise PpganError(f"task.split={task.split}: choose from {list(EVAL_SPLITS)}")
    data = load_dataset(cfg.dataset, require_splits=SPLITS).to(ctx.device)
    if data.lazy:
        raise PpganError(
            f"{data.path}: task=evaluate holds the splits in memory; raise dataset.in_memory_max_gb"
        )
    data.require_ids("task=evaluate")
    more = int(task.get("indep_networks", 1))
    if more < 1:
        raise PpganError(f"task.indep_networks={more}: must be >= 1")
    bs, split = cfg.trainer.eval_batch_size, task.split
    judges = load_judges(task, data, ctx.device, ("disease", "identity", "siamese"))
    orig = {s: data.split_tensors(s)["images"] for s in SPLITS}
    attack_cfg = OmegaConf.to_container(OmegaConf.masked_copy(task, ["attacker", "attack"]))
    base_key = {"data": file_digest(data.path), "attack": attack_cfg, "seed": ctx.seed}
    unseen_key, indep_key = (cache_key(**base_key, labels=lab) for lab in ("id", "dis"))
    unseen = train_attacker(
        ctx, "unseen_identity", data, orig, "id", data.n_ids, ctx.seed + 1, unseen_key
    )
    indep = train_attacker(
        ctx, "independent_disease", data, orig, "dis", data.n_classes, ctx.seed + 2, indep_key
    )
    # Further independent disease networks, each from its own seed: how much the score of a
    # release depends on which network judges it (the bootstrap covers the images only).
    others = [
        train_attacker(
            ctx,
            f"independent_disease_{k}",
            data,
            orig,
            "dis",
            data.n_classes,
            ctx.seed + 2 + 1000 * k,
            cache_key(**base_key, labels="dis", network=k),
        )
        for k in range(1, more)
    ]

    ref = original_references(orig, judges, unseen, indep, split, bs)
    ref["indep_others"] = others
    rows: dict[str, dict[str, float]] = {}
    seen: dict[str, str] = {}
    grid_rows = [orig[split][: task.n_samples]]
    releases = {k: v for k, v in (task.release_files or {}).items() if v}
    for name, node in task.methods.items():
        if node is None or ("checkpoint" in node and not node.checkpoint):
            log.warning("task.methods.%s: no checkpoint given, skipped", name)
            continue
        method = build(node).fit(data)
        log.info("evaluating %s", name)
        # A stochastic method (PP-RID draws a new person per image) is drawn from the run's seed,
        # not from whatever RNG state the previous methods left (their attackers trained or loaded
        # from the cache): same seed, same release, and its cached adaptive attackers were
        # trained on this very draw ("draw" in their key). Attackers seed themselves.
        torch.manual_seed(ctx.seed)
        anon = anonymize_all(method, data, bs)
        node_cfg = OmegaConf.to_container(node, resolve=True)
        if node_cfg.get("checkpoint"):
            node_cfg["checkpoint"] = file_digest(node_cfg["checkpoint"])
        if "temperature" in node_cfg and node_cfg["temperature"] is None:
            # null: the checkpoint's, as fit resolved it (a given value keeps its key as it was,
            # so the attackers cached for it are found again)
            node_cfg["temperature"] = method.temperature
        keys = {"adaptive": {"data": base_key["data"], "seed": ctx.seed, "method": node_cfg}}
        if method.stochastic:
            keys["adaptive"]["draw"] = "seeded"
        rows[name] = evaluate_method(ctx, data, orig, anon, judges, unseen, indep, name, ref, keys)
        # What the method was trained against: PP-MIR the identity classifier, PP-SIR the siamese
        # network; the baselines nothing. The report marks a "seen" column the method never saw.
        seen[name] = {"mir": "identity", "sir": "siamese"}.get(getattr(method, "variant", ""), "")
        if name in releases:
            log.info("attacking the release of %s: %s", name, releases[name])
            torch.manual_seed(ctx.seed + 1)  # a twin export's draw, as above
            rows[name] |= release_side_channels(
                releases[name], data, anon, split, task.bootstrap, bs, method
            )
        grid_rows.append(anon[split][: task.n_samples])
        for k, v in rows[name].items():
            ctx.writer.add_scalar(f"{name}/{k}", v, 0)
    if not rows:
        raise PpganError("task.methods: nothing to evaluate")
    if unknown := sorted(set(releases) - set(rows)):
        raise PpganError(f"task.release_files: {unknown} are not evaluated methods")
    for name, path in (task.counterfactuals or {}).items():
        if path:
            log.info("evaluating the counterfactuals of %s", name)
            torch.manual_seed(ctx.seed)  # PP-RID's counterfactuals draw their person too
            rows[f"{name}_cf"] = evaluate_counterfactual(
                ctx, data, ref, judges, unseen, indep, path
            )
    grid = rows_grid(grid_rows, out_dir / "samples" / "methods.png")
    ctx.writer.add_image("samples/original|" + "|".join(rows), grid, 0)

    chance = chance_levels(data, split)
    for row in rows.values():  # scores for sweeps: higher is better for both, in [0, 1]
        if "utility/indep_acc" in row:
            ratios = privacy_ratios(row, chance["identity_disease"])
            row["privacy/worst_ratio"] = max(ratios.values())
            row["privacy_score"] = min(1.0, 1.0 / max(row["privacy/worst_ratio"], 1e-12))
            # A method that shows one image per class keeps the disease and hides everyone, so
            # privacy alone cannot tell it from a good anonymizer: utility is discounted by the
            # within-class diversity (relative to the originals, capped at 1), so a sweep cannot
            # converge on collapse.
            diversity = row.get("realism/diversity", 1.0)
            row["utility_score"] = row["utility/indep_acc"] * min(1.0, max(diversity, 0.0))
    metrics = {f"{name}/{k}": v for name, row in rows.items() for k, v in row.items()}
    metrics |= {f"chance/{k}": v for k, v in chance.items()}
    notes = []
    if not data.has_masks:
        notes.append(
            f"{data.path} has no ROI masks: ROI metrics use the whole image; outside-ROI "
            "metrics (SSIM/PSNR outside, counterfactual proximity) are skipped."
        )
    if split == "val":
        notes.append(
            "Validation split (for choices: sweeps, defaults). The attackers also pick their "
            "epoch on validation, which favours them: a conservative privacy estimate."
        )
    report = write_report(rows, chance, task.k, out_dir, split=split, seen=seen, notes=notes)
    log.info("report: %s", report)
    return ctx.finish(metrics)
