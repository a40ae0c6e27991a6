"""The paper's iris data set (Warsaw-BioBase-Disease-Iris v2.1): its layout, labels and the
preprocessing of the original code, redone with scikit-image.

Layout: one folder per eye, named by a 4-digit patient number and `left` or `right`
(`0001left/`); only image files whose name contains `IG` are used. Labels come from the data
set's medical-description CSV (`;`-separated: patient number, then the left and the right eye's
conditions as comma-separated lists); an eye is class 1 (`glaucoma`) when its list names glaucoma
or secondary glaucoma, else class 0.

Preprocessing of one photograph, in the steps of the authors' scripts (the blur, threshold and
radius-range values are ours, config keys because they depend on the camera):

1. drop the bottom `crop_bottom` (11) rows;
2. mirror right eyes, so every eye has the same orientation;
3. find the pupil: blur the grey image, keep its dark pixels (below `threshold`), take the edges of
   that binary image and the strongest circle of a Hough transform (`skimage.transform`);
4. move the pupil centre to the image centre and resize to `size` (64) px;
5. ROI mask: the strongest Hough circle of the resized image's edges in the iris-size range, its
   radius clipped to 17 px (at 64 px), its centre pulled towards the image centre, filled.

Where ppgan differs (README.md, "Your own data"): the Hough transform of step 3 runs on a copy
downscaled to at most `work_size` px (the circle is scaled back; 16x fewer pixels for 640x480
photographs); after centring, the largest centred square is kept (zero-filled where the shift
moved the frame), so the resize keeps the aspect ratio; a photograph without a detectable pupil
is a one-line error naming it (or a counted skip).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import disk
from skimage.feature import canny
from skimage.filters import gaussian
from skimage.transform import hough_circle, hough_circle_peaks, rescale

from ppgan.data.sources import (
    IMAGE_SUFFIXES,
    BadImage,
    Collection,
    Issues,
    Record,
    native_channels,
    open_image,
    resize,
    to_array,
)
from ppgan.errors import PpganError

log = logging.getLogger(__name__)
EYE_DIR = re.compile(r"^(\d{4})(left|right)$", re.IGNORECASE)
GLAUCOMA = {"glaucoma", "secondary glaucoma"}
CLASSES = ["no glaucoma", "glaucoma"]  # dis 0, 1 as in the original


@dataclass(frozen=True)
class IrisParams:
    """`task.iris.*`: the preprocessing's constants (pixel values at the photograph's scale)."""

    description_csv: str = "medical-description-v2-1.csv"
    subject: str = "patient"  # patient: both eyes one id (as the original); eye: one id per eye
    crop_bottom: int = 11
    blur_sigma: float = 2.0
    threshold: int = 60  # grey level below which a pixel counts as pupil
    pupil_radius: tuple[int, int] = (15, 90)  # search range at the photograph's scale
    work_size: int = 160  # the pupil search runs on a copy at most this large
    mask_radius: tuple[int, int] = (10, 24)  # iris radius search range at 64 px
    mask_max_radius: float = 17.0  # at 64 px
    mask_pull: float = 0.5  # share of the way the mask centre moves to the image centre

    def __post_init__(self) -> None:
        if self.subject not in ("patient", "eye"):
            raise PpganError(f"task.iris.subject={self.subject}: choose patient or eye")


def read_descriptions(path: Path) -> dict[int, tuple[set[str], set[str]]]:
    """Patient number -> (left-eye conditions, right-eye conditions), lower case."""
    if not path.is_file():
        raise PpganError(f"{path}: description CSV does not exist (task.iris.description_csv)")
    out = {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        for row in csv.reader(f, delimiter=";"):
            if not row or not row[0].strip().isdigit():
                continue  # header or blank line
            cells = [*row[1:3], "", ""][:2]
            out[int(row[0])] = tuple(
                {c.strip().lower() for c in cell.split(",") if c.strip()} for cell in cells
            )
    if not out:
        raise PpganError(f"{path}: no patient rows (expected 'number;left conditions;right ...')")
    return out


def warsaw_records(root: Path, params: IrisParams, issues: Issues) -> Collection:
    """Records of the data set's eye folders, labelled from its medical-description CSV."""
    if not root.is_dir():
        raise PpganError(f"{root}: folder does not exist (task.root)")
    csv_path = root / params.description_csv
    descriptions = read_descriptions(csv_path)
    records = []
    eyes = sorted(p for p in root.iterdir() if p.is_dir() and EYE_DIR.match(p.name))
    if not eyes:
        raise PpganError(f"{root}: no eye folders named like 0001left or 0001right")
    for eye in eyes:
        number, side = EYE_DIR.match(eye.name).groups()
        side = side.lower()
        if int(number) not in descriptions:
            issues("no_label", f"{eye}: patient {number} has no row in {csv_path.name}")
            continue
        conditions = descriptions[int(number)][0 if side == "left" else 1]
        label = CLASSES[1] if conditions & GLAUCOMA else CLASSES[0]
        subject = number if params.subject == "patient" else eye.name
        files = sorted(
            p for p in eye.iterdir() if "IG" in p.name and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:  # not a problem of any one file: the eye just has no IrisGuard photograph
            log.warning("%s: no image file with 'IG' in its name", eye)
        records += [Record(p, subject, label, mirror=side == "right") for p in files]
    return Collection(records, list(CLASSES))


def _strongest_circle(edges: np.ndarray, radii: np.ndarray) -> tuple[float, float, float] | None:
    """(row, col, radius) of the highest Hough peak of an edge map, None without edges."""
    if not edges.any() or len(radii) == 0:
        return None
    acc = hough_circle(edges, radii)
    _, cx, cy, r = hough_circle_peaks(acc, radii, total_num_peaks=1)
    return (float(cy[0]), float(cx[0]), float(r[0])) if len(cx) else None


def find_pupil(grey: np.ndarray, p: IrisParams) -> tuple[float, float, float] | None:
    """The pupil circle (row, col, radius) of a uint8 grey photograph, in its pixels."""
    scale = min(1.0, p.work_size / max(grey.shape))
    small = grey / 255.0
    if scale < 1:
        small = rescale(small, scale, anti_aliasing=True)
    small = gaussian(small, sigma=max(p.blur_sigma * scale, 0.5))
    dark = small < p.threshold / 255.0
    edges = canny(dark.astype(np.float64), sigma=1.0)
    lo, hi = (max(2, round(r * scale)) for r in p.pupil_radius)
    circle = _strongest_circle(edges, np.arange(lo, hi + 1))
    return None if circle is None else tuple(v / scale for v in circle)


def centre_on(arr: np.ndarray, row: float, col: float) -> np.ndarray:
    """The square of side min(H, W) centred on (row, col), zero where it leaves the image."""
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = round(row - s / 2), round(col - s / 2)
    out = np.zeros((s, s, *arr.shape[2:]), dtype=arr.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + s, h), min(left + s, w)
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = arr[r0:r1, c0:c1]
    return out


def iris_mask(grey: np.ndarray, p: IrisParams) -> np.ndarray:
    """The ROI disc (S,S) uint8 {0,1} of a centred, resized grey image (S px)."""
    s = grey.shape[0]
    k = s / 64.0  # the original's constants are for 64 px
    edges = canny(gaussian(grey / 255.0, sigma=1.0), sigma=1.0)
    radii = np.arange(round(p.mask_radius[0] * k), round(p.mask_radius[1] * k) + 1)
    c = (s - 1) / 2
    row, col, r = _strongest_circle(edges, radii) or (c, c, p.mask_max_radius * k)
    r = min(r, p.mask_max_radius * k)
    row, col = c + (row - c) * (1 - p.mask_pull), c + (col - c) * (1 - p.mask_pull)
    mask = np.zeros((s, s), dtype=np.uint8)
    mask[disk((row, col), r, shape=mask.shape)] = 1
    return mask


def preprocess(
    rec: Record, channels: int | None, size: int, method: str, p: IrisParams
) -> tuple[np.ndarray, np.ndarray, int]:
    """One photograph -> (image (S,S[,C]) uint8, ROI mask (S,S), the file's channel count)."""
    img = open_image(rec.path)
    native = native_channels(img)
    arr = to_array(img, channels or native)
    if p.crop_bottom:
        arr = arr[: -p.crop_bottom]
    if rec.mirror:
        arr = arr[:, ::-1]
    grey = arr if arr.ndim == 2 else np.asarray(Image.fromarray(arr).convert("L"))
    pupil = find_pupil(grey, p)
    if pupil is None:
        raise BadImage(
            "no_pupil",
            f"{rec.path}: no pupil circle found (task.iris.threshold={p.threshold}, "
            f"task.iris.pupil_radius={list(p.pupil_radius)})",
        )
    out = resize(np.ascontiguousarray(centre_on(arr, pupil[0], pupil[1])), size, method)
    grey_out = out if out.ndim == 2 else np.asarray(Image.fromarray(out).convert("L"))
    return out, iris_mask(grey_out, p), native
