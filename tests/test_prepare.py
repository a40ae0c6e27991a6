"""task=prepare: image trees (manifest, folders, the iris layout) -> validated HDF5; bad input;
subject-disjoint splits; the open-set attacks."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ppgan.data.hdf5 import load_images
from ppgan.data.iris import IrisParams, warsaw_records
from ppgan.data.sources import Issues, read_class_names
from ppgan.errors import PpganError
from ppgan.metrics.openset import openset_attacks, openset_linkage
from ppgan.tasks import run_task
from tests.conftest import make_cfg

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_images"


def eye(subject: int, k: int, diseased: bool, h: int = 32, w: int = 32, rgb: bool = False):
    """An eye-like picture: per-subject iris level and spokes, per-image shift and noise; the
    disease clouds the pupil. uint8 (h, w) or (h, w, 3)."""
    ident, cap = np.random.default_rng(subject), np.random.default_rng(1000 * subject + k)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + cap.integers(-2, 3), w / 2 + cap.integers(-2, 3)
    r, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    img = np.full((h, w), 215.0)
    iris = r < 0.36 * min(h, w)
    level, spokes, phase = 70 + 90 * ident.random(), ident.integers(3, 9), 6 * ident.random()
    img[iris] = (level + 35 * np.sin(spokes * theta + phase))[iris]
    img[r < 0.13 * min(h, w)] = 120 if diseased else 12
    img = np.clip(img + cap.normal(0, 4, img.shape), 0, 255)
    if rgb:
        img = img[..., None] * (0.6 + 0.4 * ident.random(3))
    return img.astype(np.uint8)


def save(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


def make_tree(
    root: Path,
    n_subjects: int = 6,
    per_subject: int = 4,
    rgb: bool = False,
    masks: bool = False,
    size: tuple[int, int] = (32, 32),
    split_col: bool = False,
) -> Path:
    """root/<class>/<subject>_<k>.png (+ _mask.png) and root/manifest.csv; subject s has class
    s % 2. Returns the manifest."""
    rows = []
    for s in range(n_subjects):
        label = ["healthy", "clouded"][s % 2]
        for k in range(per_subject):
            rel = f"{label}/p{s:02d}_{k}.png"
            save(root / rel, eye(s, k, s % 2 == 1, *size, rgb=rgb))
            row = {"path": rel, "subject": f"patient-{s:02d}", "label": label}
            if masks:
                mask = np.zeros(size, np.uint8)
                mask[size[0] // 4 : 3 * size[0] // 4, size[1] // 4 : 3 * size[1] // 4] = 255
                row["mask"] = f"{label}/p{s:02d}_{k}_mask.png"
                save(root / row["mask"], mask)
            if split_col:
                row["split"] = ["train", "train", "val", "test"][k % 4]
            rows.append(row)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def prepare(tmp_path: Path, *overrides: str, name: str = "prep") -> tuple[dict, Path]:
    out = tmp_path / name
    metrics = run_task(make_cfg("task=prepare", "task.size=32", *overrides), out)
    return metrics, out / "prepared.h5"


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def test_manifest_rgb_with_masks(tmp_path):
    manifest = make_tree(tmp_path / "img", rgb=True, masks=True, size=(40, 48))  # not square
    metrics, path = prepare(tmp_path, f"task.root={tmp_path / 'img'}", f"task.manifest={manifest}")
    f = read(path)
    assert f["images"].shape == (24, 32, 32, 3) and f["images"].dtype == np.uint8
    assert f["masks"].shape == (24, 32, 32) and set(np.unique(f["masks"])) == {0, 1}
    # Centre crop 40x40 of the 40x48 mask [10:30, 12:36], resized 0.8x: rows/cols 8..23 inside.
    assert f["masks"][0, 8:24, 8:24].all() and not f["masks"][0, :6].any()
    assert read_class_names(path) == ["clouded", "healthy"]  # sorted names -> dis 0, 1
    assert (f["dis"] == np.repeat([1, 0, 1, 0, 1, 0], 4)).all()  # subjects 0, 2, 4 healthy
    assert (f["id"] == np.repeat(np.arange(6), 4)).all()  # sorted subject names
    assert metrics["n_images"] == 24 and metrics["n_subjects"] == 6 and metrics["skipped"] == 0
    assert json.loads((path.parent / "metrics.json").read_text())["class/healthy/train"] > 0
    counts = (path.parent / "subject_counts.csv").read_text().splitlines()
    assert counts[0] == "id,images,train,val,test,clouded,healthy" and len(counts) == 7
    assert counts[1].startswith("0,4,") and counts[1].endswith(",0,4")  # subject 0: healthy
    # Image split: stratified by class, every subject in training (closed-set).
    counts = [int((f["set"] == c).sum()) for c in range(3)]
    assert counts == [17, 5, 2] and metrics["subject_disjoint"] == 0
    assert set(f["id"][f["set"] == 0]) == set(range(6))
    # Subject names identify patients: nowhere in the file.
    with h5py.File(path, "r") as h:
        text = repr(dict(h.attrs)) + repr([h[k][()] for k in h if h[k].dtype.kind in "OS"])
    assert "patient" not in text
    data = load_images(path)
    assert data.shape == (3, 32, 32) and data.has_masks and data.n_ids == 6


def test_folder_grey_subject_split(tmp_path):
    make_tree(tmp_path / "img", n_subjects=10, per_subject=3)
    metrics, path = prepare(
        tmp_path,
        f"task.root={tmp_path / 'img'}",
        "task.subject_pattern='^p(?P<subject>\\d+)_'",
        "task.split=subject",
        "task.subject_map=true",
    )
    f = read(path)
    assert f["images"].shape == (30, 32, 32) and "masks" not in f
    subjects = [set(f["id"][f["set"] == c]) for c in range(3)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert [len(s) for s in subjects] == [7, 2, 1] and metrics["subject_disjoint"] == 1
    # Each split holds both classes where it has two subjects (stratified by class).
    assert {int(f["dis"][f["id"] == i][0]) for i in subjects[1]} == {0, 1}
    mapping = (path.parent / "subjects.csv").read_text().splitlines()
    assert mapping[0] == "id,subject" and mapping[1] == "0,00" and len(mapping) == 11
    # Same seed -> same file; another seed -> another split.
    _, again = prepare(tmp_path, f"task.root={tmp_path / 'img'}", "task.split=subject", name="b")
    assert (read(again)["set"] == f["set"]).all()
    _, other = prepare(
        tmp_path, f"task.root={tmp_path / 'img'}", "task.split=subject", "seed=3", name="c"
    )
    assert not (read(other)["set"] == f["set"]).all()


def test_manifest_split_column_wins_and_channels_convert(tmp_path):
    manifest = make_tree(tmp_path / "img", split_col=True)
    _, path = prepare(
        tmp_path,
        f"task.root={tmp_path / 'img'}",
        f"task.manifest={manifest}",
        "task.split=subject",
        "task.channels=3",
        "task.classes=[healthy,clouded]",
    )
    f = read(path)
    assert (f["set"] == np.tile([0, 0, 1, 2], 6)).all()
    assert f["images"].shape == (24, 32, 32, 3)
    assert (f["images"][..., 0] == f["images"][..., 2]).all()  # grey replicated
    assert read_class_names(path) == ["healthy", "clouded"]
    assert (f["dis"] == np.repeat([0, 1, 0, 1, 0, 1], 4)).all()


def test_file_formats_and_16_bit(tmp_path):
    root = tmp_path / "img"
    img = eye(0, 0, False)
    for suffix in (".png", ".jpg", ".bmp", ".tif"):
        save(root / "a" / f"s1_{suffix[1:]}{suffix}", img)
        save(root / "b" / f"s2_{suffix[1:]}{suffix}", img)
    wide = Image.fromarray(img.astype(np.uint16) * 257)  # 16-bit grey, as many scanners write
    wide.save(root / "a" / "s1_wide.png")
    assert Image.open(root / "a" / "s1_wide.png").mode.startswith("I")
    metrics, path = prepare(tmp_path, f"task.root={root}", "task.ratios=[3,2,0]")
    f = read(path)
    assert metrics["n_images"] == 9 and f["images"].shape == (9, 32, 32)
    names = sorted(p.name for p in (root / "a").iterdir())  # the order prepare reads them in
    wide_img = f["images"][names.index("s1_wide.png")]
    assert np.abs(wide_img.astype(int) - img).max() <= 1  # scaled back to 8 bits
    jpg = f["images"][names.index("s1_jpg.jpg")]
    assert np.abs(jpg.astype(int) - img).mean() < 8  # lossy, but the same picture


def test_prepared_file_trains_disease(tmp_path):
    make_tree(tmp_path / "img", n_subjects=8, per_subject=5)
    _, path = prepare(tmp_path, f"task.root={tmp_path / 'img'}")
    metrics = run_task(
        make_cfg("task=disease", "dataset=hdf5", f"dataset.path={path}", "task.epochs=2"),
        tmp_path / "dis",
    )
    assert 0 <= metrics["test/acc"] <= 1 and metrics["chance"] == 0.5


def test_identity_on_subject_disjoint_file(tmp_path):
    """Val/test subjects never trained on: the identity classifier still has one output per
    subject of the file, trains without error, and can only be right by chance on them."""
    make_tree(tmp_path / "img", n_subjects=9, per_subject=4)
    _, path = prepare(
        tmp_path, f"task.root={tmp_path / 'img'}", "task.split=subject", "task.ratios=[4,2,3]"
    )
    metrics = run_task(
        make_cfg("task=identity", "dataset=hdf5", f"dataset.path={path}"), tmp_path / "id"
    )
    spec = torch.load(tmp_path / "id/checkpoints/best.pt", weights_only=True)["model_spec"]
    assert spec["n_classes"] == 9 and metrics["chance"] == pytest.approx(1 / 9)
    assert 0 <= metrics["test/acc"] <= 1


def test_shipped_fixture_as_in_readme(tmp_path):
    _, path = prepare(
        tmp_path,
        f"task.root={FIXTURE}",
        f"task.manifest={FIXTURE / 'manifest.csv'}",
        "task.split=subject",
    )
    f = read(path)
    assert f["images"].shape == (32, 32, 32, 3)
    assert read_class_names(path) == ["clouded", "healthy"]
    assert len(np.unique(f["id"])) == 8


# --- the paper's iris data set layout -------------------------------------------------------


def photo(dy: int, dx: int, diseased_marker: bool) -> np.ndarray:
    """A grey 'NIR photograph' 200x161 (incl. an 11-row caption strip at the bottom): sclera,
    iris disc r=45, dark pupil disc r=18, a bright spot on the iris's left (to see mirroring)."""
    h, w = 161, 200
    yy, xx = np.mgrid[:h, :w]
    cy, cx = 75 + dy, 100 + dx
    r = np.hypot(yy - cy, xx - cx)
    img = np.full((h, w), 190.0)
    img[r < 45] = 110
    img[(np.abs(yy - cy) < 4) & (np.abs(xx - (cx - 30)) < 4)] = 250
    img[r < 18] = 15
    if diseased_marker:
        img[r < 6] = 40
    img[-11:] = 255  # the caption strip, cropped away
    return img.astype(np.uint8)


