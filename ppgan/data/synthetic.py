"""A deterministic generator of synthetic iris images in the paper's HDF5 format.

The generative model (documented in README.md, "The built-in synthetic iris dataset"):

* **Identity** (fixed per person): iris colour and collarette colour, number/phase/twist of the
  radial furrows, positions of dark crypts, iris radius, skin tone, moles on the skin, eyelid
  shape (opening height and width, canthal tilt), sclera tint.
* **Capture** (drawn per image): pupil dilation (the iris texture stretches with it), small
  rotation, gaze offset, illumination gain and gradient, eyelid occlusion, specular highlight
  position, sensor noise.
* **Disease**: a clouded pupil whose opacity grows with the class index (class 0 = healthy, clear
  pupil) and a pale ring at the pupil margin. `disease_per=person` (default): assigned per person at
  random, independent of every identity parameter, as glaucoma is per eye in
  Warsaw-BioBase-Disease-Iris. `disease_per=image`: drawn per image, as a finding on a chest X-ray
  varies between a patient's visits; every person gets every class in (near) equal numbers within
  each split, so the disease says nothing about who it is.
* **ROI mask**: the iris disc (centre and radius known exactly, unlike the paper's Hough circle);
  `masks=false` writes no `masks` key (data without ROI masks).

Same seed and spec -> byte-identical file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from hashlib import sha1
from pathlib import Path

import numpy as np

from ppgan.data.hdf5 import atomic_h5
from ppgan.errors import PpganError


@dataclass(frozen=True)
class SyntheticIrisSpec:
    """What to generate; every field is a config key under `dataset.generator`."""

    seed: int = 0
    n_identities: int = 40
    images_per_identity: int = 30
    size: int = 64
    channels: int = 3
    n_disease_classes: int = 2
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    disease_per: str = "person"
    masks: bool = True

    def __post_init__(self) -> None:
        if self.size % 16 or not 32 <= self.size <= 256:
            raise PpganError(f"dataset.generator.size={self.size}: must be 32..256, multiple of 16")
        if self.channels not in (1, 3):
            raise PpganError(f"dataset.generator.channels={self.channels}: must be 1 or 3")
        if self.n_disease_classes < 2 or self.n_disease_classes > self.n_identities:
            raise PpganError("dataset.generator.n_disease_classes: must be in 2..n_identities")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise PpganError(f"dataset.generator.split={list(self.split)}: 3 ratios summing to 1")
        if self.images_per_identity < 3:
            raise PpganError("dataset.generator.images_per_identity: need >= 3 (one per split)")
        if self.disease_per not in DISEASE_PER:
            raise PpganError(
                f"dataset.generator.disease_per={self.disease_per!r}: choose from {DISEASE_PER}"
            )
        if not isinstance(self.masks, bool):
            raise PpganError(f"dataset.generator.masks={self.masks!r}: must be true or false")

    def fingerprint(self) -> str:
        """Names the cached file. Fields added after the first release count only when they
        differ from their default, so the cache of every earlier spec keeps its name."""
        fields = {
            k: v for k, v in asdict(self).items() if k not in LATER_FIELDS or LATER_FIELDS[k] != v
        }
        return sha1(repr(sorted(fields.items())).encode()).hexdigest()[:10]


DISEASE_PER = ("person", "image")
# Fields added after the first release, with the default that reproduces the earlier files.
LATER_FIELDS = {"disease_per": "person", "masks": True}


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _identity(rng: np.random.Generator) -> dict:
    """Everything that makes one person recognisable."""
    return {
        # Natural iris hues: brown/amber, hazel/green, blue/grey.
        "iris_rgb": _hsv_to_rgb(
            rng.choice([0.07, 0.22, 0.58]) + rng.uniform(-0.05, 0.05),
            rng.uniform(0.25, 0.75),
            rng.uniform(0.3, 0.75),
        ),
        "collar_rgb": _hsv_to_rgb(
            rng.uniform(0.04, 0.16), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9)
        ),
        "furrows": int(rng.integers(5, 17)),
        "furrow_phase": rng.uniform(0, 2 * np.pi),
        "furrow_twist": rng.uniform(-2.5, 2.5),
        "furrow_depth": rng.uniform(0.15, 0.4),
        "crypts": np.stack([rng.uniform(0, 2 * np.pi, 5), rng.uniform(0.3, 0.9, 5)], 1)[
            : rng.integers(2, 6)
        ],
        "iris_r": rng.uniform(0.48, 0.56),
        "skin_rgb": np.array([0.95, 0.78, 0.66]) * rng.uniform(0.35, 1.0)
        + rng.uniform(-0.06, 0.06, 3),
        "moles": rng.uniform(-0.9, 0.9, size=(int(rng.integers(0, 4)), 2)),
        "lid_up": rng.uniform(0.5, 0.72),
        "lid_lo": rng.uniform(0.32, 0.5),
        "lid_w": rng.uniform(0.85, 1.0),
        "tilt": rng.uniform(-0.15, 0.15),
        "sclera_rgb": np.array([0.93, 0.9, 0.86]) - rng.uniform(0, 0.1, 3),
    }


def _smooth(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (negative inside): anti-aliased edges."""
    return 1.0 / (1.0 + np.exp(np.clip(d / width, -30, 30)))


