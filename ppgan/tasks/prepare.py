"""Task `prepare`: a folder of images (with a manifest CSV, as class folders, or the paper's iris
data set) -> a validated HDF5 file in the format every other task reads.

Bad input stops with one line naming the file and the problem (`task.on_error=fail`), or drops
the file and counts it (`skip`). The file is written under a temp name and renamed when complete,
then re-opened by the same validator the training tasks use.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ppgan.data.hdf5 import DEFAULT_SPLIT_CODES, atomic_h5, load_images
from ppgan.data.iris import IrisParams, preprocess, warsaw_records
from ppgan.data.sources import (
    RESAMPLE,
    SPLIT_NAMES,
    BadImage,
    Collection,
    Issues,
    Record,
    assign_splits,
    load_record,
    read_manifest,
    scan_folders,
    write_subject_map,
)
from ppgan.engine import RunContext, run_file
from ppgan.errors import PpganError

log = logging.getLogger(__name__)


def _path(value: str) -> Path:
    return Path(to_absolute_path(str(value)))


def check_options(task: DictConfig) -> None:
    """Refuse bad option values before any file is read."""
    if task.size is not None and (task.size % 16 or not 32 <= task.size <= 256):
        raise PpganError(f"task.size={task.size}: must be a multiple of 16 in 32..256")
    if task.channels not in (None, 1, 3):
        raise PpganError(f"task.channels={task.channels}: choose 1 (grey), 3 (RGB) or null")
    if task.resample not in RESAMPLE:
        raise PpganError(f"task.resample={task.resample}: choose from {sorted(RESAMPLE)}")
    if task.split not in ("image", "subject"):
        raise PpganError(f"task.split={task.split}: choose image or subject")
    ratios = list(task.ratios)
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or ratios[1] <= 0:
        raise PpganError(f"task.ratios={ratios}: three ratios (train, val, test), train, val > 0")
    if not task.root:
        raise PpganError("task.root: required (the folder of the images)")


def collect(task: DictConfig, issues: Issues) -> tuple[Collection, Callable]:
    """The records of the configured source and the function that loads one of them."""
    root = _path(task.root)
    classes = list(task.classes) if task.classes else None
    channels, method = task.channels, task.resample
    if task.layout == "warsaw_iris":
        raw = OmegaConf.to_container(task.iris, resolve=True)
        try:
            params = IrisParams(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
            )
        except TypeError as exc:
            raise PpganError(f"task.iris: {exc}") from exc
        return warsaw_records(root, params, issues), partial(
            preprocess, channels=channels, size=task.size or 64, method=method, p=params
        )
    if task.layout is not None:
        raise PpganError(f"task.layout={task.layout}: choose null or warsaw_iris")
    if task.manifest:
        col = read_manifest(_path(task.manifest), root, issues, classes)
    else:
        col = scan_folders(root, task.subject_pattern, issues, task.mask_suffix, classes)
    return col, partial(load_record, channels=channels, size=task.size, method=method)


def _valid_size(hw: tuple[int, int]) -> bool:
    return hw[0] == hw[1] and hw[0] % 16 == 0 and 32 <= hw[0] <= 256


def load_all(ctx: RunContext, col: Collection, loader, issues: Issues, task: DictConfig):
    """Every readable record's image and mask; mixed channels or sizes are refused."""
    kept, images, masks, first = [], [], [], {}
    for rec in ctx.progress(col.records, desc="prepare", unit="img"):
        try:
            img, mask, native = loader(rec)
        except BadImage as exc:
            issues(exc.reason, str(exc))
            continue
        # The files must agree on what was not fixed by the config: the first one sets it.
        kind = {"channels": native} if task.channels is None else {}
        if task.size is None:
            kind["size"] = img.shape[:2]
        if not first and task.size is None and not _valid_size(img.shape[:2]):
            raise PpganError(
                f"{rec.path}: {img.shape[1]}x{img.shape[0]} px cannot be kept as it is (square, "
                "a multiple of 16 in 32..256); set task.size"
            )
        for key, value in kind.items():
            if first.setdefault(key, (value, rec.path))[0] != value:
                hint = "set task.channels=1 or 3" if key == "channels" else "set task.size"
                raise PpganError(
                    f"{rec.path}: {key} {value} differs from {first[key][0]} of "
                    f"{first[key][1]} (mixed {key}; {hint} to convert)"
                )
        kept.append(rec)
        images.append(img)
        masks.append(mask)
    return kept, images, masks


