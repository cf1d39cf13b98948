"""napari-sbd-denoise: equals the API, resumes after a kill, refuses to overwrite, bad input."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_sbd.core.inference import load_model
from napari_sbd.denoise_cli import main
from napari_sbd.sample_data import clean_frame


@pytest.fixture
def model_path(tiny_model_file):
    return tiny_model_file


@pytest.fixture
def movie(tmp_path):
    clean, _ = clean_frame()
    clean = clean[:160, 200:392]  # vacuum on top, the particle below
    stack = np.random.default_rng(0).poisson(np.broadcast_to(clean, (6, *clean.shape)))
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, stack.astype(np.uint16))
    return path, stack


def test_output_equals_the_api_and_has_metadata(movie, model_path, tmp_path):
    path, stack = movie
    out = tmp_path / "out.zarr"
    assert main([str(path), "-o", str(out), "--model", str(model_path), "--quiet", "--columns",
                 "--likelihood", "--vacuum-level", "0.45"]) == 0
    g = zarr.open_group(str(out), mode="r")
    expected = load_model(model_path, device="cpu").denoise(stack)
    np.testing.assert_array_equal(g["denoised"][:], expected)
    meta = g.attrs["napari_sbd"]
    assert meta["complete"] is True and meta["model"]["dose"] == 0.45
    assert meta["command"].startswith("napari-sbd-denoise ") and "--columns" in meta["command"]
    assert g["llr_map"].shape == stack.shape
    with open(out / "columns.csv") as fh:
        rows = list(csv.DictReader(fh))
    header = (out / "columns.csv").read_text().splitlines()[0]
    # the movie's table: every column's track through the frames, units in the names
    assert header == ("track,frame,y_nm,x_nm,position_error_pm,row_px,col_px,sigma_a,peak_counts,"
                      "contrast_counts,intensity_counts_px,llr,class")
    assert (out / "columns.h5").exists()  # the same table in HDF5, units as attributes
    for r in rows:  # (the untrained test model may find none)
        assert float(r["y_nm"]) == pytest.approx(float(r["row_px"]) * 0.0061, abs=1e-4)
    np.testing.assert_array_equal(stack, tifffile.imread(path))  # input untouched


def test_refuses_to_overwrite(movie, model_path, tmp_path, capsys):
    path, _ = movie
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main([str(path), "-o", str(out), "--model", str(model_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "precious.txt").exists()
    assert main([str(path), "-o", str(path), "--model", str(model_path), "--quiet"]) == 2
    assert "is the input itself" in capsys.readouterr().err
    # --overwrite replaces only a store of ours: a folder we did not write is kept
    assert main([str(path), "-o", str(out), "--model", str(model_path), "--quiet",
                 "--overwrite"]) == 2
    assert "not a store written by napari-sbd" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else b"")
                  for p in folder.rglob("*"))


def test_overwrite_never_deletes_the_folder_holding_the_input(movie, model_path, tmp_path, capsys):
    # the reported data loss: `-o proj --overwrite` where proj holds the movie
    _, stack = movie
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    tifffile.imwrite(proj / "movie.tif", stack.astype(np.uint16))
    (proj / "notes.txt").write_text("x")
    before = _tree(proj)
    code = main([str(proj / "movie.tif"), "-o", str(proj), "--model", str(model_path), "--quiet",
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite refused" in err and "Traceback" not in err
    assert _tree(proj) == before


def test_overwrite_replaces_only_our_own_store(movie, model_path, tmp_path, capsys):
    path, _stack = movie
    out = tmp_path / "out.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet"]
    assert main([*args, "--frames", "0:2"]) == 0
    assert (out / ".sbd" / "STORE").is_file()
    # another job (now with columns) over our store: replaced, leaving nothing aside
    assert main([*args, "--columns", "--overwrite"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["napari_sbd"]["complete"] is True
    assert not list(tmp_path.glob(".out.zarr.*"))  # no temporary or replaced store left
    # a user's file inside our store makes it no longer provably ours
    (out / "my_analysis.csv").write_text("keep")
    assert main([*args, "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "my_analysis.csv").read_text() == "keep"
    (out / "my_analysis.csv").unlink()
    # a link to a store is never followed, nor replaced
    link = tmp_path / "link.zarr"
    link.symlink_to(out, target_is_directory=True)
    kept = _tree(out)
    assert main([str(path), "-o", str(link), "--model", str(model_path), "--quiet", "--frames",
                 "0:1", "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and _tree(out) == kept
    # a file at the output path is never ours
    f = tmp_path / "result.tif"
    f.write_bytes(b"user data")
    assert main([str(path), "-o", str(f), "--model", str(model_path), "--quiet",
                 "--overwrite"]) == 2
    assert f.read_bytes() == b"user data"


def test_overwrite_keeps_a_store_that_holds_the_model(movie, model_path, tmp_path, capsys):
    import shutil

    path, _ = movie
    out = tmp_path / "out.zarr"
    assert main([str(path), "-o", str(out), "--model", str(model_path), "--quiet",
                 "--frames", "0:1"]) == 0
    inner = out / ".sbd" / "model.pt"
    shutil.copy(model_path, inner)
    assert main([str(path), "-o", str(out), "--model", str(inner), "--quiet", "--columns",
                 "--overwrite"]) == 2
    assert "which this job reads" in capsys.readouterr().err and inner.is_file()


def test_frame_ranges_fill_one_store(movie, model_path, tmp_path):
    path, stack = movie
    out = tmp_path / "shared.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet"]
    assert main([*args, "--frames", "0:4"]) == 0
    assert zarr.open_group(str(out), mode="r").attrs["napari_sbd"]["complete"] is False
    assert main([*args, "--frames", "4:"]) == 0
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["napari_sbd"]["complete"] is True
    np.testing.assert_array_equal(g["denoised"][:], load_model(model_path).denoise(stack))


@pytest.mark.slow
def test_resume_after_a_kill_is_bit_identical(tmp_path, model_path):
    stack = np.random.default_rng(1).poisson(0.45, (40, 96, 96)).astype(np.uint16)
    path = tmp_path / "long.tif"
    tifffile.imwrite(path, stack)
    ref, out = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    base = [sys.executable, "-m", "napari_sbd.denoise_cli", str(path), "--model",
            str(model_path), "--quiet", "--columns", "--vacuum-level", "0.45"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, "-o", str(ref)], check=True, capture_output=True, env=env)
    proc = subprocess.Popen([*base, "-o", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    done = out / ".sbd" / "done"
    t0 = time.time()
    while (not done.exists() or len(list(done.iterdir())) < 5) and time.time() - t0 < 120:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list(done.iterdir())) < 40
    # resumed with another thread setting: the store pins the first run's
    subprocess.run([*base, "-o", str(out)], check=True, capture_output=True)
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    assert b.attrs["napari_sbd"]["complete"] is True
    assert a["denoised"][:].tobytes() == b["denoised"][:].tobytes()
    assert (ref / "columns.csv").read_bytes() == (out / "columns.csv").read_bytes()


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "does not exist"), ("rgb", "RGB"), ("negative", "negative"),
     ("offset", "look like counts"), ("bad_model", "not a readable PyTorch file")],
)
def test_bad_input_one_clear_error_and_no_output(tmp_path, model_path, capsys, setup, message):
    path = tmp_path / "in.tif"
    model = model_path
    if setup == "rgb":
        tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    elif setup == "negative":
        tifffile.imwrite(path, -np.ones((2, 32, 32), np.float32))
    elif setup == "offset":
        tifffile.imwrite(path, np.full((2, 32, 32), 100, np.uint16))
    elif setup == "bad_model":
        tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16))
        model = tmp_path / "fake.pt"
        model.write_text("not a model")
    out = tmp_path / "out.zarr"
    assert main([str(path), "-o", str(out), "--model", str(model), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_frames_are_read_one_by_one(tmp_path, compression):
    from napari_sbd.io.readers import TiffFrames

    stack = np.random.default_rng(2).poisson(0.45, (5, 40, 24)).astype(np.uint16)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, compression=compression)
    frames = TiffFrames(path)
    assert frames.shape == stack.shape and frames.dtype == stack.dtype
    for i in (0, 3, 4):
        np.testing.assert_array_equal(frames[i], stack[i])


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_4d_file_is_denoised_one_movie_at_a_time(tmp_path, model_path, capsys, compression):
    """(series, T, H, W): --block picks the movie; without it, one clear message."""
    series = np.random.default_rng(6).poisson(0.45, (3, 4, 40, 48)).astype(np.uint16)
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, series, compression=compression, metadata={"axes": "ZTYX"})
    base = [str(path), "--model", str(model_path), "--quiet"]
    assert main([*base, "-o", str(tmp_path / "a.zarr")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds 3 movies of 4 frames" in err and "--block I, I from 0 to 2" in err
    assert not (tmp_path / "a.zarr").exists()
    assert main([*base, "-o", str(tmp_path / "a.zarr"), "--block", "3"]) == 2
    out = tmp_path / "b.zarr"
    assert main([*base, "-o", str(out), "--block", "2"]) == 0
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["denoised"][:],
                                  load_model(model_path, device="cpu").denoise(series[2]))
    assert g.attrs["napari_sbd"]["job"]["block"] == 2
    # another movie of the series is another job; --block on a plain stack is refused
    assert main([*base, "-o", str(out), "--block", "1"]) == 2
    assert "--block 2, now 1" in " ".join(capsys.readouterr().err.split())
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, series[0])
    assert main([str(stack), "--model", str(model_path), "--quiet", "-o", str(tmp_path / "c.zarr"),
                 "--block", "0"]) == 2
    assert "--block picks a movie of a 4-D file" in capsys.readouterr().err


def test_processes_starting_together_share_one_store(movie, model_path, tmp_path):
    path, stack = movie
    out = tmp_path / "race.zarr"
    base = [sys.executable, "-m", "napari_sbd.denoise_cli", str(path), "-o", str(out), "--model",
            str(model_path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*base, "--frames", r], env=env, stderr=subprocess.PIPE)
             for r in ("0:3", "3:6")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-1000:]
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["napari_sbd"]["complete"] is True
    assert not list(tmp_path.glob(".race.zarr.creating-*"))
    np.testing.assert_allclose(g["denoised"][:], load_model(model_path).denoise(stack), atol=1e-5)


@pytest.mark.parametrize(("extra", "message"), [
    (["--tile", "0"], "need >= 64"), (["--tile", "-5"], "need >= 64"),
    (["--vacuum-level", "-1"], "need > 0"), (["--tile", "abc"], "not an integer"),
    (["--spacing", "0"], "need > 0"), (["--column-threshold", "1.5"], "and < 1"),
    (["--memory", "-1"], "need >= 0"),
])
def test_out_of_range_options_are_refused(movie, model_path, tmp_path, capsys, extra, message):
    path, _ = movie
    with pytest.raises(SystemExit) as exc:
        main([str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model_path), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_disk_full_is_one_line_and_the_run_resumes(movie, model_path, tmp_path, capsys,
                                                   monkeypatch):
    import errno

    import napari_sbd.core.batch as batch

    path, stack = movie
    out = tmp_path / "full.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet"]
    real_touch = type(out).touch
    calls = {"n": 0}

    def touch_until_full(self, *a, **k):  # the 3rd frame's marker finds the disk full
        if self.parent.name == "done":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_touch(self, *a, **k)

    monkeypatch.setattr(batch.Path, "touch", touch_until_full)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free some space" in err
    assert "run the same command again" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(args) == 0
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["denoised"][:], load_model(model_path).denoise(stack))


def test_failed_store_creation_is_one_line_and_leaves_nothing(movie, model_path, tmp_path,
                                                             capsys, monkeypatch):
    import errno

    path, _ = movie
    real_mkdir = type(tmp_path).mkdir

    def read_only(self, *a, **k):  # as in a read-only folder (root here may write anywhere)
        if ".creating-" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    assert main([str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "permissions" in err and "Traceback" not in err
    assert not list(tmp_path.glob(".o.zarr.*")) and not (tmp_path / "o.zarr").exists()


def test_best_quality_is_the_ensemble_and_its_own_job(movie, model_path, tmp_path):
    path, stack = movie
    out = tmp_path / "best.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet", "--frames", "0:2"]
    assert main([*args, "--quality", "best"]) == 0
    g = zarr.open_group(str(out), mode="r")
    expected = load_model(model_path, device="cpu").denoise(stack[:2], ensemble=True)
    np.testing.assert_allclose(g["denoised"][:2], expected, rtol=1e-6, atol=1e-6)
    assert g.attrs["napari_sbd"]["job"]["ensemble"] is True
    assert main(args) == 2  # the fast job does not resume into a best-quality store


def test_detector_units_are_calibrated_into_counts(movie, model_path, tmp_path, capsys):
    _path, stack = movie
    raw = tmp_path / "detector.tif"
    tifffile.imwrite(raw, (stack.astype(np.float32) * 4 + 100).astype(np.uint16))  # gain 4, offset 100
    out = tmp_path / "cal.zarr"
    args = [str(raw), "-o", str(out), "--model", str(model_path), "--quiet", "--frames", "0:2"]
    assert main(args) == 2  # in detector units they are not counts: refused
    err = capsys.readouterr().err
    assert "do not look like counts" in err and "--electrons-per-count" in err  # names the fix
    # model auto (the CLI's default) denoises while it chooses: the same message, with the file
    assert main([*args[:3], "--quiet", "--frames", "0:2"]) == 2
    err = capsys.readouterr().err
    assert str(raw) in err and "do not look like counts" in err and "--electrons-per-count" in err
    assert not out.exists()  # nothing created for a refused job
    assert main([*args, "--offset", "100", "--electrons-per-count", "0.25"]) == 0
    g = zarr.open_group(str(out), mode="r")
    expected = load_model(model_path, device="cpu").denoise(stack[:2].astype(np.float32))
    np.testing.assert_allclose(g["denoised"][:2], expected, rtol=1e-5, atol=1e-6)
    assert g.attrs["napari_sbd"]["job"]["calibration"] == [100.0, 0.25]
    np.testing.assert_array_equal(tifffile.imread(raw)[0], (stack[0] * 4 + 100))  # untouched


def test_a_resumed_job_pins_threads_only_while_it_runs(movie, model_path, tmp_path):
    import torch

    path, _ = movie
    out = tmp_path / "t.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main([*args, "--frames", "0:2"]) == 0  # the store records 1 thread
        torch.set_num_threads(2)
        assert main(args) == 0  # resumed with 1 thread...
        assert torch.get_num_threads() == 2  # ...and the caller's setting is given back
    finally:
        torch.set_num_threads(before)


def test_data_far_from_the_models_dose_get_a_warning(tmp_path, model_path, capsys):
    # a uint16 stack with a small offset: mean about 12x the training dose (not refused: 20x is)
    stack = (np.random.default_rng(3).poisson(0.45, (2, 64, 64)) + 5).astype(np.uint16)
    path = tmp_path / "offset.tif"
    tifffile.imwrite(path, stack)
    assert main([str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model_path),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "dose 5.44-5.45 counts/pixel per frame" in err
    assert "warning: model: the data have 5.4" in err and "trained at 0.45" in err
    assert "frames have a dose outside" not in err  # all of them: said once, above


def test_detection_and_linking_options_are_part_of_the_job(movie, model_path, tmp_path, capsys):
    path, _ = movie
    out = tmp_path / "o.zarr"
    base = [str(path), "-o", str(out), "--model", str(model_path), "--quiet", "--columns",
            "--vacuum-level", "0.45"]
    assert main([*base, "--spacing", "2.4", "--memory", "0"]) == 0
    job = zarr.open_group(str(out), mode="r").attrs["napari_sbd"]["job"]
    assert job["analysis"] == {"memory": 0, "spacing_a": 2.4}  # only what was changed
    capsys.readouterr()
    # the same store with other columns options is another job: not resumed into, refused
    assert main([*base, "--spacing", "3.0", "--memory", "0"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*base, "--spacing", "2.4", "--memory", "0"]) == 0  # the same job: resumes


def test_a_movie_without_a_pixel_size_is_named_and_takes_a_given_one(movie, tiny_unet, tmp_path,
                                                                    capsys):
    """A plain TIFF records no pixel size: say what is assumed; --pixel-size sets it."""
    from napari_sbd.core.checkpoint import save_checkpoint

    path, stack = movie
    model_path = save_checkpoint(  # a model for 5-10 pm: finer frames are binned into it
        tmp_path / "env.pt", tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4},
        dose=0.45, pixel_size_pm=6.1, contrast="white",
        extra={"pixel_size_range_pm": [5.0, 10.0]})
    base = [str(path), "--model", str(model_path), "--quiet", "--columns", "--vacuum-level", "0.45"]
    assert main([*base, "-o", str(tmp_path / "a.zarr")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "movie.tif records no pixel size" in err and "column positions (nm)" in err
    assert "--pixel-size PM" in err
    out = tmp_path / "b.zarr"
    assert main([*base, "-o", str(out), "--pixel-size", "3.05"]) == 0
    assert "no pixel size" not in capsys.readouterr().err
    g = zarr.open_group(str(out), mode="r")
    meta = g.attrs["napari_sbd"]
    assert meta["pixel_size_pm"] == 3.05 and meta["job"]["pixel_size_pm"] == 3.05
    # half the model's 6.1 pm: frames are binned 2x2 into its range, as the API does
    den = load_model(model_path, device="cpu")
    np.testing.assert_array_equal(g["denoised"][:], den.denoise(stack, pixel_size_pm=3.05))
    assert not np.array_equal(g["denoised"][:], den.denoise(stack))
    with open(out / "columns.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for r in rows:
        assert float(r["y_nm"]) == pytest.approx(float(r["row_px"]) * 0.00305, abs=1e-4)
    # another pixel size is another job: the store is not resumed into, and what differs is said
    assert main([*base, "-o", str(out), "--pixel-size", "6.1", "--quality", "best"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already exists" in err and "--pixel-size 3.05, now 6.1" in err
    assert "--quality fast, now best" in err and "the same options resume it" in err


def test_each_frames_dose_is_kept_and_frames_outside_the_model_are_named(tmp_path, model_path,
                                                                         capsys):
    """A movie whose dose drifts: every frame's dose in the store, the outliers in a warning."""
    clean, _ = clean_frame()
    clean = clean[:96, 200:296]
    rng = np.random.default_rng(3)
    # /3 and /5: outside the tiny model's 2x; x3 is split into parts at its dose (not named)
    scale = np.array([1.0, 3.0, 1.0, 0.3, 0.3, 0.2])
    stack = rng.poisson(clean[None] * scale[:, None, None]).astype(np.uint16)
    path = tmp_path / "drift.tif"
    tifffile.imwrite(path, stack)
    out = tmp_path / "drift.zarr"
    assert main([str(path), "-o", str(out), "--model", str(model_path), "--quiet"]) == 0
    err = capsys.readouterr().err
    doses = zarr.open_group(str(out), mode="r")["dose"][:]
    np.testing.assert_allclose(doses, stack.reshape(6, -1).mean(axis=1), rtol=1e-9)
    assert "3 of 6 frames have a dose outside" in err and "frames 3, 4, 5;" in err
    assert f"dose {doses.min():.3g}-{doses.max():.3g} counts/pixel per frame" in err