def make_iris_tree(root: Path) -> None:
    """4 patients x 2 eyes x 3 photographs; right eyes are mirror images of left ones."""
    conditions = {1: ("glaucoma", "healthy"), 2: ("cataract", "secondary glaucoma, cataract")}
    conditions |= {3: ("", ""), 4: ("diabetic retinopathy", "")}
    lines = ["Patient number;Left eye;Right eye"]
    for p, (left, right) in conditions.items():
        lines.append(f"{p:04d};{left};{right}")
        for k, (dy, dx) in enumerate([(0, 0), (-9, 12), (7, -10)]):
            left_img = photo(dy, dx, False)
            save(root / f"{p:04d}left" / f"{p:04d}_L_{k}_IG.png", left_img)
            right = np.concatenate([left_img[:-11, ::-1], left_img[-11:]])
            save(root / f"{p:04d}right" / f"{p:04d}_R_{k}_IG.png", right)
        (root / f"{p:04d}left" / "photo_CANON.png").write_bytes(b"not read: no IG in its name")
    (root / "medical-description-v2-1.csv").write_text("\n".join(lines) + "\n")


def test_iris_layout_and_preprocessing(tmp_path):
    make_iris_tree(tmp_path / "iris")
    metrics, path = prepare(
        tmp_path, f"task.root={tmp_path / 'iris'}", "task.layout=warsaw_iris", "task.size=64"
    )
    f = read(path)
    assert f["images"].shape == (24, 64, 64) and f["masks"].shape == (24, 64, 64)
    assert read_class_names(path) == ["no glaucoma", "glaucoma"]
    # Eyes in order 0001left, 0001right, 0002left...: glaucoma in 1L and 2R (secondary).
    assert (f["dis"] == np.repeat([1, 0, 0, 1, 0, 0, 0, 0], 3)).all()
    assert (f["id"] == np.repeat(np.arange(4), 6)).all()  # one id per patient, as the original
    # The pupil (dark, but not the zero fill where the shift left the frame) is centred.
    for img in f["images"]:
        rows, cols = np.nonzero((img > 8) & (img < 30))
        assert abs(rows.mean() - 31.5) < 1.5 and abs(cols.mean() - 31.5) < 1.5
    # Right eyes were mirrored back: the bright spot is on the left in every image.
    spot = f["images"] > 230
    assert spot[:, :, :28].sum() > 0 and spot[:, :, 36:].sum() == 0
    # ROI: the iris disc (r = 45 px -> 17.5 px at 64), radius clipped to 17, near the centre.
    area = f["masks"].reshape(24, -1).sum(1)
    assert (area > 0.8 * np.pi * 17**2).all() and (area <= np.pi * 17.5**2).all()
    assert metrics["n_subjects"] == 4 and load_images(path).has_masks
    # task.iris.subject=eye: one subject per eye folder (8), labels unchanged.
    eyes = warsaw_records(tmp_path / "iris", IrisParams(subject="eye"), Issues())
    assert len({r.subject for r in eyes.records}) == 8 and len(eyes.records) == 24


