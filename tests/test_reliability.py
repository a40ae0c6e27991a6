"""Reliability and security: poisoned checkpoints, small splits, NaN scores, RNG streams,
resume safety, inputs that lie, and a corpus of malformed files."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomllib
import torch

from ppgan.data import dataset_path
from ppgan.data.hdf5 import load_images
from ppgan.engine import Selection, epoch_generator, load_frozen, save_checkpoint
from ppgan.engine.build import rebuild
from ppgan.errors import PpganError
from ppgan.tasks import run_task
from tests.conftest import judge_overrides, make_cfg, write_h5

ROOT = Path(__file__).resolve().parents[1]
GAN = [
    "task=anonymizer",
    "objective=pp_mir",
    "task.epochs=1",
    "task.selection_warmup=0",
    "objective.n_critic=1",
    "model.encoder.units=16",
    "model.decoder.units=16",
    "model.critic.channels=[8,16,16,16]",
]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging forever (the bug this guards against is an endless loop)."""

    def _raise(*_):
        raise TimeoutError(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- checkpoints cannot run code ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"_target_": "shutil.copyfile", "src": "{src}", "dst": "{dst}"},
        {"_target_": "shutil.copyfile", "_args_": ["{src}", "{dst}"]},
        # An allowed class whose argument is itself a call Hydra would make.
        {
            "_target_": "ppgan.models.classifier.Classifier",
            "in_shape": {"_target_": "shutil.copyfile", "src": "{src}", "dst": "{dst}"},
        },
        {"_target_": "ppgan.models.vae.reparameterize"},  # a function, not a network class
        {"_target_": "ppgan.models.classifier.torch.save", "obj": 1, "f": "{dst}"},
        {"_target_": "ppgan.models.classifier.Classifier", "_partial_": True},
    ],
)
def test_poisoned_checkpoint_is_refused_and_its_callable_never_runs(tmp_path, spec):
    src, dst = tmp_path / "src.txt", tmp_path / "TRACE"
    src.write_text("the callable ran")

    def fill(value):  # the spec with real paths
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return {"{src}": str(src), "{dst}": str(dst)}.get(value, value)

    poisoned = fill(spec)
    ckpt = tmp_path / "poisoned.pt"
    save_checkpoint(ckpt, {"model": {}, "model_spec": poisoned})
    with pytest.raises(
        PpganError, match="not allowed|not a network class|not a plain argument|unknown network"
    ):
        load_frozen(ckpt, key="task.identity_ckpt")
    assert not dst.exists()


def test_poisoned_checkpoint_through_a_task_is_a_one_line_error(tmp_path, data_dir):
    dst = tmp_path / "TRACE"
    spec = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(dst)}
    ckpt = tmp_path / "poisoned.pt"
    save_checkpoint(
        ckpt, {"encoder": {}, "encoder_spec": spec, "decoder": {}, "decoder_spec": spec}
    )
    cfg = make_cfg(f"paths.data_dir={data_dir}", "task=export", f"task.checkpoint={ckpt}")
    with pytest.raises(PpganError) as err:
        run_task(cfg, tmp_path / "out")
    assert "\n" not in str(err.value) and "shutil.copyfile" in str(err.value)
    assert not dst.exists()


def test_a_real_checkpoint_still_rebuilds():
    net = rebuild(
        {
            "_target_": "ppgan.models.classifier.Classifier",
            "in_shape": [3, 32, 32],
            "n_classes": 4,
            "channels": [8, 8, 8, 8],
            "kernels": [3, 3, 3, 3],
            "hidden": 8,
            "dropout": 0.0,
        }
    )
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


# --- no hangs, no sticky NaN, no colliding RNG streams ----------------------------------------


def subset_file(src: Path, dst: Path, n_train: int, drop_masks: bool = False) -> Path:
    """A copy of the tiny synthetic file with only `n_train` training images (the rest moved to
    validation, so the identities and classes stay the same) and optionally no masks."""
    with h5py.File(src, "r") as f:
        arrays = {k: f[k][()] for k in f}
    train = np.flatnonzero(arrays["set"] == 0)
    arrays["set"][train[n_train:]] = 1
    if drop_masks:
        arrays.pop("masks")
    return write_h5(dst, **arrays)