def drop_small_subjects(recs: list[Record], minimum: int, issues: Issues) -> list[bool]:
    """Keep-flags: a subject with fewer than `minimum` images cannot be recognised or linked."""
    n = Counter(r.subject for r in recs)
    keep = []
    for r in recs:
        ok = n[r.subject] >= minimum
        if not ok:
            issues(
                "small_subject",
                f"{r.path}: its subject has {n[r.subject]} image(s), identity tasks need "
                f"{minimum} (task.min_images_per_subject)",
            )
        keep.append(ok)
    return keep


def splits_of(recs: list[Record], task: DictConfig, seed: int) -> list[str]:
    """train/val/test per record: the manifest's own column, else a seeded stratified deal."""
    if recs and recs[0].split is not None:
        return [r.split for r in recs]
    ratios = list(task.ratios)
    if task.split == "image":
        # Sorted by class then subject: each class is split in the ratios, and a subject's images
        # are dealt consecutively, so they spread over the splits (closed-set, like the paper).
        units = [str(r.path) for r in recs]
        deal = assign_splits([(r.label, r.subject) for r in recs], units, ratios, seed)
        return [deal[u] for u in units]
    # A subject's class is its most frequent label (labels are per eye/patient in the iris data).
    labels: dict[str, Counter] = {}
    for r in recs:
        labels.setdefault(r.subject, Counter())[r.label] += 1
    subjects = sorted(labels)
    keys = [(labels[s].most_common(1)[0][0],) for s in subjects]
    deal = assign_splits(keys, subjects, ratios, seed)
    return [deal[r.subject] for r in recs]


def run(cfg: DictConfig, out_dir: Path) -> dict[str, float]:
    task = cfg.task
    check_options(task)
    path = run_file(out_dir, task.filename)
    issues = Issues(task.on_error)
    ctx = RunContext(cfg, out_dir)
    col, loader = collect(task, issues)
    if not col.records:
        raise PpganError(f"{_path(task.root)}: no images found")
    # Counted before reading (fail fast on a large set) and again after files were skipped.
    keep = drop_small_subjects(col.records, task.min_images_per_subject, issues)
    col.records = [r for r, k in zip(col.records, keep) if k]
    recs, images, masks = load_all(ctx, col, loader, issues, task)
    keep = drop_small_subjects(recs, task.min_images_per_subject, issues)
    recs = [r for r, k in zip(recs, keep) if k]
    images = [x for x, k in zip(images, keep) if k]
    masks = [m for m, k in zip(masks, keep) if k]
    classes = list(col.classes)
    for name in list(classes):
        if not any(r.label == name for r in recs):
            issues("empty_class", f"class '{name}': no images left (task.root={task.root})")
            classes.remove(name)
    if not recs:
        raise PpganError(f"{_path(task.root)}: no usable images left (see the skipped files)")

    subjects = sorted({r.subject for r in recs})
    ids = np.searchsorted(subjects, [r.subject for r in recs]).astype(np.int64)
    dis = np.array([classes.index(r.label) for r in recs], dtype=np.int64)
    split = splits_of(recs, task, ctx.seed)
    sets = np.array([DEFAULT_SPLIT_CODES[s] for s in split], dtype=np.int64)
    wanted = [s for s, ratio in zip(SPLIT_NAMES, task.ratios) if ratio > 0 or s in split]
    for name in wanted:
        if name not in split:
            raise PpganError(
                f"task.ratios={list(task.ratios)}: the {name} split is empty with {len(recs)} "
                f"images of {len(subjects)} subjects (task.split={task.split})"
            )

    with atomic_h5(path) as f:
        f.create_dataset("images", data=np.stack(images))
        f.create_dataset("id", data=ids)
        f.create_dataset("dis", data=dis)
        f.create_dataset("set", data=sets)
        if masks[0] is not None:
            f.create_dataset("masks", data=np.stack(masks))
        f.create_dataset("class_names", data=np.array(classes, dtype=h5py.string_dtype()))
        f.attrs["split"] = task.split if recs[0].split is None else "manifest"
    try:  # our own output must pass the validator that every training task applies
        data = load_images(path, require_splits=tuple(wanted), remap_labels=False)
    except PpganError:
        path.unlink(missing_ok=True)
        raise
    if task.split == "subject" and recs[0].split is None:
        log.info(
            "subject-disjoint splits: identity accuracy on val/test is at most chance; "
            "task=evaluate adds open-set attacks for the test subjects"
        )
    if task.subject_map:
        write_subject_map(out_dir / "subjects.csv", subjects)
        log.warning("wrote %s: it names the subjects, keep it out of any release", "subjects.csv")
    return ctx.finish(summary(recs, split, classes, issues, out_dir, path, data.shape))


