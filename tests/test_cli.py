"""The real command line in a subprocess: errors, multirun, console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def ppgan(*args: str, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # Hydra wants flags before overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "ppgan", *flags, "debug=tiny", f"paths.data_dir={data_dir}"]
    return subprocess.run(
        cmd + overrides,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bad_file_is_one_line_nonzero_no_traceback(tmp_path, data_dir):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    res = ppgan(
        "task=identity",
        "dataset=hdf5",
        f"dataset.path={bad}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        data_dir=data_dir,
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("ppgan: error:")]
    assert errors == [f"ppgan: error: {bad}: cannot read as HDF5 (" + errors[0].split("(", 1)[1]]
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert bad.read_bytes() == b"garbage"  # destroys nothing


def test_full_error_switch_shows_traceback(tmp_path, data_dir):
    res = ppgan(
        "task=identity",
        "dataset=hdf5",
        f"dataset.path={tmp_path / 'no.h5'}",
        "full_error=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        data_dir=data_dir,
    )
    assert res.returncode != 0 and "PpganError" in res.stderr


def test_bad_override_fails_cleanly(tmp_path, data_dir):
    res = ppgan("task=nosuchtask", cwd=tmp_path, data_dir=data_dir)
    assert res.returncode != 0 and "nosuchtask" in res.stderr


def test_multirun_gives_one_job_dir_each_with_hparams(tmp_path, data_dir):
    res = ppgan(
        "-m",
        "task=identity",
        "task.epochs=1",
        "optimizer.lr=1e-3,2e-4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        data_dir=data_dir,
    )
    assert res.returncode == 0, res.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert "test/acc" in json.loads((job / "metrics.json").read_text())
        # add_hparams writes the HParams plugin's session records into the job's own tb/.
        assert any(b"hparams" in p.read_bytes() for p in (job / "tb").glob("events.*"))
