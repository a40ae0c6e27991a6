"""The HDF5 data layer (validation, lazy reading) and the synthetic iris generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ppgan.config import CONF_DIR
from ppgan.data.hdf5 import load_images
from ppgan.data.synthetic import SyntheticIrisSpec, generate, synthesize
from ppgan.errors import PpganError
from tests.conftest import make_cfg, write_h5


def test_valid_file_loads(tmp_path, valid_arrays):
    data = load_images(write_h5(tmp_path / "ok.h5", **valid_arrays))
    assert data.shape == (3, 32, 32)
    assert (data.n_ids, data.n_classes, len(data)) == (3, 2, 18)
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert [len(data.indices(s)) for s in ("train", "val", "test")] == [12, 3, 3]
    batch = data.batch(data.indices("val"))
    assert batch["images"].shape == (3, 3, 32, 32) and batch["masks"].shape == (3, 1, 32, 32)


def test_grayscale_and_no_masks(tmp_path, valid_arrays):
    valid_arrays["images"] = valid_arrays["images"][..., 0]
    del valid_arrays["masks"]
    data = load_images(write_h5(tmp_path / "g.h5", **valid_arrays))
    assert data.shape == (1, 32, 32) and not data.has_masks
    assert bool((data.batch(torch.arange(2))["masks"] == 1).all())  # whole image is the ROI


def test_float_images_accepted(tmp_path, valid_arrays):
    valid_arrays["images"] = valid_arrays["images"].astype(np.float32) / 127.5 - 1
    data = load_images(write_h5(tmp_path / "f.h5", **valid_arrays))
    assert data.images.dtype == torch.float32


def test_lazy_reading_matches_memory(tmp_path, valid_arrays):
    path = write_h5(tmp_path / "ok.h5", **valid_arrays)
    eager, lazy = load_images(path), load_images(path, in_memory_max_gb=0)
    assert lazy.lazy and not eager.lazy
    idx = torch.tensor([7, 2, 11, 2])  # unsorted, with a repeat: order must be kept
    a, b = eager.batch(idx), lazy.batch(idx)
    for key in ("images", "masks", "id", "dis"):
        assert torch.equal(a[key], b[key])


def test_split_codes_mapping(tmp_path, valid_arrays):
    valid_arrays["set"] = np.tile([0, 0, 0, 0, 2, 1], 3)  # the original code's convention
    data = load_images(
        write_h5(tmp_path / "c.h5", **valid_arrays), split_codes={"train": 0, "val": 2, "test": 1}
    )
    assert torch.equal(data.indices("val"), torch.tensor([4, 10, 16]))


def test_noncontiguous_ids_are_remapped(tmp_path, valid_arrays, caplog):
    valid_arrays["id"] = np.repeat([3, 10, 42], 6)
    data = load_images(write_h5(tmp_path / "r.h5", **valid_arrays))
    assert data.n_ids == 3 and sorted(set(data.ids.tolist())) == [0, 1, 2]
    assert "not contiguous" in caplog.text
    with pytest.raises(PpganError, match=r"r\.h5: key 'id': labels are not contiguous"):
        load_images(tmp_path / "r.h5", remap_labels=False)


def _break(arrays, case):
    a = dict(arrays)
    if case == "missing key":
        del a["dis"]
    elif case == "length mismatch":
        a["dis"] = a["dis"][:-1]
    elif case == "wrong rank":
        a["images"] = a["images"][:, :, 0, 0]
    elif case == "negative labels":
        a["id"] = a["id"] - 1
    elif case == "non-integer labels":
        a["dis"] = a["dis"] + 0.5
    elif case == "empty train split":
        a["set"] = np.where(a["set"] == 0, 1, a["set"])
    elif case == "empty val split":
        a["set"] = np.where(a["set"] == 1, 0, a["set"])
    elif case == "non-finite pixels":
        a["images"] = a["images"].astype(np.float32) / 127.5 - 1
        a["images"][3, 0, 0, 0] = np.nan
    elif case == "masks wrong shape":
        a["masks"] = a["masks"][:, :16]
    elif case == "not square multiple of 16":
        a["images"] = a["images"][:, :30, :30]
        del a["masks"]
    elif case == "unknown split code":
        a["set"] = a["set"].copy()
        a["set"][0] = 7
    return a


@pytest.mark.parametrize(
    ("case", "key", "message"),
    [
        ("missing key", "dis", "missing"),
        ("length mismatch", "dis", "has 17 entries but 'images' has 18"),
        ("wrong rank", "images", "expected (N,H,W) or (N,H,W,C)"),
        ("negative labels", "id", "must be >= 0"),
        ("non-integer labels", "dis", "must be integers"),
        ("empty train split", "set", "train split"),
        ("empty val split", "set", "val split"),
        ("non-finite pixels", "images", "non-finite pixels"),
        ("masks wrong shape", "masks", "expected shape"),
        ("not square multiple of 16", "images", "multiple of 16"),
        ("unknown split code", "set", "not in dataset.split_codes"),
    ],
)
def test_malformed_file_gives_one_line_error(tmp_path, valid_arrays, case, key, message):
    path = write_h5(tmp_path / "bad.h5", **_break(valid_arrays, case))
    with pytest.raises(PpganError) as info:
        load_images(path)
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text and f"key '{key}'" in text and message in text


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(PpganError, match="does not exist"):
        load_images(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(PpganError, match="cannot read as HDF5"):
        load_images(junk)


def test_separate_mask_file(tmp_path, valid_arrays):
    masks = valid_arrays.pop("masks")
    masks[:, :8] = 0
    path = write_h5(tmp_path / "img.h5", **valid_arrays)
    mpath = write_h5(tmp_path / "m.h5", masks=masks)
    data = load_images(path, mask_path=mpath)
    assert data.has_masks and float(data.masks[:, :, :8].sum()) == 0
    write_h5(tmp_path / "m2.h5", masks=masks[:, :16])
    with pytest.raises(PpganError, match=r"m2\.h5: key 'masks': expected shape"):
        load_images(path, mask_path=tmp_path / "m2.h5")


def test_synthetic_is_byte_identical_per_seed(tmp_path):
    spec = SyntheticIrisSpec(n_identities=4, images_per_identity=5, size=32)
    a = synthesize(spec, tmp_path / "a.h5").read_bytes()
    b = synthesize(spec, tmp_path / "b.h5").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    c = generate(SyntheticIrisSpec(n_identities=4, images_per_identity=5, size=32, seed=1))
    assert not np.array_equal(c["images"], generate(spec)["images"])


def test_synthetic_format_and_disease_design(tmp_path):
    spec = SyntheticIrisSpec(
        n_identities=9, images_per_identity=6, size=48, channels=1, n_disease_classes=3
    )
    data = load_images(synthesize(spec, tmp_path / "s.h5"), require_splits=("train", "val", "test"))
    assert data.shape == (1, 48, 48) and data.has_masks
    assert (data.n_ids, data.n_classes) == (9, 3)
    for i in range(9):  # disease is per person, every person in every split
        assert len(set(data.dis[data.ids == i].tolist())) == 1
        assert len(set(data.split[data.ids == i].tolist())) == 3
    assert np.bincount(data.dis.numpy()).tolist() == [18, 18, 18]  # balanced
    # The disease sign (clouded pupil) is visible: diseased pupils are brighter at the centre.
    centre = data.images[:, 0, 22:26, 22:26].mean((1, 2))
    assert centre[data.dis == 2].mean() > centre[data.dis == 0].mean() + 0.5


def test_synthetic_spec_validation():
    with pytest.raises(PpganError, match="size"):
        SyntheticIrisSpec(size=40)
    with pytest.raises(PpganError, match="n_disease_classes"):
        SyntheticIrisSpec(n_disease_classes=1)


def test_synthetic_default_spec_keeps_its_cache_name_and_stream():
    """The options added later (disease_per, masks) leave the default data set as it was: same
    cache fingerprint (pinned), same labels and splits (a function of the RNG stream)."""
    assert SyntheticIrisSpec().fingerprint() == "032480bc3e"
    tiny = SyntheticIrisSpec(n_identities=6, images_per_identity=15, size=32)
    assert tiny.fingerprint() == "c2f372b84d"
    explicit = SyntheticIrisSpec(
        n_identities=6, images_per_identity=15, size=32, disease_per="person", masks=True
    )
    assert explicit.fingerprint() == tiny.fingerprint()
    arrays = generate(tiny)
    labels = np.concatenate([arrays[k] for k in ("id", "dis", "set")]).tobytes()
    assert hashlib.sha256(labels).hexdigest()[:16] == "80019b002fbd41f6"
    for changed in ({"disease_per": "image"}, {"masks": False}):
        assert SyntheticIrisSpec(**changed).fingerprint() != SyntheticIrisSpec().fingerprint()


def _per_image(**kw) -> SyntheticIrisSpec:
    args = dict(n_identities=6, images_per_identity=15, size=32, channels=1)
    return SyntheticIrisSpec(**(args | dict(n_disease_classes=3, disease_per="image") | kw))


def test_synthetic_per_image_disease_is_balanced_and_independent_of_identity():
    spec = _per_image(n_identities=8, images_per_identity=30)
    a = generate(spec)
    k, ids, dis, sets = 3, a["id"], a["dis"], a["set"]
    for person in range(spec.n_identities):
        mine = ids == person
        assert len(set(dis[mine].tolist())) == k  # varies within a person: every class
        for code in (0, 1, 2):  # balanced within each split: counts differ by at most one
            counts = np.bincount(dis[mine & (sets == code)], minlength=k)
            assert counts.max() - counts.min() <= 1, (person, code, counts)
    # Independent of identity: every person's class distribution is the same (21 train images
    # of 3 classes: 7 each), so knowing the disease narrows nobody down.
    table = np.stack([np.bincount(dis[(ids == p) & (sets == 0)], minlength=k) for p in range(8)])
    assert (table == 7).all()
    assert np.bincount(dis, minlength=k).tolist() == [80, 80, 80]
    # The disease sign still shows per image: diseased pupils are brighter at the centre.
    images = a["images"].astype(np.float64)
    centre = images[:, 14:18, 14:18].mean((1, 2))
    assert centre[dis == 2].mean() > centre[dis == 0].mean() + 60


def test_synthetic_per_image_is_deterministic_and_can_omit_masks(tmp_path):
    spec = _per_image()
    a, b = generate(spec), generate(spec)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["dis"], generate(_per_image(seed=1))["dis"])
    assert a["images"].shape == (90, 32, 32) and a["images"].dtype == np.uint8
    assert a["masks"].shape == (90, 32, 32)
    bare = generate(_per_image(masks=False))
    assert "masks" not in bare and set(bare) == {"images", "id", "dis", "set"}
    assert np.array_equal(bare["images"], a["images"]) and np.array_equal(bare["dis"], a["dis"])
    data = load_images(synthesize(_per_image(masks=False), tmp_path / "bare.h5"))
    assert data.shape == (1, 32, 32) and not data.has_masks and data.n_classes == 3
    big = generate(_per_image(n_identities=3, images_per_identity=3, size=128))
    assert big["images"].shape == (9, 128, 128) and big["images"].dtype == np.uint8


def test_synthetic_per_image_config_composes():
    cfg = make_cfg("dataset=synthetic_per_image")
    gen = cfg.dataset.generator
    assert (gen.channels, gen.n_disease_classes, gen.disease_per, gen.masks) == (
        1,
        3,
        "image",
        True,
    )
    assert gen.size == 32  # debug=tiny shrinks it; the config itself is 128 px
    assert OmegaConf.load(CONF_DIR / "dataset" / "synthetic_per_image.yaml").generator.size == 128
    assert len(cfg.dataset.class_names) == 3
    with pytest.raises(PpganError, match="disease_per"):
        SyntheticIrisSpec(disease_per="visit")


@pytest.mark.parametrize("task", ["synthesize", "prepare", "export", "roi_masks"])
@pytest.mark.parametrize("name", ["../escape.h5", "/tmp/elsewhere.h5", ".hidden.h5", "out.txt"])
def test_output_file_names_stay_in_the_run_dir(tmp_path, task, name):
    """Every task that writes a data file refuses a name that could replace a file it does not
    own (the input data, say), before reading anything."""
    from ppgan.tasks import run_task

    cfg = make_cfg(
        f"task={task}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"task.filename={name}",
        *(["task.root=/nonexistent"] if task == "prepare" else []),
        *(["task.checkpoint=/nonexistent.pt"] if task == "export" else []),
        *(["task.disease_ckpt=/nonexistent.pt"] if task == "roi_masks" else []),
    )
    with pytest.raises(PpganError, match=f"task.filename={name}: a plain file name"):
        run_task(cfg, tmp_path / "run")
    assert not (tmp_path / "data").exists() and not (tmp_path / "escape.h5").exists()