def _render(person: dict, disease: int, n_classes: int, size: int, rng: np.random.Generator):
    """One capture of `person` -> (RGB image in [0,1] (H,W,3), iris mask (H,W) bool)."""
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(lin, lin, indexing="ij")
    px = 2.0 / size  # one pixel in these coordinates

    # Capture conditions.
    cx, cy = rng.normal(0, 0.05, 2)
    rot = rng.normal(0, 0.15)
    dilation = rng.uniform(0.3, 0.48)
    occlusion = rng.uniform(0, 0.3)
    gain = rng.uniform(0.8, 1.15)
    grad = rng.normal(0, 0.1, 2)

    # Periocular skin with moles and a soft lid shadow.
    img = np.broadcast_to(person["skin_rgb"], (size, size, 3)).copy()
    img *= 1 + 0.08 * (y - 0.3 * x)[..., None]
    for mx, my in person["moles"]:
        img *= (
            1 - 0.45 * np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * (2.2 * px) ** 2))[..., None]
        )

    # Eye opening between two parabolic lids; the upper lid droops by `occlusion`.
    xe = x / person["lid_w"]
    ye = y - person["tilt"] * x
    shape = np.clip(1 - xe**2, 0, None)
    upper = -person["lid_up"] * (1 - occlusion) * shape
    lower = person["lid_lo"] * shape
    opening = _smooth(upper - ye, px) * _smooth(ye - lower, px)
    lid_line = np.exp(-((ye - upper) ** 2) / (2 * (1.2 * px) ** 2)) * (shape > 0)

    # Iris in polar coordinates around the (gazing) eye centre.
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx) - rot
    iris_r = person["iris_r"]
    pupil_r = iris_r * dilation
    rho = np.clip((r - pupil_r) / (iris_r - pupil_r), 0, 1)  # texture stretches with the pupil
    furrows = 1 + person["furrow_depth"] * np.cos(
        person["furrows"] * theta + person["furrow_phase"] + person["furrow_twist"] * rho
    )
    iris = person["iris_rgb"] * furrows[..., None]
    collar = np.exp(-((rho - 0.28) ** 2) / (2 * 0.06**2))[..., None]
    iris = iris * (1 - collar) + person["collar_rgb"] * collar
    for ang, rad in person["crypts"]:
        d2 = (theta - ang + np.pi) % (2 * np.pi) - np.pi
        blob = np.exp(-((d2 * 2.5) ** 2) - ((rho - rad) / 0.09) ** 2)
        iris *= 1 - 0.6 * blob[..., None]
    iris *= (1 - 0.5 * np.clip((rho - 0.85) / 0.15, 0, 1))[..., None]  # dark limbal ring

    pupil = np.full(3, 0.04)
    if disease > 0:  # a clouded pupil: the visible disease sign, identity-independent
        haze = 0.7 * disease / (n_classes - 1)
        pupil = pupil * (1 - haze) + np.array([0.78, 0.8, 0.82]) * haze
        ring = np.exp(-((r - pupil_r * 1.15) ** 2) / (2 * (1.3 * px) ** 2))[..., None]
        iris = iris * (1 - 0.6 * haze * ring) + 0.9 * 0.6 * haze * ring

    in_pupil = _smooth(r - pupil_r, px)[..., None]
    in_iris = _smooth(r - iris_r, px)[..., None]
    eye = (
        person["sclera_rgb"] * (1 - in_iris) + (iris * (1 - in_pupil) + pupil * in_pupil) * in_iris
    )
    spec = np.exp(
        -((x - cx + 0.4 * pupil_r) ** 2 + (y - cy + 0.5 * pupil_r) ** 2) / (2 * (1.5 * px) ** 2)
    )
    eye = eye + (1 - eye) * 0.9 * spec[..., None]

    img = img * (1 - opening[..., None]) + eye * opening[..., None]
    img *= (1 - 0.6 * lid_line)[..., None]
    img *= gain * (1 + grad[0] * x + grad[1] * y)[..., None]
    img += rng.normal(0, rng.uniform(0.01, 0.03), img.shape)
    return np.clip(img, 0, 1), r < iris_r