def test_gan_on_ten_training_images_with_batch_64_ends(tmp_path, judges, data_dir, caplog):
    src = dataset_path(make_cfg(f"paths.data_dir={data_dir}").dataset)
    small = subset_file(src, tmp_path / "small.h5", n_train=10)
    cfg = make_cfg(
        *GAN,
        *judge_overrides(judges),
        "dataset=hdf5",
        f"dataset.path={small}",
        "task.batch_size=64",
    )
    with deadline(120), caplog.at_level(logging.WARNING):
        metrics = run_task(cfg, tmp_path / "gan")
    assert "using batches of 10" in caplog.text
    assert np.isfinite(metrics["val/score"])


def test_nan_score_is_worst_never_a_sticky_best():
    sel = Selection(patience=3)
    assert sel.update((float("nan"),), 0)  # nothing better seen yet
    assert sel.update((0.7,), 1)  # any finite score beats NaN
    assert not sel.update((float("nan"),), 2)
    assert sel.update((0.5,), 3) and sel.best_epoch == 3
    # A checkpoint from an older run with best == [nan] does not freeze selection either.
    old = Selection(patience=0)
    old.load_state_dict({"best": [float("nan")], "best_epoch": 0, "bad_epochs": 0})
    assert old.update((1.0,), 1)


def test_rng_streams_are_distinct_per_seed_stream_epoch_and_pass():
    def first(*args, **kw) -> list[float]:
        return torch.rand(4, generator=epoch_generator(*args, **kw)).tolist()

    assert first(0, 3) == first(0, 3)  # a function of its arguments only
    draws = [
        first(0, 100_003),
        first(1, 0),  # seed * 100_003 + epoch collided with the line above
        first(0, 100, stream="train", n_pass=3),
        first(1, 0, stream="train", n_pass=0),
        first(0, 0, stream="train", n_pass=1000),
        first(0, 1, stream="train", n_pass=0),  # epoch * 1000 + pass collided with this
        first(0, 1, stream="references"),
        first(0, 1),
    ]
    assert len({tuple(d) for d in draws}) == len(draws)


def test_resume_refuses_changed_loss_weights(run, judges):
    args = [*GAN, *judge_overrides(judges)]
    run(*args, name="gan")
    with pytest.raises(PpganError, match=r"another config \(objective.loss.adv: 0.1 -> 0.5\)"):
        run(*args, "objective.loss.adv=0.5", name="gan")
    with pytest.raises(PpganError, match=r"objective.variant: 'mir' -> 'sir'"):
        run(*[a for a in args if a != "objective=pp_mir"], "objective=pp_sir", name="gan")
    run(*args, "task.epochs=2", name="gan")  # a longer budget is a legitimate resume


# --- inputs that lie --------------------------------------------------------------------------


def test_unit_float_images_are_rescaled_with_a_warning(tmp_path, valid_arrays, caplog):
    signed = load_images(write_h5(tmp_path / "u8.h5", **valid_arrays))
    unit = dict(valid_arrays, images=valid_arrays["images"].astype(np.float32) / 255.0)
    with caplog.at_level(logging.WARNING):
        data = load_images(write_h5(tmp_path / "unit.h5", **unit))
    assert "read as [0, 1]" in caplog.text and data.float_range == "unit"
    assert torch.allclose(data.images, signed.images, atol=1e-5)
    # Declared [-1, 1]: the same file is taken as it is, without rescaling.
    as_signed = load_images(tmp_path / "unit.h5", float_range="signed")
    assert as_signed.images.min() >= 0
    with pytest.raises(PpganError, match=r"outside \[0, 1\]"):
        load_images(
            write_h5(tmp_path / "big.h5", **dict(unit, images=unit["images"] * 2)),
            float_range="unit",
        )