# --- bad input ------------------------------------------------------------------------------


def bad_tree(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """A tree with one problem; returns the overrides and a fragment the error must contain."""
    root = tmp_path / "img"
    manifest = make_tree(root)
    base = [f"task.root={root}"]
    man = [*base, f"task.manifest={manifest}"]
    if case == "unreadable":
        (root / "healthy" / "p00_1.png").write_bytes(b"\x89PNG broken")
        return man, "p00_1.png: cannot read as an image"
    if case == "missing":
        (root / "healthy" / "p00_1.png").unlink()
        return man, "manifest.csv:3: file 'healthy/p00_1.png' does not exist"
    if case == "single_image_subject":
        save(root / "healthy" / "p99_0.png", eye(99, 0, False))
        return base, "p99_0.png: its subject has 1 image(s)"
    if case == "empty_class":
        (root / "empty").mkdir()
        return base, "class 'empty': no images left"
    if case == "mixed_sizes":
        save(root / "healthy" / "p00_1.png", eye(0, 1, False, 48, 48))
        return [*base, "task.size=null"], "p00_1.png: size (48, 48) differs from (32, 32)"
    if case == "mixed_channels":
        save(root / "healthy" / "p00_1.png", eye(0, 1, False, rgb=True))
        return base, "p00_1.png: channels 3 differs from 1"
    if case == "regex_matches_nothing":
        return [*base, "task.subject_pattern='^subject(\\d+)'"], "matches none of the 24 file names"
    raise AssertionError(case)


BAD = [
    "unreadable",
    "missing",
    "single_image_subject",
    "empty_class",
    "mixed_sizes",
    "mixed_channels",
    "regex_matches_nothing",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_error_and_no_file(tmp_path, case):
    overrides, fragment = bad_tree(tmp_path, case)
    with pytest.raises(PpganError) as err:
        prepare(tmp_path, *overrides)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert not list((tmp_path / "prep").glob("*.h5*")) and not list(tmp_path.glob("prep/.*"))


@pytest.mark.parametrize(
    ("case", "reason", "n_images"),
    [
        ("unreadable", "unreadable", 23),
        ("missing", "missing_file", 23),
        ("single_image_subject", "small_subject", 24),
        ("empty_class", "empty_class", 24),
    ],
)
def test_skip_mode_counts_what_it_drops(tmp_path, case, reason, n_images):
    overrides, fragment = bad_tree(tmp_path, case)
    metrics, path = prepare(tmp_path, *overrides, "task.on_error=skip")
    assert metrics["skipped"] == 1 and metrics[f"skipped/{reason}"] == 1
    assert metrics["n_images"] == n_images and len(read(path)["dis"]) == n_images
    assert fragment in (path.parent / "skipped.txt").read_text()
    assert read_class_names(path) == ["clouded", "healthy"]


def test_bad_options(tmp_path):
    manifest = make_tree(tmp_path / "img", n_subjects=2, per_subject=2)
    make_tree(tmp_path / "odd", n_subjects=2, per_subject=2, size=(40, 48))
    root = f"task.root={tmp_path / 'img'}"
    for extra, fragment in [
        (["task.size=40"], "task.size=40: must be a multiple of 16"),
        (["task.subject_pattern='('"], "not a regex"),
        ([f"task.manifest={manifest}", "task.split=subject"], "the val split is empty"),
        ([f"task.manifest={tmp_path / 'no.csv'}"], "no.csv: manifest does not exist"),
        (["task.layout=dicom"], "task.layout=dicom"),
        ([f"task.root={tmp_path / 'odd'}", "task.size=null"], "48x40 px cannot be kept"),
    ]:
        with pytest.raises(PpganError, match=fragment.replace("(", r"\(")):
            prepare(tmp_path, root, *extra)


def test_manifest_rows(tmp_path):
    make_tree(tmp_path / "img")
    root = tmp_path / "img"

    def manifest(*rows: str) -> str:
        (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
        return f"task.manifest={tmp_path / 'm.csv'}"

    ok = [f"healthy/p00_{k}.png,a,healthy" for k in range(3)]
    ok += [f"clouded/p01_{k}.png,b,clouded" for k in range(3)]
    for rows, fragment in [
        (["path,subject"], "missing column(s) ['label']"),
        (["path,subject,label", *ok, "healthy/p00_0.png,a,healthy"], "m.csv:8: 'healthy/p00_0"),
        (["path,subject,label,split", *[r + ",train" for r in ok[:-1]], ok[-1] + ",tst"], "tst"),
        (["path,subject,label", *ok, "healthy/p00_3.png,,healthy"], "m.csv:8: empty 'subject'"),
    ]:
        with pytest.raises(PpganError, match=re.escape(fragment)):
            prepare(tmp_path, f"task.root={root}", manifest(*rows))
    # Spaces around header names and cells are ignored; a class whose every file is missing is
    # reported empty (and dropped with on_error=skip).
    rows = [" path , subject , label ", *ok, "nowhere/x.png,c,lost", "nowhere/y.png,c,lost"]
    metrics, path = prepare(
        tmp_path, f"task.root={root}", manifest(*rows), "task.on_error=skip", "task.ratios=[2,1,0]"
    )
    assert metrics["skipped/missing_file"] == 2 and metrics["skipped/empty_class"] == 1
    assert read_class_names(path) == ["clouded", "healthy"] and metrics["n_images"] == 6


@pytest.mark.slow
def test_cli_bad_input_one_line_exit_1(tmp_path):
    overrides, fragment = bad_tree(tmp_path, "unreadable")
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "ppgan", "task=prepare", "debug=tiny", *overrides]
        + [f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("ppgan: error:")]
    assert len(errors) == 1 and fragment in errors[0]
    assert not list(run_dir.glob("*.h5*")) and not (run_dir / "metrics.json").exists()


# --- open-set attacks ------------------------------------------------------------------------


def test_openset_linkage_known_answers():
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    own = torch.eye(6, dtype=torch.bool)
    # Perfect: distance 0 to the other image of the same subject, 1 to everyone else.
    d = (ids[:, None] != ids[None, :]).float()
    m = openset_linkage(d, ids, ids, exclude=own)
    assert m["rank1"] == 1 and m["auc"] == 1 and m["chance_rank1"] == pytest.approx(1 / 3)
    assert m["n_probes"] == 6 and m["rank5"] == 1 and m["chance_rank5"] == 1
    # All alike (e.g. a constant output): ties are broken at random -> exactly chance.
    m = openset_linkage(torch.ones(6, 6), ids, ids, exclude=own)
    assert m["rank1"] == pytest.approx(1 / 3) and m["auc"] == 0.5
    # Always nearest to a wrong subject: rank-1 0, AUC 0.
    m = openset_linkage(1 - d, ids, ids, exclude=own)
    assert m["rank1"] == 0 and m["auc"] == 0
    # Without leaving its own original out, a probe would find itself: a different question.
    assert openset_linkage(torch.ones(6, 6) - own.float(), ids, ids)["rank1"] == 1
    # A subject with one image cannot be linked: its probe is left out.
    m = openset_linkage(
        torch.rand(3, 3),
        torch.tensor([0, 0, 1]),
        torch.tensor([0, 0, 1]),
        exclude=torch.eye(3, dtype=torch.bool),
    )
    assert m["n_probes"] == 2


ONE_EPOCH = ("siamese", "pp_mir", "pp_rid", "cf_pp_rid")
# The evaluation without the image-filter baselines (each would train its own attacker).
EVALUATE = ",".join(
    ['"task.attack.epochs=1"'] + [f'"~task.methods.{m}"' for m in ("blur", "pixelate", "ksame")]
)


@pytest.mark.slow
def test_pipeline_on_prepared_subject_disjoint_file(tmp_path):
    """The whole pipeline (CLI) on a prepared file whose test subjects are never trained on:
    every stage runs and the report carries the open-set attacks."""
    make_tree(tmp_path / "img", n_subjects=9, per_subject=4)
    metrics, path = prepare(
        tmp_path, f"task.root={tmp_path / 'img'}", "task.split=subject", "task.ratios=[4,2,3]"
    )
    assert metrics["subject_disjoint"] == 1 and metrics["subjects_test"] == 3
    out = tmp_path / "pipe"
    res = subprocess.run(
        [sys.executable, "-m", "ppgan", "dataset=hdf5", f"dataset.path={path}", "debug=tiny"]
        # One epoch per trained stage: this test is about plumbing, not numbers.
        + [f'+task.overrides.{stage}=["task.epochs=1"]' for stage in ONE_EPOCH]
        + [f"+task.overrides.evaluate=[{EVALUATE}]", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "synthesize").exists()  # hdf5 data: nothing to synthesize
    report = (out / "evaluate" / "report.md").read_text()
    assert "## Open-set attacks" in report and "**closed-set**" in report
    m = json.loads((out / "evaluate" / "metrics.json").read_text())
    for method in ("original", "pp_mir", "pp_rid", "pp_rid_cf"):
        assert 0 <= m[f"{method}/privacy/openset_siamese_rank1"] <= 1
        assert 0 <= m[f"{method}/privacy/openset_unseen_auc"] <= 1
    assert m["original/privacy/openset_chance_rank1"] == pytest.approx(1 / 3)
    assert m["original/privacy/openset_n_probes"] == 12
    # Explanation panels name the classes the prepared file stores.
    panel = json.loads(next((out / "explain" / "panels").glob("*.json")).read_text())
    assert panel["prediction"] in ("clouded", "healthy")


def test_openset_attacks_only_for_unseen_subjects():
    ids = torch.tensor([5, 5, 6, 6, 7, 7])
    orig = ids.float()[:, None, None, None] + 0.01 * torch.arange(6.0)[:, None, None, None]
    spaces = {"pix": lambda x: x.flatten(1)}
    m = openset_attacks(spaces, orig.clone(), orig, ids, train_ids=torch.tensor([0, 1, 7]))
    # Subjects 5 and 6 are unseen: 4 probes, each nearest to its subject's other image.
    assert m["privacy/openset_n_probes"] == 4 and m["privacy/openset_pix_rank1"] == 1
    assert m["privacy/openset_pix_auc"] == 1
    assert m["privacy/openset_chance_rank1"] == pytest.approx(1 / 3)  # 3 test subjects
    # Output unrelated to the input (constant): chance.
    m = openset_attacks(spaces, torch.zeros_like(orig), orig, ids, train_ids=torch.tensor([0]))
    assert m["privacy/openset_pix_rank1"] == pytest.approx(1 / 3)
    assert openset_attacks(spaces, orig, orig, ids, train_ids=ids) == {}  # closed-set data