def _split_codes(n_per_id: int, ratios: tuple[float, float, float], rng: np.random.Generator):
    """Stratified per identity: every person appears in every split (closed-set recognition)."""
    n_val = max(1, round(ratios[1] * n_per_id))
    n_test = max(1, round(ratios[2] * n_per_id))
    codes = np.array([0] * (n_per_id - n_val - n_test) + [1] * n_val + [2] * n_test)
    return rng.permutation(codes)


def _image_diseases(codes: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Per-image disease of one person's images (`codes`: their splits): within each split the
    classes are dealt in turn from a random first class, in random order, so every person has
    every class (as far as the split's size allows) and the counts say nothing about identity."""
    dis = np.empty(len(codes), dtype=np.int64)
    for code in np.unique(codes):
        slots = np.flatnonzero(codes == code)
        start = rng.integers(n_classes)
        dis[slots] = rng.permutation((start + np.arange(len(slots))) % n_classes)
    return dis


def generate(spec: SyntheticIrisSpec) -> dict[str, np.ndarray]:
    """All arrays of the data set, in the HDF5 layout (images uint8 (N,H,W,C) or (N,H,W))."""
    rng = np.random.default_rng(spec.seed)
    people = [_identity(rng) for _ in range(spec.n_identities)]
    n = spec.images_per_identity
    if spec.disease_per == "person":
        # Disease per person, balanced, drawn independently of every appearance parameter.
        disease = rng.permutation(np.arange(spec.n_identities) % spec.n_disease_classes)
    images, masks, ids, dis, sets = [], [], [], [], []
    for pid, person in enumerate(people):
        sets.append(_split_codes(n, spec.split, rng))
        if spec.disease_per == "person":
            person_dis = np.full(n, disease[pid])
        else:  # drawn after the split, so the person-mode stream of draws stays as it was
            person_dis = _image_diseases(sets[-1], spec.n_disease_classes, rng)
        for d in person_dis:
            img, mask = _render(person, int(d), spec.n_disease_classes, spec.size, rng)
            images.append(img)
            masks.append(mask)
            ids.append(pid)
            dis.append(d)
    x = np.stack(images)
    if spec.channels == 1:
        x = x @ np.array([0.299, 0.587, 0.114])
    arrays = {
        "images": np.round(x * 255).astype(np.uint8),
        "masks": np.stack(masks).astype(np.uint8),
        "id": np.array(ids, dtype=np.int64),
        "dis": np.array(dis, dtype=np.int64),
        "set": np.concatenate(sets).astype(np.int64),
    }
    if not spec.masks:
        del arrays["masks"]
    return arrays


def write_hdf5(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """Write arrays atomically, without timestamps: same arrays -> same bytes."""
    with atomic_h5(path) as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, track_times=False)
    return Path(path)


def synthesize(spec: SyntheticIrisSpec, path: Path) -> Path:
    """Generate the data set described by `spec` into `path`."""
    return write_hdf5(generate(spec), path)