@pytest.mark.parametrize("scale", [0.4, 6.0])
def test_auto_model_follows_the_movies_dose(tmp_path, capsys, scale):
    """0.4x and 6x the default's dose: outside its window, the model the counts choose.

    At 0.4x an envelope model; at 6x a blend of the default and the high-dose model may win.
    """
    from napari_sbd.core.inference import BLENDS, choose_bundled_model, estimate_dose
    from napari_sbd.core.selection import auto_read

    clean, _ = clean_frame()
    stack = np.random.default_rng(5).poisson(scale * clean[None, :64, 200:264] * np.ones((2, 1, 1)))
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, stack.astype(np.uint16))
    out = tmp_path / "auto.zarr"
    assert main([str(path), "-o", str(out), "--quiet"]) == 0
    counts = stack.astype(np.float32)
    dose = estimate_dose(counts)
    expected, why = choose_bundled_model(dose, None, *auto_read(counts, None, dose, device="cpu"))
    assert expected in ("envelope", "high-dose", *(BLENDS if scale > 1 else ())) and "held out" in why
    err = " ".join(capsys.readouterr().err.split())
    model = zarr.open_group(str(out), mode="r").attrs["napari_sbd"]["model"]
    if expected in BLENDS:  # recorded with its members' files
        assert f"auto chose the blend '{expected}' of bundled models" in err
        assert [Path(m["path"]).name for m in model["members"]] == ["default.pt", "high-dose.pt"]
    else:
        assert f"auto chose the bundled '{expected}' model" in err
        assert Path(model["path"]).name == f"{expected}.pt"