def summary(recs, split, classes, issues: Issues, out_dir: Path, path: Path, shape) -> dict:
    """Counts per split, class and subject, and the skipped files: logged, and the metrics."""
    per_subject = Counter(r.subject for r in recs)
    subjects_in = {s: {r.subject for r, x in zip(recs, split) if x == s} for s in SPLIT_NAMES}
    overlap = (subjects_in["train"] & (subjects_in["val"] | subjects_in["test"])) | (
        subjects_in["val"] & subjects_in["test"]
    )
    m = {
        "n_images": len(recs),
        "n_subjects": len(per_subject),
        "n_classes": len(classes),
        "images_per_subject_min": min(per_subject.values()),
        "images_per_subject_max": max(per_subject.values()),
        "subject_disjoint": float(not overlap),
        "skipped": len(issues.skipped),
    }
    lines = [f"{'split':<6} {'images':>7} {'subjects':>9}  " + "  ".join(classes)]
    for s in SPLIT_NAMES:
        in_split = [r for r, x in zip(recs, split) if x == s]
        m[f"n_{s}"], m[f"subjects_{s}"] = len(in_split), len(subjects_in[s])
        per_class = Counter(r.label for r in in_split)
        for c in classes:
            m[f"class/{c}/{s}"] = per_class[c]
        row = "  ".join(f"{per_class[c]:>{len(c)}}" for c in classes)
        lines.append(f"{s:<6} {len(in_split):>7} {len(subjects_in[s]):>9}  {row}")
    for reason, n in issues.counts().items():
        m[f"skipped/{reason}"] = n
    # Per subject, by id (names stay out of the run dir unless task.subject_map asks for them).
    with open(out_dir / "subject_counts.csv", "w") as f:
        f.write("id,images,train,val,test," + ",".join(classes) + "\n")
        for i, subject in enumerate(sorted(per_subject)):
            mine = [(r.label, x) for r, x in zip(recs, split) if r.subject == subject]
            cells = [Counter(x for _, x in mine)[s] for s in SPLIT_NAMES]
            cells += [Counter(c for c, _ in mine)[c] for c in classes]
            f.write(",".join(map(str, [i, len(mine), *cells])) + "\n")
    if issues.skipped:
        (out_dir / "skipped.txt").write_text("".join(f"{r}\t{msg}\n" for r, msg in issues.skipped))
    log.info(
        "wrote %s: %d images %s, %d subjects (%d..%d images each), %d classes, %s\n%s",
        path,
        len(recs),
        "x".join(map(str, shape)),
        len(per_subject),
        m["images_per_subject_min"],
        m["images_per_subject_max"],
        len(classes),
        "subject-disjoint splits" if not overlap else f"{len(overlap)} subjects in 2+ splits",
        "\n".join(lines),
    )
    if overlap and (missing := len(per_subject) - len(subjects_in["train"])):
        log.warning(
            "%d subject(s) have no training image: closed-set identity can only guess them", missing
        )
    if issues.skipped:
        log.warning(
            "skipped %d file(s): %s (list: skipped.txt)",
            len(issues.skipped),
            ", ".join(f"{r} {n}" for r, n in issues.counts().items()),
        )
    return m
