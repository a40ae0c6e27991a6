"""Task `explain`: case-based explanations of the disease network's decisions, made only of
anonymized cases. One PNG panel per query: the query with the prediction; the k most similar
anonymized training cases; the nearest anonymized case of another class; the query's anonymized
counterfactual. The case base (anonymized training images + their features) is built once and
saved in the run dir (`case_base.pt`), so later explanations are fast.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

from ppgan.data import load_dataset
from ppgan.data.hdf5 import load_images
from ppgan.data.sources import read_class_names
from ppgan.engine import (
    RunContext,
    load_checkpoint,
    load_frozen,
    load_frozen_parts,
    save_checkpoint,
)
from ppgan.engine.context import file_stamp, write_text
from ppgan.engine.images import to_unit
from ppgan.errors import PpganError
from ppgan.metrics.diversity import near_duplicate_fraction

log = logging.getLogger(__name__)


def case_base(ctx: RunContext, disease, shape: tuple[int, ...]) -> dict:
    """The anonymized training cases and their disease-network features (built once, cached).

    A saved case base is reused only while it matches its source: when `task.anonymized_file` is
    given, its path, size and modification time must equal those recorded at build time, else the
    case base is rebuilt (the default one in the run dir) or refused (one named by
    `task.case_base`, which this task does not overwrite).
    """
    task = ctx.cfg.task
    path = Path(task.case_base) if task.case_base else ctx.out_dir / "case_base.pt"
    source = file_stamp(task.anonymized_file) if task.anonymized_file else None
    if task.anonymized_file and not Path(task.anonymized_file).is_file():
        raise PpganError(f"task.anonymized_file: {task.anonymized_file} does not exist")
    if path.is_file():
        base = load_checkpoint(path, "task.case_base")
        if source is None or base.get("source") == source:
            log.info("case base: %s (%d cases)", path, len(base["dis"]))
            return {k: v.to(ctx.device) if isinstance(v, Tensor) else v for k, v in base.items()}
        if task.case_base:
            raise PpganError(
                f"task.case_base: {path} was built from {base.get('source')}, not from "
                f"task.anonymized_file={source['path']} as it is now; rebuild it"
            )
        log.info("case base %s is stale (its source changed): rebuilding", path)
    if not task.anonymized_file:
        raise PpganError(
            "task.anonymized_file: required to build the case base (the output of task=export)"
        )
    anon = load_images(task.anonymized_file, require_splits=("train",)).to(ctx.device)
    if anon.shape != tuple(shape):
        raise PpganError(
            f"task.anonymized_file: images of shape {anon.shape}, the disease network "
            f"expects {tuple(shape)}"
        )
    idx = anon.indices("train")
    images = torch.cat([b["images"] for b in anon.batches(idx, 256)])
    with torch.no_grad():
        feats = torch.cat(
            [disease.features(images[i : i + 256]) for i in range(0, len(images), 256)]
        )
    base = {
        "images": images,
        "dis": anon.dis[idx],
        "features": feats.float(),
        "case_id": release_case_ids(task.anonymized_file, idx.cpu().numpy()),
        "source": source,
    }
    save_checkpoint(path, {k: v.cpu() if isinstance(v, Tensor) else v for k, v in base.items()})
    log.info("built the case base: %d anonymized training cases -> %s", len(idx), path)
    return base


def release_case_ids(path: str | Path, rows: np.ndarray) -> list[str]:
    """The release's opaque `case_id` of `rows`. A file without one (an export of an older
    version, or another tool's) gets fresh random ids: its row numbers may be the original order,
    so they are never shown."""
    with h5py.File(path, "r") as f:
        if "case_id" in f and len(f["case_id"]) == len(f["images"]):
            return [bytes(v).decode() for v in f["case_id"][()][rows]]
    log.warning("%s has no case_id: naming its cases by fresh random ids", path)
    return [secrets.token_hex(8) for _ in rows]


def queries(ctx: RunContext, data, shape) -> tuple[Tensor, Tensor, list[str]]:
    """Query images [Q, C, H, W], their masks and names: test-split indices or an image file."""
    task = ctx.cfg.task
    if task.image:
        path = Path(task.image)
        if not path.is_file():
            raise PpganError(f"task.image: {path} does not exist")
        img = Image.open(path).convert("L" if shape[0] == 1 else "RGB")
        if img.size != (shape[2], shape[1]):
            raise PpganError(
                f"task.image: {path} is {img.size[0]}x{img.size[1]}, the networks "
                f"expect {shape[2]}x{shape[1]}"
            )
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).reshape(
            img.size[1], img.size[0], -1
        )
        x = (x.permute(2, 0, 1)[None] - 127.5) / 127.5
        return x.to(ctx.device), torch.ones_like(x[:, :1]), [path.stem]
    test = data.indices("test")
    if bad := [i for i in task.indices if not 0 <= i < len(test)]:
        raise PpganError(
            f"task.indices: {bad} out of range (the test split has {len(test)} images)"
        )
    b = data.batch(test[list(task.indices)])
    return b["images"], b["masks"], [f"test_{i:04d}" for i in task.indices]


def draw_panel(
    path: Path, query: Tensor, pred: str, cases: list[dict], other: dict, cf: dict | None
) -> plt.Figure:
    """One row: query | k nearest cases | nearest case of another class | counterfactual."""
    tiles = [(query, f"QUERY\n{pred}")]
    tiles += [
        (c["image"], f"case {c['case_id'][:6]}\n{c['label']}  d={c['distance']:.2f}") for c in cases
    ]
    tiles.append(
        (
            other["image"],
            f"nearest other class\n{other['case_id'][:6]} {other['label']}"
            f"  d={other['distance']:.2f}",
        )
    )
    if cf is not None:
        tiles.append((cf["image"], f"counterfactual\n{cf['label']}"))
    fig, axes = plt.subplots(1, len(tiles), figsize=(1.75 * len(tiles), 2.3), dpi=100)
    for ax, (img, title) in zip(np.atleast_1d(axes), tiles):
        x = to_unit(img).permute(1, 2, 0).numpy()
        ax.imshow(
            x[..., 0] if x.shape[2] == 1 else x,
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("anonymized cases only (similarity: disease-network features)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()  # written whole, then renamed: no half-written panel
    fig.savefig(buf, format="png")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return fig


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    ctx = RunContext(cfg, out_dir)
    task = cfg.task
    data = load_dataset(cfg.dataset, require_splits=()).to(ctx.device)
    disease, _ = (
        load_frozen(
            task.disease_ckpt, ctx.device, "task.disease_ckpt", {"in_shape": list(data.shape)}
        )
        if task.disease_ckpt
        else (None, None)
    )
    if disease is None:
        raise PpganError("task.disease_ckpt: required (the network whose decisions are explained)")
    # The config's names, else those a prepared file stores (task=prepare).
    names = list(
        task.class_names or cfg.dataset.get("class_names") or read_class_names(data.path) or []
    )
    if len(names) != data.n_classes:
        names = [f"class {i}" for i in range(data.n_classes)]
    base = case_base(ctx, disease, data.shape)
    enc = cf_dec = None
    if task.counterfactual_ckpt:
        (enc, cf_dec), _ = load_frozen_parts(
            task.counterfactual_ckpt,
            ("encoder", "cf_decoder"),
            data.shape,
            ctx.device,
            "task.counterfactual_ckpt",
        )
    images, masks, labels = queries(ctx, data, data.shape)
    panel_dir = out_dir / "panels"
    panel_dir.mkdir(parents=True, exist_ok=True)
    confidences, duplicates = [], []
    for x, mask, name in zip(images, masks, labels):
        with torch.no_grad():
            logits = disease(x[None])[0]
            d = torch.cdist(disease.features(x[None]).float(), base["features"])[0]
        pred = int(logits.argmax())
        order = d.argsort()
        cases = [_case(base, d, i, names) for i in order[: task.k]]
        others = order[base["dis"][order] != pred]
        if len(others) == 0:
            raise PpganError("the case base has no case of another class than the prediction")
        other = _case(base, d, others[0], names)
        cf = None
        if cf_dec is not None:
            with torch.no_grad():
                cf_img = cf_dec(enc(x[None], mask[None])[0])[0]
                cf = {"image": cf_img, "label": _verdict(disease(cf_img[None])[0], names)}
        fig = draw_panel(panel_dir / f"{name}.png", x, _verdict(logits, names), cases, other, cf)
        ctx.writer.add_figure(f"explain/{name}", fig, 0)
        plt.close(fig)
        record = {
            "query": name,
            "prediction": names[pred],
            "confidence": float(logits.softmax(0).max()),
            "case_base": (base.get("source") or {}).get("path"),
            "cases": [_strip(c) for c in cases],
            # Share of the k cases with a near-copy among the others: 1 = one picture k times.
            "near_duplicate_fraction": near_duplicate_fraction(
                torch.stack([c["image"] for c in cases]), task.duplicate_tol
            ),
            "other_class_case": _strip(other),
            "counterfactual": None if cf is None else cf["label"],
        }
        write_text(panel_dir / f"{name}.json", json.dumps(record, indent=2))
        confidences.append(record["confidence"])
        duplicates.append(record["near_duplicate_fraction"])
    log.info("wrote %d explanation panels to %s", len(labels), panel_dir)
    return ctx.finish(
        {
            "n_panels": len(labels),
            "case_base_size": len(base["dis"]),
            "mean_confidence": float(np.mean(confidences)),
            "near_duplicate_fraction": float(np.mean(duplicates)),
        }
    )


def _verdict(logits: Tensor, names: list[str]) -> str:
    return f"{names[int(logits.argmax())]} ({float(logits.softmax(0).max()):.2f})"


def _case(base: dict, d: Tensor, i: Tensor, names: list[str]) -> dict:
    i = int(i)
    return {
        "case_id": base["case_id"][i],
        "label": names[int(base["dis"][i])],
        "distance": float(d[i]),
        "image": base["images"][i],
    }


def _strip(case: dict) -> dict:
    return {k: v for k, v in case.items() if k != "image"}
