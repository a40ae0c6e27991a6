"""Attackers from outside ppgan's evaluation suite, on an exported release (README, "A second
data shape"): hand-made features (pixels at half resolution, HOG, the log-magnitude spectrum of
the central crop) times linear learners (PCA + logistic regression, PCA + LDA, a linear SVM),
each trained on the release's training rows with their true identities, the one to report
chosen on its validation rows, scored on its test rows. Then the two-export attack: each row of
export A paired with its nearest row of export B (pixels, same split and class, no identities
used) and the pair averaged, which cancels what the two draws do not share, and the same
attackers on the averages.

    python -m ppgan task=export ... task.temperature=T task.keep_identity=true seed=0 \\
        hydra.run.dir=A      # and seed=1 -> B: two releases of the same cases, identities kept
    python experiments/outsider_attack.py A/anonymized.h5 B/anonymized.h5 <original data.h5> \\
        [--json out.json]

The originals' file is attacked first: attackers that fail there would say nothing here.
Needs scikit-image and scikit-learn (dev extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
from skimage.feature import hog
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

TRAIN, VAL, TEST = 0, 1, 2


def load(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images [N, H, W] in [0, 1], id, dis, set) of a one-channel uint8 file with `id`."""
    with h5py.File(path) as f:
        if "id" not in f:
            raise SystemExit(f"{path}: no `id` (export with task.keep_identity=true)")
        images = f["images"][()]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise SystemExit(f"{path}: images {images.shape} {images.dtype}: needs N x H x W uint8")
        return images.astype(np.float32) / 255, f["id"][()], f["dis"][()], f["set"][()]


def features(x: np.ndarray, kind: str) -> np.ndarray:
    n, h, w = x.shape
    if kind == "pixels_half":
        return x.reshape(n, h // 2, 2, w // 2, 2).mean((2, 4)).reshape(n, -1)
    if kind == "hog":
        return np.stack([hog(i, orientations=9, pixels_per_cell=(8, 8)) for i in x])
    crop = x[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]  # the iris, where the texture is
    return np.log1p(np.abs(np.fft.fft2(crop))).reshape(n, -1)


LEARNERS = {
    "pca_logreg": lambda: make_pipeline(
        StandardScaler(), PCA(50, random_state=0), LogisticRegression(max_iter=3000)
    ),
    "pca_lda": lambda: make_pipeline(
        StandardScaler(), PCA(50, random_state=0), LinearDiscriminantAnalysis()
    ),
    "linear_svm": lambda: make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000)),
}


def attack(x: np.ndarray, ids: np.ndarray, sets: np.ndarray) -> dict:
    """Every attacker's (val, test) accuracy, and the one chosen on val."""
    tr = sets == TRAIN
    scores = {}
    for kind in ("pixels_half", "hog", "spectrum"):
        f = features(x, kind)
        for name, make in LEARNERS.items():
            model = make().fit(f[tr], ids[tr])
            scores[f"{kind}/{name}"] = {
                s: round(float((model.predict(f[sets == c]) == ids[sets == c]).mean()), 4)
                for s, c in (("val", VAL), ("test", TEST))
            }
    chosen = max(scores, key=lambda k: scores[k]["val"])
    return {"chosen_on_val": chosen, "test": scores[chosen]["test"], "all": scores}


def average_across_exports(a: tuple, b: tuple) -> tuple[np.ndarray, float]:
    """Each row of A averaged with its nearest row of B (same split and class); and how often
    the pair is one person (known to this script only)."""
    xa, ida, da, sa = a
    xb, idb, db, sb = b
    avg, same = np.empty_like(xa), np.zeros(len(xa), bool)
    for i in range(len(xa)):
        cand = np.flatnonzero((sb == sa[i]) & (db == da[i]))
        j = cand[((xb[cand] - xa[i]) ** 2).reshape(len(cand), -1).sum(1).argmin()]
        avg[i], same[i] = (xa[i] + xb[j]) / 2, idb[j] == ida[i]
    return avg, float(same.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release_a")
    parser.add_argument("release_b")
    parser.add_argument("originals")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    a, b, orig = load(args.release_a), load(args.release_b), load(args.originals)
    out = {"chance": round(1 / len(np.unique(orig[1])), 4)}
    out["originals"] = attack(orig[0], orig[1], orig[3])
    out["release"] = attack(a[0], a[1], a[3])
    avg, same = average_across_exports(a, b)
    out["two_exports_pair_same_person"] = round(same, 4)
    out["two_exports_averaged"] = attack(avg, a[1], a[3])
    for key in ("originals", "release", "two_exports_averaged"):
        r = out[key]
        print(f"{key}: {r['chosen_on_val']} test {r['test']}", flush=True)
    print(f"two exports paired to the same person: {same:.3f} (chance {out['chance']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
