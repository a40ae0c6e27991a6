"""The HDF5 data layer (validation, lazy reading) and the synthetic iris generator."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ppgan.data.hdf5 import load_images
from ppgan.data.synthetic import SyntheticIrisSpec, generate, synthesize
from ppgan.errors import PpganError
from tests.conftest import write_h5


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