def test_data_without_masks_warns_and_counterfactual_metrics_stay_finite(
    tmp_path, judges, data_dir, caplog
):
    src = dataset_path(make_cfg(f"paths.data_dir={data_dir}").dataset)
    nomask = subset_file(src, tmp_path / "nomask.h5", n_train=32, drop_masks=True)
    data = ["dataset=hdf5", f"dataset.path={nomask}", *judge_overrides(judges)]
    with caplog.at_level(logging.WARNING):
        run_task(make_cfg(*GAN, *data), tmp_path / "gan")
    assert "no ROI masks" in caplog.text
    cf = run_task(
        make_cfg(
            *data,
            "task=counterfactual",
            f"task.checkpoint={tmp_path / 'gan' / 'checkpoints' / 'best.pt'}",
            "task.epochs=1",
            "task.selection_warmup=0",
            "objective.n_critic=1",
        ),
        tmp_path / "cf",
    )
    assert all(np.isfinite(v) for v in cf.values()), cf
    assert cf["val/roi_complement"] > 0  # the proximity term sees the whole image, not nothing


# --- a corpus of malformed files: one line naming the file, nothing written ------------------


def malformed_corpus(root: Path, good: dict[str, np.ndarray]) -> dict[str, Path]:
    """One file (or path) per way an input can be wrong."""
    root.mkdir(parents=True, exist_ok=True)
    imgs = good["images"]
    n = len(imgs)

    def h5(name: str, **changes) -> Path:
        arrays = {k: v for k, v in {**good, **changes}.items() if v is not None}
        return write_h5(root / f"{name}.h5", **arrays)

    corpus = {
        "wrong_rank": h5("wrong_rank", images=imgs[..., 0, 0]),
        "rank5": h5("rank5", images=imgs[..., None]),
        "size_not_multiple_of_16": h5("size40", images=np.zeros((n, 40, 40, 3), np.uint8)),
        "too_small": h5("size16", images=np.zeros((n, 16, 16, 3), np.uint8)),
        "non_square": h5("nonsquare", images=np.zeros((n, 32, 48, 3), np.uint8)),
        "empty": h5(
            "empty",
            images=np.zeros((0, 32, 32, 3), np.uint8),
            id=np.zeros(0, int),
            dis=np.zeros(0, int),
            set=np.zeros(0, int),
            masks=None,
        ),
        "too_many_channels": h5("ch5", images=np.zeros((n, 32, 32, 5), np.uint8)),
        "unknown_split_codes": h5("splits", set=np.full(n, 7)),
        "string_labels": h5("strlabels", dis=np.array([b"a", b"b"] * (n // 2))),
        "float_labels": h5("floatlabels", dis=np.linspace(0, 1, n)),
        "negative_labels": h5("neglabels", dis=-np.ones(n, int)),
        "labels_wrong_length": h5("shortlabels", dis=good["dis"][:-1]),
        "nan_pixels": h5("nan", images=np.full(imgs.shape, np.nan, np.float32)),
        "out_of_range_pixels": h5("range", images=np.full(imgs.shape, 3.0, np.float32)),
        "int16_pixels": h5("int16", images=imgs.astype(np.int16)),
        "masks_wrong_shape": h5("masks", masks=np.ones((n, 16, 16), np.uint8)),
        "single_disease_class": h5("oneclass", dis=np.zeros(n, int)),
        "missing_key": h5("nodis", dis=None),
        "no_val_split": h5("noval", set=np.zeros(n, int)),
    }
    with h5py.File(root / "scalar.h5", "w") as f:  # labels as a scalar string
        for k, v in good.items():
            f.create_dataset(k, data=v if k != "dis" else "abc")
    corpus["scalar_labels"] = root / "scalar.h5"
    with h5py.File(root / "null.h5", "w") as f:  # labels with an empty dataspace
        for k, v in good.items():
            f.create_dataset(k, data=v) if k != "set" else f.create_dataset(
                k, shape=None, dtype="i8"
            )
    corpus["null_labels"] = root / "null.h5"
    with h5py.File(root / "maskgroup.h5", "w") as f:
        for k, v in good.items():
            f.create_dataset(k, data=v) if k != "masks" else f.create_group("masks")
    corpus["masks_group"] = root / "maskgroup.h5"
    corpus["string_masks"] = h5("strmasks", masks=np.full((n, 32, 32), b"x"))
    whole = h5("whole").read_bytes()  # a valid file, cut in half
    corpus["truncated"] = root / "truncated.h5"
    corpus["truncated"].write_bytes(whole[: len(whole) // 2])
    corpus["not_hdf5"] = root / "notes.h5"
    corpus["not_hdf5"].write_text("images,id,dis\n1,2,3\n")
    corpus["directory"] = root / "a_directory.h5"
    corpus["directory"].mkdir()
    corpus["missing"] = root / "missing.h5"
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    n = 18
    good = {
        "images": rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
        "id": np.repeat(np.arange(3), 6),
        "dis": np.repeat([0, 1, 0], 6),
        "set": np.tile([0, 0, 0, 0, 1, 2], 3),
        "masks": np.ones((n, 32, 32), dtype=np.uint8),
    }
    return malformed_corpus(tmp_path_factory.mktemp("corpus"), good)


CASES = [
    "wrong_rank",
    "rank5",
    "size_not_multiple_of_16",
    "too_small",
    "non_square",
    "empty",
    "too_many_channels",
    "unknown_split_codes",
    "string_labels",
    "float_labels",
    "negative_labels",
    "labels_wrong_length",
    "nan_pixels",
    "out_of_range_pixels",
    "int16_pixels",
    "masks_wrong_shape",
    "single_disease_class",
    "missing_key",
    "no_val_split",
    "scalar_labels",
    "null_labels",
    "masks_group",
    "string_masks",
    "truncated",
    "not_hdf5",
    "directory",
    "missing",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_file_is_one_line_error_naming_it_and_nothing_is_written(tmp_path, corpus, case):
    path = corpus[case]
    before = path.read_bytes() if path.is_file() else None
    cfg = make_cfg("task=disease", "dataset=hdf5", f"dataset.path={path}")
    out = tmp_path / "run"
    with pytest.raises(PpganError) as err:
        run_task(cfg, out)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert written == [], written
    if before is not None:
        assert path.read_bytes() == before  # the input is never touched


@pytest.mark.parametrize("task", ["identity", "siamese"])
def test_a_single_identity_is_refused_not_trained_or_hung(tmp_path, valid_arrays, task):
    one = write_h5(tmp_path / "one.h5", **dict(valid_arrays, id=np.zeros(18, int)))
    cfg = make_cfg(f"task={task}", "dataset=hdf5", f"dataset.path={one}")
    with deadline(60), pytest.raises(PpganError, match="at least 2 identities"):
        run_task(cfg, tmp_path / "run")


def test_checkpoint_that_is_not_a_dict_and_bad_settings_are_clear_errors(
    tmp_path, data_dir, judges
):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(PpganError, match="not a ppgan checkpoint"):
        load_frozen(tmp_path / "tensor.pt")
    with pytest.raises(PpganError, match="seed=-1: must be >= 0"):
        run_task(make_cfg(f"paths.data_dir={data_dir}", "task=disease", "seed=-1"), tmp_path / "s")
    with pytest.raises(PpganError, match="objective.n_critic=0: must be >= 1"):
        run_task(
            make_cfg(
                f"paths.data_dir={data_dir}", *GAN, *judge_overrides(judges), "objective.n_critic=0"
            ),
            tmp_path / "g",
        )


def test_corpus_covers_every_case(corpus):
    assert sorted(corpus) == sorted(CASES)


@pytest.mark.slow
def test_malformed_file_on_the_command_line(tmp_path, corpus):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppgan",
            "task=disease",
            "dataset=hdf5",
            f"dataset.path={corpus['truncated']}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ppgan: error:")]
    assert len(errors) == 1 and "truncated.h5" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# --- packaging --------------------------------------------------------------------------------


def test_every_package_ships():
    """pyproject lists the packages by hand (ppgan.conf lives outside ppgan/): none may be missed,
    or a non-editable install would lack it."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ppgan").rglob("__init__.py")
    }
    assert found | {"ppgan.conf"} == listed
    assert re.search(r'"ppgan.conf" = "conf"', (ROOT / "pyproject.toml").read_text())