def test_auto_model_follows_the_movies_contrast(tmp_path, capsys):
    """Dark columns at the default's dose and pixel size: the black-contrast model."""
    from napari_sbd.core.phantom import gaussian_columns

    centres = np.mgrid[20:256:38, 20:256:38].reshape(2, -1).T.astype(float)
    clean = gaussian_columns((256, 256), centres, 6.0, -0.25, 0.5)  # mean about 0.45
    stack = np.random.default_rng(6).poisson(np.clip(clean, 0, None), size=(2, 256, 256))
    path = tmp_path / "dark.tif"
    tifffile.imwrite(path, stack.astype(np.uint16))  # pixel size unknown: the default's own
    out = tmp_path / "auto.zarr"
    assert main([str(path), "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "auto chose the bundled 'black' model" in err and "black contrast" in err
    model = zarr.open_group(str(out), mode="r").attrs["napari_sbd"]["model"]
    assert Path(model["path"]).name == "black.pt"


def test_the_commands_tile_is_the_librarys():
    from napari_sbd.core.inference import DEFAULT_TILE
    from napari_sbd.denoise_cli import build_parser

    assert build_parser().get_default("tile") == DEFAULT_TILE


def test_no_memory_for_any_tile_is_one_line_and_the_run_resumes(movie, model_path, tmp_path,
                                                                capsys, monkeypatch):
    from napari_sbd.core.inference import Denoiser

    path, stack = movie
    out = tmp_path / "o.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet"]
    real = Denoiser._run
    monkeypatch.setattr(Denoiser, "_run", lambda self, x, level=None: (_ for _ in ()).throw(
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "not enough CPU memory" in err and "run the same command again" in err
    assert "Traceback" not in err
    monkeypatch.setattr(Denoiser, "_run", real)
    assert main(args) == 0  # the store it began is resumed, not refused
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["denoised"][:],
                                  load_model(model_path, device="cpu").denoise(stack))


def test_a_damaged_frame_stops_the_job_or_is_skipped_when_asked(movie, model_path, tmp_path,
                                                                 capsys):
    """A frame of NaN in a long movie: the job stops there, or leaves it empty and goes on."""
    _, stack = movie
    data = stack.astype(np.float32)
    data[3, 10:20, 10:20] = np.nan  # a damaged frame
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, data)
    out = tmp_path / "damaged.zarr"
    args = [str(path), "-o", str(out), "--model", str(model_path), "--quiet", "--columns"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "frame 3" in err and "--skip-bad-frames" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / ".sbd" / "done").iterdir()) == [f"{i:06d}" for i in range(3)]
    assert main([*args, "--skip-bad-frames"]) == 0
    captured = capsys.readouterr()
    assert "1 frame could not be denoised and is left NaN" in captured.err
    assert "2 frames denoised now, 3 already done, 1 left empty (bad); store complete" in captured.out
    g = zarr.open_group(str(out), mode="r")
    den = g["denoised"][:]
    assert np.isnan(den[3]).all() and np.isnan(g["dose"][3])
    good = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(den[good], load_model(model_path, device="cpu").denoise(data[good]))
    assert g.attrs["napari_sbd"]["bad_frames"] == [3] and g.attrs["napari_sbd"]["complete"]
    with open(out / "columns.csv") as fh:
        assert all(r["frame"] != "3" for r in csv.DictReader(fh))
    # the skipped frame is not tried again: the same command finds nothing left to do
    assert main(args) == 0
    assert "0 frames denoised now, 6 already done" in capsys.readouterr().out


def test_a_blend_job_is_identified_by_its_members_files_and_weights(tmp_path, tiny_model_file):
    from napari_sbd.core.batch import _identity
    from napari_sbd.core.inference import Blend

    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.zeros((2, 32, 32), np.uint16))
    a = load_model(tiny_model_file, device="cpu")
    other = tmp_path / "other.pt"
    other.write_bytes(Path(tiny_model_file).read_bytes())
    b = load_model(other, device="cpu")

    def ident(weights):
        blend = Blend([(a, weights[0]), (b, weights[1])], "test")
        return _identity(movie, (2, 32, 32), blend, False, False, None)["model_sha256"]

    assert ident((0.5, 0.5)) is not None and ident((0.5, 0.5)) == ident((0.5, 0.5))
    before = ident((0.5, 0.5))
    assert ident((0.3, 0.7)) != before  # other weights: another job
    other.write_bytes(Path(tiny_model_file).read_bytes() + b"\0")  # a member's file changed
    assert ident((0.5, 0.5)) != before
