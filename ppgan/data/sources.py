"""Image collections on disk (a manifest CSV or a class-per-folder tree) read into arrays.

`task=prepare` turns them into the paper's HDF5 format. Conventions, all documented in README.md
("Your own data"):

* **Classes** map to `dis` in sorted order of their names (Python string order), unless an explicit
  list (`task.classes`) fixes the order; the names are stored in the file as `class_names`.
* **Subjects** map to `id` in sorted order of their names. The names are *not* stored in the file:
  they identify patients, and anonymized exports must not carry them.
* **Images** are read with Pillow, converted to grey (`L`) or RGB, centre-cropped to a square and
  resized with Pillow's filters (bilinear by default, which widens its support when shrinking, so
  downsampling is antialiased). **Masks** get the same crop and a nearest-neighbour resize;
  non-zero pixels are the region of interest.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageOps

from ppgan.errors import PpganError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La"}


@dataclass
class Record:
    """One image to prepare: where it is and what it shows (labels as names, not codes)."""

    path: Path
    subject: str
    label: str
    split: str | None = None
    mask: Path | None = None
    mirror: bool = False  # flip left-right before anything else (the iris data's right eyes)


@dataclass
class Collection:
    """The records of a source and its classes in `dis` order."""

    records: list[Record]
    classes: list[str]


@dataclass
class Issues:
    """Bad input: with `on_error=fail` the first problem is a one-line `PpganError`; with `skip`
    each problem drops its file and is counted by reason (for the summary and metrics.json)."""

    on_error: str = "fail"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)

    def __post_init__(self) -> None:
        if self.on_error not in ("fail", "skip"):
            raise PpganError(f"task.on_error={self.on_error}: choose fail or skip")

    def __call__(self, reason: str, message: str) -> None:
        """Report a problem; `message` names the file or manifest line and what is wrong."""
        if self.on_error == "fail":
            raise PpganError(f"{message} (task.on_error=skip drops such files)")
        log.warning("skipped: %s", message)
        self.skipped.append((reason, message))

    def counts(self) -> Counter:
        return Counter(reason for reason, _ in self.skipped)


class BadImage(PpganError):
    """A problem with one image file; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def read_manifest(
    manifest: Path, root: Path, issues: Issues, classes: list[str] | None = None
) -> Collection:
    """Records from a CSV with columns `path`, `subject`, `label`, optional `split` and `mask`.

    Paths are relative to `root` (absolute ones are kept). A row naming a missing file is a
    problem for `issues`; a malformed manifest is always an error.
    """
    if not manifest.is_file():
        raise PpganError(f"{manifest}: manifest does not exist (task.manifest)")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        # Cells and header names stripped; cells beyond the header (key None) dropped.
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if missing := {"path", "subject", "label"} - set(columns):
        raise PpganError(
            f"{manifest}: missing column(s) {sorted(missing)} (has {columns}; "
            "needs path, subject, label, optional split, mask)"
        )
    if not rows:
        raise PpganError(f"{manifest}: no rows")
    has_split, has_mask = "split" in columns, "mask" in columns
    records, seen = [], {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{manifest}:{line}"
        for key in ("path", "subject", "label"):
            if not row.get(key):
                raise PpganError(f"{where}: empty '{key}'")
        split = (row.get("split") or None) if has_split else None
        if has_split and split not in SPLIT_NAMES:
            raise PpganError(f"{where}: split '{row.get('split')}' is not one of train|val|test")
        path = root / row["path"]
        if path in seen:
            raise PpganError(f"{where}: '{row['path']}' is listed twice (also line {seen[path]})")
        seen[path] = line
        mask = None
        if has_mask:
            if not row.get("mask"):
                raise PpganError(f"{where}: empty 'mask' (give a mask for every image or none)")
            mask = root / row["mask"]
        if classes is not None and row["label"] not in classes:
            raise PpganError(f"{where}: label '{row['label']}' is not in task.classes {classes}")
        if not path.is_file():
            issues("missing_file", f"{where}: file '{row['path']}' does not exist under {root}")
            continue
        if mask is not None and not mask.is_file():
            issues("missing_file", f"{where}: mask '{row['mask']}' does not exist under {root}")
            continue
        records.append(Record(path, row["subject"], row["label"], split, mask))
    # Every label the manifest names, so a class whose files are all missing is reported empty.
    names = list(classes) if classes else sorted({r["label"] for r in rows})
    return Collection(records, names)


def subject_of(pattern: re.Pattern, name: str) -> str | None:
    """The subject in a file name: group `subject`, else the first group, else the whole match."""
    match = pattern.search(name)
    if match is None:
        return None
    if "subject" in pattern.groupindex:
        return match.group("subject")
    return match.group(1) if pattern.groups else match.group(0)


def scan_folders(
    root: Path,
    subject_pattern: str,
    issues: Issues,
    mask_suffix: str | None = None,
    classes: list[str] | None = None,
) -> Collection:
    """Records of an ImageFolder tree `root/<class>/.../<image>`, subjects from file names.

    `subject_pattern` is searched in the file name without its extension. With `mask_suffix`
    (e.g. `_mask`), `a_mask.png` is the mask of `a.png` in the same folder.
    """
    if not root.is_dir():
        raise PpganError(f"{root}: folder does not exist (task.root)")
    try:
        pattern = re.compile(subject_pattern)
    except re.error as exc:
        raise PpganError(f"task.subject_pattern='{subject_pattern}': not a regex ({exc})") from exc
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        if unknown := set(dirs) - set(classes):
            raise PpganError(f"{root}: folders {sorted(unknown)} are not in task.classes {classes}")
        dirs = list(classes)
    if not dirs:
        raise PpganError(f"{root}: no class folders (expected root/<class>/<image>)")
    found = []  # (path, class)
    for label in dirs:
        files = sorted(
            p
            for p in (root / label).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        found += [(p, label) for p in files if not (mask_suffix and p.stem.endswith(mask_suffix))]
    subjects = [subject_of(pattern, p.stem) for p, _ in found]
    if found and all(s is None for s in subjects):  # a wrong pattern, not a few odd files
        raise PpganError(
            f"{root}: task.subject_pattern='{subject_pattern}' matches none of the {len(found)} "
            "file names"
        )
    records = []
    for (path, label), subject in zip(found, subjects):
        if subject is None:
            issues(
                "no_subject",
                f"{path}: file name does not match task.subject_pattern='{subject_pattern}'",
            )
            continue
        mask = None
        if mask_suffix:
            mask = path.with_name(path.stem + mask_suffix + path.suffix)
            if not mask.is_file():
                issues("missing_file", f"{path}: its mask {mask.name} does not exist")
                continue
        records.append(Record(path, subject, label, mask=mask))
    return Collection(records, dirs)


def open_image(path: Path) -> Image.Image:
    """An image, fully decoded and upright (EXIF orientation applied); unreadable -> PpganError."""
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage("unreadable", f"{path}: cannot read as an image ({exc})") from exc


def native_channels(img: Image.Image) -> int:
    return 1 if img.mode in _GREY_MODES else 3


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H,W) for 1 channel or (H,W,3); 16-bit and float grey images are scaled to 8 bits."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit scans use the full 0..65535 range; 8-bit data stored as 'I' stays as it is.
        arr = np.clip(arr / 257.0 if arr.max() > 255 else arr, 0, 255).round().astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    img = img.convert("L" if channels == 1 else "RGB")
    return np.asarray(img, dtype=np.uint8)


def centre_square(arr: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H,W[,C]) array (non-square images are not stretched)."""
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top : top + s, left : left + s]


def resize(arr: np.ndarray, size: int, method: str) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), RESAMPLE[method]))


def load_record(
    rec: Record, channels: int | None, size: int | None, method: str
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """An image as uint8 (S,S[,C]) at the target size, its mask (S,S) in {0,1} or None, and the
    channel count the file had. `channels`/`size` None keep the file's own (checked later)."""
    img = open_image(rec.path)
    native = native_channels(img)
    arr = to_array(img, channels or native)
    mask = None
    if rec.mask is not None:
        m = open_image(rec.mask)
        if m.size != img.size:
            raise BadImage(
                "mask_size",
                f"{rec.mask}: mask is {m.size[0]}x{m.size[1]} px, its image {rec.path.name} is "
                f"{img.size[0]}x{img.size[1]}",
            )
        mask = (to_array(m, 1) > 0).astype(np.uint8)
    if rec.mirror:
        arr = arr[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    if size is not None:
        arr = resize(np.ascontiguousarray(centre_square(arr)), size, method)
        if mask is not None:
            mask = resize(np.ascontiguousarray(centre_square(mask)), size, "nearest")
    return np.ascontiguousarray(arr), mask, native


def assign_splits(
    keys: list[tuple], groups: list[str], ratios: list[float], seed: int
) -> dict[str, str]:
    """Deal groups to train/val/test in proportion to `ratios`, stratified by `keys` order.

    `groups` are the units dealt (image paths for a per-image split, subject names for a
    subject-disjoint one), `keys[i]` the sort key of group i (its class first). Groups are shuffled
    (seeded), sorted by key, and then dealt one by one to the split furthest below its quota: every
    class is split in the ratios (up to one unit), and exactly so overall.
    """
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(len(groups))
    order = sorted(range(len(groups)), key=lambda i: (keys[i], shuffle[i]))
    r = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
    counts = np.zeros(3)
    out = {}
    for k, i in enumerate(order):
        choice = int(np.argmax(r * (k + 1) - counts))
        counts[choice] += 1
        out[groups[i]] = SPLIT_NAMES[choice]
    return out


def read_class_names(path: str | Path) -> list[str] | None:
    """The `class_names` a prepared file stores (in `dis` order), or None when it has none."""
    with h5py.File(path, "r") as f:
        if "class_names" not in f:
            return None
        node = f["class_names"]
        if not isinstance(node, h5py.Dataset) or node.ndim != 1:
            raise PpganError(f"{path}: key 'class_names': expected a 1-D array of names")
        try:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in node[()]]
        except UnicodeDecodeError as exc:
            raise PpganError(f"{path}: key 'class_names': names are not UTF-8 ({exc})") from exc


def write_subject_map(path: Path, subjects: list[str]) -> None:
    """id -> subject name as CSV. Identity-bearing: keep it away from anything released."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "subject"])
        writer.writerows(enumerate(subjects))
    os.replace(tmp, path)
