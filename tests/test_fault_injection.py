"""Fault injection: each command killed at random moments, or meeting a full disk, then resumed.

The promise of the three commands: a run killed at any moment (SIGKILL, no
clean-up) and started again with the same command ends with exactly the
output of an uninterrupted run; a full disk gives one line and leaves a state
that resumes.
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SEEDS = [11, 12]


def _run_killed(cmd: list[str], delay_s: float) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < delay_s:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


TRAIN = ["--scales", "2", "--base", "4", "--patch", "48", "--batch", "2", "--steps-per-epoch",
         "8", "--val-crop", "64", "--quiet", "--val-fraction", "0.25", "--epochs", "4",
         "--norm", "none", "--dose-range", "0.2:2"]


def _full_disk_on_call(real, n: int):
    """``real``, except that its ``n``-th call finds the disk full."""
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))
        return real(*a, **k)

    return wrapper


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("seed", SEEDS)
def test_train_killed_at_random_resumes_bit_identical(dataset, tmp_path, seed):
    base = [sys.executable, "-m", "napari_sbd.training.cli", str(dataset), *TRAIN]
    subprocess.run([*base, "--out", str(tmp_path / "ref")], check=True, env=ENV,
                   capture_output=True)
    out = tmp_path / "killed"
    rng = np.random.default_rng(seed)
    for _ in range(2):  # killed twice, at random moments
        _run_killed([*base, "--out", str(out), "--resume"], float(rng.uniform(2.0, 7.0)))
    subprocess.run([*base, "--out", str(out), "--resume"], check=True, env=ENV,
                   capture_output=True)
    a, b = _weights(tmp_path / "ref" / "last.pt"), _weights(out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(out / "log.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2", "3", "4"]


def test_train_disk_full_is_one_line_and_resumes(dataset, tmp_path, capsys, monkeypatch):
    import napari_sbd.training.loop as loop
    from napari_sbd.training.cli import main

    args = [str(dataset), *TRAIN]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    monkeypatch.setattr(loop, "save_checkpoint", _full_disk_on_call(loop.save_checkpoint, 3))
    out = tmp_path / "full"
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    a, b = _weights(tmp_path / "ref" / "last.pt"), _weights(out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("seed", SEEDS)
def test_denoise_killed_at_random_resumes_bit_identical(tmp_path, tiny_model_file, seed):
    stack = np.random.default_rng(seed).poisson(0.45, (30, 96, 96)).astype(np.uint16)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, stack)
    base = [sys.executable, "-m", "napari_sbd.denoise_cli", str(path), "--model",
            str(tiny_model_file), "--quiet", "--columns", "--vacuum-level", "0.45"]
    subprocess.run([*base, "-o", str(tmp_path / "ref.zarr")], check=True, env=ENV,
                   capture_output=True)
    out = tmp_path / "killed.zarr"
    rng = np.random.default_rng(seed)
    for _ in range(2):
        _run_killed([*base, "-o", str(out)], float(rng.uniform(2.0, 6.0)))
    subprocess.run([*base, "-o", str(out)], check=True, env=ENV, capture_output=True)
    a = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")
    b = zarr.open_group(str(out), mode="r")
    assert a["denoised"][:].tobytes() == b["denoised"][:].tobytes()
    assert (tmp_path / "ref.zarr" / "columns.csv").read_bytes() == \
        (out / "columns.csv").read_bytes()
    assert not list(tmp_path.glob(".killed.zarr.*"))


SIMULATE = (
    "import sys; from napari_sbd.simulate.dataset import simulate_dataset;"
    "from napari_sbd.simulate.imaging import ImagingParams;"
    "simulate_dataset(sys.argv[1], 3, [4.0, 8.0], ImagingParams(sampling_a=0.1, "
    "pixel_size_pm=12.0, slice_thickness_a=2.0), seed=7, fixed=dict(lateral_a=26.0, "
    "support_height_a=10.0, thickness_nm=1.2, particle='1nm'), workers=1)"
)


@pytest.mark.parametrize("seed", SEEDS)
def test_simulate_killed_at_random_resumes_bit_identical(tmp_path, seed):
    pytest.importorskip("abtem")
    base = [sys.executable, "-c", SIMULATE]
    subprocess.run([*base, str(tmp_path / "ref")], check=True, env=ENV, capture_output=True)
    out = tmp_path / "killed"
    rng = np.random.default_rng(seed)
    for _ in range(2):
        _run_killed([*base, str(out)], float(rng.uniform(3.0, 9.0)))
    subprocess.run([*base, str(out)], check=True, env=ENV, capture_output=True)
    ref = sorted(p.name for p in (tmp_path / "ref").glob("*.tif"))
    assert ref == sorted(p.name for p in out.glob("*.tif")) and len(ref) == 6
    for name in ref:
        assert (tmp_path / "ref" / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "ref" / "metadata.csv").read_text() == (out / "metadata.csv").read_text()


def test_simulate_disk_full_resumes(tmp_path, monkeypatch):
    pytest.importorskip("abtem")
    import napari_sbd.simulate.dataset as ds
    from napari_sbd.simulate.imaging import ImagingParams

    fast = ImagingParams(sampling_a=0.1, pixel_size_pm=12.0, slice_thickness_a=2.0)
    small = dict(lateral_a=26.0, support_height_a=10.0, thickness_nm=1.2, particle="1nm")
    monkeypatch.setattr(ds, "_write_tiff", _full_disk_on_call(ds._write_tiff, 3))
    with pytest.raises(OSError, match="No space left"):
        ds.simulate_dataset(tmp_path / "d", 2, [4.0, 8.0], fast, seed=7, fixed=small, workers=1)
    monkeypatch.undo()
    assert ds.simulate_dataset(tmp_path / "d", 2, [4.0, 8.0], fast, seed=7, fixed=small,
                               workers=1) == 4
    ds.simulate_dataset(tmp_path / "r", 2, [4.0, 8.0], fast, seed=7, fixed=small, workers=1)
    for p in sorted((tmp_path / "r").glob("*.tif")):
        assert p.read_bytes() == (tmp_path / "d" / p.name).read_bytes()
