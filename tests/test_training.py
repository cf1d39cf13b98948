"""napari-sbd-train: data checks, augmentation, a tiny run, resume, torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

from napari_sbd.core.checkpoint import load_checkpoint
from napari_sbd.training.augment import Augmentation, max_patch_size, random_patch
from napari_sbd.training.cli import main
from napari_sbd.training.data import TrainingDataError, load_images, split_by_structure
from napari_sbd.training.loop import Trainer, TrainingCallback

TINY = ["--scales", "2", "--base", "4", "--patch", "48", "--batch", "2", "--steps-per-epoch",
        "3", "--val-crop", "64", "--quiet"]


def test_filters_and_split_by_structure(dataset):
    white = load_images(dataset, ["contrast=white"])
    assert len(white) == 4 and all(im.record["contrast"] == "white" for im in white)
    assert len(load_images(dataset, ["defocus_nm=6.5:8"])) == 4
    train, val = split_by_structure(load_images(dataset), 0.25, seed=0)
    assert {im.structure for im in train}.isdisjoint({im.structure for im in val})
    assert len(val) == 2 and len(train) == 6  # one structure, both its images


def test_clean_images_are_mapped_read_only_and_compressed_ones_read(dataset, tmp_path):
    before = {p.name: p.read_bytes() for p in dataset.glob("*.tif")}
    images = load_images(dataset)
    # the simulator's uncompressed float32 files are shared with the OS page cache, not copied
    assert all(isinstance(im.image, np.memmap) and not im.image.flags.writeable for im in images)
    rng = np.random.default_rng(0)
    aug = Augmentation(45.0, (0.9, 1.1))
    patch = random_patch(images[0].image, 48, rng, aug)
    assert patch.shape == (48, 48) and np.isfinite(patch).all()
    # a compressed file (or another dtype) cannot be mapped: read into memory, same values
    other = tmp_path / "packed"
    other.mkdir()
    ref = np.asarray(images[0].image)
    tifffile.imwrite(other / "a.tif", ref, compression="zlib")
    tifffile.imwrite(other / "b.tif", ref.astype(np.float64))
    packed = load_images(other)
    assert [type(im.image) for im in packed] == [np.ndarray, np.ndarray]
    assert all(im.image.dtype == np.float32 and np.array_equal(im.image, ref) for im in packed)
    assert {p.name: p.read_bytes() for p in dataset.glob("*.tif")} == before  # never written


def test_given_structures_are_held_out_and_recorded(dataset, tmp_path, capsys):
    images = load_images(dataset)
    train, val = split_by_structure(images, 0.25, seed=0, held_out={"S1", "S3"})
    assert {im.structure for im in val} == {"S1", "S3"}
    assert {im.structure for im in train} == {"S0", "S2"}
    with pytest.raises(TrainingDataError, match="S9"):
        split_by_structure(images, 0.25, held_out={"S1", "S9"})
    with pytest.raises(TrainingDataError, match="every structure"):
        split_by_structure(images, 0.25, held_out={"S0", "S1", "S2", "S3"})
    # from the command line, as a list or a file, and recorded in the checkpoint's card
    (tmp_path / "val.txt").write_text("S2\nS0\n")
    assert main([str(dataset), "--out", str(tmp_path / "r"), "--val-structures",
                 f"@{tmp_path / 'val.txt'}", *TINY, "--epochs", "1"]) == 0
    _net, meta = load_checkpoint(tmp_path / "r" / "best.pt")
    assert meta["val_structures"] == ["S0", "S2"]
    assert main([str(dataset), "--out", str(tmp_path / "q"), "--val-structures", "S1,S7",
                 *TINY, "--epochs", "1"]) == 2
    assert "S7" in capsys.readouterr().err and not (tmp_path / "q" / "state.pt").exists()


def test_a_run_grown_from_a_checkpoint_keeps_its_parents_split(dataset, tmp_path):
    parent = tmp_path / "parent"
    base = [*TINY, "--epochs", "1", "--norm", "none"]
    assert main([str(dataset), "--out", str(parent), "--where", "structure_id=S0,S1,S2",
                 "--val-structures", "S1", *base]) == 0
    _net, meta = load_checkpoint(parent / "best.pt")
    assert meta["val_structures"] == ["S1"] and meta["train_structures"] == ["S0", "S2"]
    # on the grown data (S3 is new) the parent's held-out S1 stays held out, S0 and S2
    # stay in training: the child never validates on what its start was fitted to
    child = tmp_path / "child"
    assert main([str(dataset), "--out", str(child), "--init-from", str(parent / "best.pt"),
                 *base]) == 0
    _net, meta = load_checkpoint(child / "best.pt")
    assert meta["val_structures"] == ["S1"] and meta["train_structures"] == ["S0", "S2", "S3"]
    # the resolved split is part of the run's record, so a resume keeps it
    assert json.loads((child / "config.json").read_text())["val_structures"] == ["S1"]
    assert main([str(dataset), "--out", str(child), "--resume", "--epochs", "2", "--quiet"]) == 0


def test_augmented_patches_stay_inside_and_vary():
    img = np.arange(200 * 220, dtype=np.float32).reshape(200, 220)
    rng = np.random.default_rng(0)
    aug = Augmentation()
    size = max_patch_size(img.shape, aug)
    assert 130 <= size <= 140  # 198 / (sqrt 2 / 0.955)
    patches = [random_patch(img, size, rng, aug) for _ in range(20)]
    for p in patches:
        assert p.shape == (size, size) and p.min() >= img.min() and p.max() <= img.max()
    assert len({float(p[0, 0]) for p in patches}) == 20
    # no rotation, scale 1, no flips: a (sub-pixel) translated crop of the ramp image
    plain = random_patch(img, 64, rng, Augmentation(0.0, (1.0, 1.0), flips=False))
    ii, jj = np.mgrid[:64, :64]
    np.testing.assert_allclose(plain - plain[0, 0], ii * 220 + jj, atol=1e-2)


def test_tiny_run_logs_checkpoints_and_resumes(dataset, tmp_path):
    out = tmp_path / "run"
    args = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY]
    assert main([*args, "--epochs", "2"]) == 0
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["val_psnr"])) for r in rows)
    _net, meta = load_checkpoint(out / "best.pt")
    assert meta["dose"] == 0.45 and meta["pixel_size_pm"] == 6.1 and meta["contrast"] == "mixed"
    assert meta["validation_psnr"] == pytest.approx(max(float(r["val_psnr"]) for r in rows), abs=1e-3)
    # a second run in the same folder must not overwrite it silently
    assert main([*args, "--epochs", "3"]) == 2
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # CPU seconds add up across the resume: the equal-budget axis of training_curves.py --x cpu
    cpu = [float(r["cpu_seconds"]) for r in rows]
    assert 0 < cpu[0] <= cpu[1] <= cpu[2]
    assert torch.load(out / "state.pt", weights_only=True)["cpu_seconds"] == pytest.approx(cpu[2], abs=1)


def test_out_of_memory_is_one_line_that_names_the_options(dataset, tmp_path, capsys, monkeypatch):
    import napari_sbd.training.loop as loop

    def no_room(cfg):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 3.81 GiB total)")

    monkeypatch.setattr(loop, "train", no_room)
    args = [str(dataset), "--out", str(tmp_path / "run"), *TINY]
    assert main(args) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "out of GPU memory with batches of" in err and "--batch" in err and "--resume" in err
    assert "Traceback" not in err
    monkeypatch.setattr(loop, "train", lambda cfg: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # anything else is not hidden
        main(args)


def test_resume_reproduces_an_uninterrupted_run(dataset, tmp_path):
    base = [str(dataset), "--val-fraction", "0.25", *TINY]
    assert main([*base, "--out", str(tmp_path / "a"), "--epochs", "2"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--epochs", "2", "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_warm_restart_sets_the_rate_and_keeps_the_best(dataset, tmp_path):
    args = [str(dataset), "--out", str(tmp_path / "r"), "--val-fraction", "0.25", *TINY, "--lr", "1e-3"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--restart-lr", "5e-4"]) == 2  # only with --resume
    assert main([*args, "--epochs", "2", "--resume", "--restart-lr", "2e-4"]) == 0
    with open(tmp_path / "r" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[1]["lr"]) == pytest.approx(2e-4)
    assert float(rows[1]["best_val_psnr"]) >= float(rows[0]["best_val_psnr"])


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("empty", [], "no TIFF images"),
        ("missing", [], "does not exist"),
        ("garbage", [], "cannot read training image"),
        ("negative", [], "not a clean count image"),
        ("ok", ["--patch", "4096"], "larger than the images allow"),
        ("ok", ["--dose", "0"], "0 is out of range: need >= 0.01"),
        ("ok", ["--dose", "1e-9"], "out of range"),
        ("ok", ["--val-fraction", "1.5"], "need > 0 and < 1"),
        ("ok", ["--dose-range", "0.001:5"], "almost all zeros"),
        ("ok", ["--where", "colour=red"], "no such column"),
        ("ok", ["--where", "contrast=purple"], "passes the filters"),
    ],
)
def test_bad_input_is_one_clear_error_before_training(dataset, tmp_path, capsys, setup,
                                                      extra, message):
    folder = {"ok": dataset, "missing": tmp_path / "nowhere"}.get(setup, tmp_path / setup)
    if setup in ("empty", "garbage", "negative"):
        folder.mkdir()
    if setup == "garbage":
        (folder / "a.tif").write_text("not a tiff")
    if setup == "negative":
        tifffile.imwrite(folder / "a.tif", -np.ones((64, 64), np.float32))
    out = tmp_path / "out"
    try:
        code = main([str(folder), "--out", str(out), *TINY, *extra])
    except SystemExit as exc:  # argparse's own refusal of an option's value
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "state.pt").exists()


def test_help_documents_units():
    proc = subprocess.run([sys.executable, "-m", "napari_sbd.training.cli", "--help"],
                          capture_output=True, text=True, check=True)
    for word in ("counts/pixel", "pixels", "degrees", "--resume", "torchrun"):
        assert word in proc.stdout


@pytest.mark.slow
def test_torchrun_two_cpu_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29533", "-m", "napari_sbd.training.cli", str(dataset), "--out",
         str(out), "--val-fraction", "0.25", "--epochs", "2", "--device", "cpu", *TINY],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    # two processes, 2 patches each per step, 3 steps per epoch
    assert [int(r["patches_seen"]) for r in rows] == [12, 24]
    load_checkpoint(out / "last.pt")


def test_two_runs_cannot_write_one_folder(dataset, tmp_path, capsys):
    from napari_sbd.training.loop import _lock_output

    out = tmp_path / "busy"
    held = _lock_output(out)  # as if another napari-sbd-train were running there
    try:
        assert main([str(dataset), "--out", str(out), *TINY, "--epochs", "1"]) == 2
        assert "already writing" in capsys.readouterr().err
    finally:
        held.close()
    assert main([str(dataset), "--out", str(out), *TINY, "--epochs", "1",
                 "--val-fraction", "0.25"]) == 0


def test_envelope_draws_are_log_uniform():
    from napari_sbd.training.loop import TrainConfig, _draw_dose

    cfg = TrainConfig(data="x", out="y", dose=0.45, dose_range=(0.1, 5.0))
    rng = np.random.default_rng(3)
    doses = np.array([_draw_dose(cfg, rng) for _ in range(4000)])
    assert doses.min() >= 0.1 and doses.max() <= 5.0
    # log-uniform: each of four equal log-intervals holds a quarter of the draws
    counts, _ = np.histogram(np.log(doses), bins=4, range=(np.log(0.1), np.log(5.0)))
    np.testing.assert_allclose(counts / len(doses), 0.25, atol=0.03)
    assert _draw_dose(TrainConfig(data="x", out="y", dose=0.45), rng) == 0.45
    aug = Augmentation(45.0, (6.1 / 10, 6.1 / 5), log_scale=True)
    scales = np.array([aug.draw_scale(rng) for _ in range(4000)])
    counts, _ = np.histogram(np.log(scales), bins=4, range=np.log(aug.scale_range))
    np.testing.assert_allclose(counts / len(scales), 0.25, atol=0.03)


def test_patches_at_a_coarser_pixel_size_show_more_of_the_image():
    from napari_sbd.training.augment import centre_resample

    img = np.zeros((300, 300), np.float32)
    img[140:160, 140:160] = 1.0  # a 20-pixel square
    coarse = centre_resample(img, 64, 0.5)  # pixels twice as large
    fine = centre_resample(img, 64, 2.0)
    assert coarse.shape == fine.shape == (64, 64)
    assert (coarse > 0.5).sum() == pytest.approx(100, abs=25)  # 10x10 px
    assert (fine > 0.5).sum() == pytest.approx(1600, abs=200)  # 40x40 px
    assert centre_resample(img, 512, 0.5, multiple=8).shape == (144, 144)  # what fits


def test_envelope_run_records_its_ranges_and_scores_each_band(dataset, tmp_path):
    out = tmp_path / "env"
    args = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY,
            "--dose-range", "0.2:2", "--pixel-size-range", "5:8", "--max-angle", "10",
            "--epochs", "1"]
    assert main(args) == 0
    _, meta = load_checkpoint(out / "best.pt")
    assert meta["dose"] == 0.45 and meta["dose_range"] == [0.2, 2.0]
    assert meta["pixel_size_pm"] == 6.1 and meta["pixel_size_range_pm"] == [5.0, 8.0]
    assert set(meta["validation_bands"]) == {"nominal", "dose_0.2", "dose_2", "px_5pm", "px_8pm"}
    assert meta["validation_psnr"] == pytest.approx(np.mean(list(meta["validation_bands"].values())))
    with open(out / "log.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["val_px_8pm"]) == pytest.approx(meta["validation_bands"]["px_8pm"], abs=1e-3)
    # the model card survives loading as a Denoiser
    from napari_sbd.core.inference import load_model

    assert load_model(out / "best.pt", device="cpu").metadata["dose_range"] == [0.2, 2.0]


def test_resume_refuses_changed_options_and_damaged_state(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY]
    assert main([*args, "--epochs", "1"]) == 0
    log_before = (out / "log.csv").read_text()
    assert main([*args, "--epochs", "2", "--resume", "--dose", "5"]) == 2
    err = capsys.readouterr().err
    assert "dose: run has 0.45, now 5.0" in err and "Traceback" not in err
    assert main([*args[:-1], "--base", "8", "--quiet", "--epochs", "2", "--resume"]) == 2
    assert "base: run has 4, now 8" in capsys.readouterr().err
    assert (out / "log.csv").read_text() == log_before  # nothing was touched
    # options that may change on resume are accepted
    assert main([*args, "--epochs", "2", "--resume", "--max-minutes", "5"]) == 0
    state = out / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert main([*args, "--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "new --out" in err and "Traceback" not in err


def test_init_from_starts_from_a_checkpoints_weights(dataset, tmp_path, capsys):
    first = tmp_path / "a"
    # no BatchNorm: its running statistics move in training even when the weights do not
    base = [str(dataset), "--val-fraction", "0.25", *TINY, "--epochs", "1", "--norm", "none"]
    assert main([*base, "--out", str(first)]) == 0
    start = torch.load(first / "last.pt", weights_only=True)["state_dict"]
    # zero steps of training would keep the weights: use the lowest learning rate instead
    assert main([*base, "--out", str(tmp_path / "b"), "--init-from", str(first / "last.pt"),
                 "--lr", "1e-12"]) == 0
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    for k in start:
        torch.testing.assert_close(start[k], after[k], rtol=1e-5, atol=1e-7)
    assert main([*base, "--out", str(tmp_path / "c"), "--init-from", str(first / "last.pt"),
                 "--scales", "3", "--quiet"]) == 2
    assert "pass the same --arch" in capsys.readouterr().err
    # the refused start left no record of a run that never began: the right options go
    # into the same folder as a new run, not a resume of the wrong one
    assert not (tmp_path / "c" / "config.json").exists()
    assert main([*base, "--out", str(tmp_path / "c"), "--init-from", str(first / "last.pt")]) == 0


def test_a_network_grows_more_channels_from_a_checkpoint_keeping_its_function(dataset, tmp_path,
                                                                              capsys):
    from napari_sbd.core.models import BiasFreeUNet, widen_unet

    first = tmp_path / "a"
    base = [str(dataset), "--val-fraction", "0.25", *TINY, "--epochs", "1", "--norm", "none"]
    assert main([*base, "--out", str(first)]) == 0
    small, _ = load_checkpoint(first / "last.pt")
    # widened by hand: the same function, exactly (float64), with more parameters
    wide = BiasFreeUNet(**{**small_params(small), "base": 7}).double()
    widen_unet(small.double(), wide)
    y = torch.rand(2, 1, 40, 44, dtype=torch.float64) * 3
    torch.testing.assert_close(wide(y), small(y), rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in small.parameters())
    with pytest.raises(ValueError, match="larger base"):
        widen_unet(wide, small)
    # through the trainer: --init-from with a larger --base starts at the parent's function
    # (its first epoch at the lowest learning rate reads the parent's validation PSNR)
    grown = tmp_path / "b"
    assert main([*base, "--out", str(grown), "--init-from", str(first / "last.pt"),
                 "--base", "6", "--lr", "1e-12"]) == 0
    net, meta = load_checkpoint(grown / "last.pt")
    assert meta["params"]["base"] == 6 and net.base == 6
    parent = list(csv.DictReader((first / "log.csv").read_text().splitlines()))[-1]
    child = next(csv.DictReader((grown / "log.csv").read_text().splitlines()))
    assert float(child["val_psnr"]) == pytest.approx(float(parent["val_psnr"]), abs=1e-3)
    # fewer channels, or BatchNorm (its statistics would change with the new channels):
    # refused, the fix named
    assert main([*base, "--out", str(tmp_path / "c"), "--init-from", str(grown / "last.pt"),
                 "--base", "4", "--quiet"]) == 2
    assert "pass the same --arch" in capsys.readouterr().err
    normed = [*base[:-2], "--norm", "batch"]
    assert main([*normed, "--out", str(tmp_path / "d")]) == 0
    assert main([*normed, "--out", str(tmp_path / "e"), "--init-from",
                 str(tmp_path / "d" / "last.pt"), "--base", "6", "--quiet"]) == 2
    assert "pass the same --arch" in capsys.readouterr().err


def test_a_checkpoint_scores_on_a_runs_validation_crops_as_its_log_does(dataset, tmp_path):
    from napari_sbd.training.data import TrainingDataError
    from napari_sbd.training.loop import run_config, score_on_run

    out = tmp_path / "a"
    assert main([str(dataset), "--val-fraction", "0.25", *TINY, "--epochs", "1", "--out",
                 str(out)]) == 0
    cfg = run_config(out)
    assert cfg.base == 4 and cfg.val_fraction == 0.25
    net, _ = load_checkpoint(out / "last.pt")
    scores = score_on_run(net, cfg, training=2)
    logged = next(csv.DictReader((out / "log.csv").read_text().splitlines()))
    assert scores["held-out"] == pytest.approx(float(logged["val_psnr"]), abs=1e-3)
    assert np.isfinite(scores["training"]) and scores["training"] != scores["held-out"]
    with pytest.raises(TrainingDataError, match=r"is .* a training run"):
        run_config(tmp_path)


def small_params(net) -> dict:
    """The constructor arguments of a loaded BiasFreeUNet."""
    return {k: getattr(net, k) for k in ("scales", "base", "unshuffle", "centre_sigma",
                                         "activation", "norm")}


def test_a_new_run_never_overwrites_files_it_did_not_continue(dataset, tmp_path, capsys):
    base = [str(dataset), "--val-fraction", "0.25", *TINY, "--epochs", "1"]
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "log.csv").write_text("a user's own table\n")
    (out / "best.pt").write_bytes(b"someone's model")
    for extra in ([], ["--resume"]):  # no state.pt: nothing here can be continued
        assert main([*base, "--out", str(out), *extra]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "log.csv" in err and "best.pt" in err and "nothing was written" in err
    assert (out / "log.csv").read_text() == "a user's own table\n"
    assert (out / "best.pt").read_bytes() == b"someone's model"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "log.csv"]
    # a start killed in its first epoch leaves only config.json: --resume starts it afresh
    # with the options recorded there; a new run is still refused
    killed = tmp_path / "killed"
    killed.mkdir()
    assert main([*base, "--out", str(tmp_path / "ref")]) == 0
    (killed / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    assert main([*base, "--out", str(killed)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main([str(dataset), "--out", str(killed), "--resume", "--quiet"]) == 0
    assert (killed / "state.pt").exists()


def test_level_gains_grow_from_a_checkpoint_without_them(dataset, tmp_path, capsys):
    import json

    first = tmp_path / "a"
    base = [str(dataset), "--val-fraction", "0.25", *TINY, "--epochs", "1", "--norm", "none",
            "--dose-range", "0.2:2"]
    assert main([*base, "--out", str(first)]) == 0
    start = torch.load(first / "last.pt", weights_only=True)["state_dict"]
    grown = tmp_path / "b"
    assert main([*base, "--out", str(grown), "--init-from", str(first / "last.pt"),
                 "--level-gain"]) == 0
    net, _ = load_checkpoint(grown / "last.pt")
    assert net.conditioned and set(start) < set(net.state_dict())
    from napari_sbd.core.inference import load_model

    assert "count level" in load_model(grown / "last.pt", device="cpu").describe()
    # the other way round would lose what the gains learned: refused, with the fix named
    assert main([*base, "--out", str(tmp_path / "c"), "--init-from", str(grown / "last.pt"),
                 "--quiet"]) == 2
    assert "pass the same --arch" in capsys.readouterr().err
    # a run recorded before the option existed resumes (its record reads as the default) ...
    record = json.loads((first / "config.json").read_text())
    del record["level_gain"]
    (first / "config.json").write_text(json.dumps(record))
    assert main([*base[:-2], "--out", str(first), "--resume", "--epochs", "2"]) == 0
    # ... but cannot change it on resume
    assert main([*base, "--out", str(first), "--resume", "--epochs", "3", "--level-gain"]) == 2
    assert "level_gain: run has False, now True" in capsys.readouterr().err


def test_out_that_is_a_file_is_one_clear_error(dataset, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    assert main([str(dataset), "--out", str(f), *TINY, "--val-fraction", "0.25"]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "mine"


@pytest.mark.slow
def test_gpu_campaign_script_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    pytest.importorskip("abtem")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "N_STRUCTURES": "2", "DEFOCI": "6", "SIM_DIR": str(tmp_path / "sim"),
           "TRAIN_MINUTES": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "2",
           "TRAIN_ARGS": "--scales 2 --base 4 --unshuffle 2 --patch 48 --batch 2 "
                         "--steps-per-epoch 2 --epochs 1 --val-images 1 --val-crop 64 "
                         "--val-fraction 0.5"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu_train.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "simulation" in proc.stdout and "training" in proc.stdout
    _, meta = load_checkpoint(tmp_path / "out" / "best.pt")
    assert meta["dose_range"] == [0.1, 5.0] and meta["pixel_size_range_pm"] == [4.8, 10.5]
    assert (tmp_path / "out" / "log.csv").exists() and (tmp_path / "out" / "config.json").exists()
    # continuing a carried run folder (as model-training/leader would be) with its own options
    env2 = {**env, "RESUME_FROM": str(tmp_path / "out" / "run"), "RESUME_ARGS": "--epochs 2"}
    del env2["TRAIN_ARGS"]
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu_train.sh"), str(tmp_path / "more")],
                          capture_output=True, text=True, env=env2, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "more" / "log.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    # a second run into a folder that holds one is refused before anything is written
    before = (tmp_path / "more" / "best.pt").read_bytes()
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu_train.sh"), str(tmp_path / "more")],
                          capture_output=True, text=True, env=env2, timeout=900)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (tmp_path / "more" / "best.pt").read_bytes() == before


def test_unet_options_with_a_fixed_comparison_network_are_refused(dataset, tmp_path, capsys):
    code = main([str(dataset), "--out", str(tmp_path / "d"), "--arch", "dncnn", "--base", "8",
                 "--patch", "48", "--quiet"])
    assert code == 2 and "--base set the bias-free UNet" in capsys.readouterr().err


def test_the_command_line_is_generated_from_the_config_declaration():
    from dataclasses import fields

    from napari_sbd.training.cli import build_parser
    from napari_sbd.training.config import TrainConfig, config_from_args

    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["data", "--out", "o"]))
    # one declaration: the parser's defaults are the dataclass's
    assert cfg == TrainConfig(data="data", out="o")
    text = parser.format_help()
    for f in fields(TrainConfig):
        if "group" in f.metadata and not f.metadata.get("positional"):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            assert flag in text, flag
    assert "(default 0.45" in text and "(default 256)" in text
    parsed = config_from_args(parser.parse_args(["d", "--out", "o", "--dose-range", "0.1:5",
                                                 "--pixel-size-range", "5:10", "--no-amp",
                                                 "--quiet", "--where", "a=b"]))
    assert parsed.dose_range == (0.1, 5.0) and parsed.pixel_size_range_pm == (5.0, 10.0)
    assert parsed.amp is False and parsed.progress is False and parsed.where == ["a=b"]


class _Recorder(TrainingCallback):
    """Keeps every report; fails or asks to stop at a given point."""

    def __init__(self, fail_at: tuple[int, int] | None = None, stop_after: int | None = None):
        self.reports, self.steps, self.epoch = [], 0, 0
        self.fail_at, self.stop_after = fail_at, stop_after

    def on_epoch_begin(self, trainer, epoch):
        self.epoch = epoch

    def on_step_end(self, trainer, step, loss):
        self.steps += 1
        assert np.isfinite(loss)
        if self.fail_at == (self.epoch, step):
            raise RuntimeError("injected failure")

    def on_epoch_end(self, trainer, report):
        self.reports.append(report)
        if report.epoch == self.stop_after:
            trainer.stop_requested = True


def _config(dataset, out, **kw):
    from napari_sbd.training.cli import build_parser
    from napari_sbd.training.config import config_from_args

    args = build_parser().parse_args([str(dataset), "--out", str(out), "--val-fraction", "0.25",
                                      *TINY, "--epochs", "3", "--quiet"])
    return replace(config_from_args(args), **kw)


def test_callbacks_see_every_step_and_epoch_and_can_stop(dataset, tmp_path):
    rec = _Recorder(stop_after=2)
    summary = Trainer(_config(dataset, tmp_path / "run"), [rec]).fit()
    assert summary["epochs"] == 2 and "callback" in summary["stopped"]
    assert rec.steps == 2 * 3  # TINY: 3 steps per epoch
    with open(tmp_path / "run" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r.log_row()["val_psnr"] for r in rec.reports] == [r["val_psnr"] for r in rows]
    assert rec.reports[-1].best_val_psnr == pytest.approx(summary["best_val_psnr"])


def test_a_failure_mid_epoch_releases_the_lock_and_the_run_resumes_exactly(dataset, tmp_path):
    from napari_sbd.training.loop import _lock_output

    Trainer(_config(dataset, tmp_path / "ref")).fit()
    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="injected"):
        Trainer(_config(dataset, out), [_Recorder(fail_at=(2, 2))]).fit()
    _lock_output(out).close()  # the failed run let go of the folder
    with open(out / "log.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1"]  # epoch 2 was lost, not half-kept
    Trainer(_config(dataset, out, resume=True)).fit()
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_only_where_the_hardware_has_it(dataset, tmp_path, monkeypatch, native):
    """bfloat16 autocast on CPUs with native bfloat16, float32 elsewhere or with --no-amp."""
    from napari_sbd.training import loop

    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: native)
    assert loop.mixed_precision_dtype(torch.device("cuda")) is torch.float16
    assert loop.mixed_precision_dtype(torch.device("cpu")) is (torch.bfloat16 if native else None)
    seen = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(loop.torch, "autocast", spy)
    for amp in (True, False):
        trainer = Trainer(_config(dataset, tmp_path / f"run-{amp}", amp=amp, epochs=1))
        seen.clear()
        summary = trainer.fit()
        mixed = amp and native
        assert seen == ([torch.bfloat16] * 3 if mixed else [])  # TINY: 3 steps
        assert trainer.use_amp is mixed and not trainer.scaler.is_enabled()
        layout = torch.channels_last if mixed else torch.contiguous_format
        w = max((p for p in trainer.model.parameters() if p.ndim == 4), key=lambda p: p.shape[1])
        assert w.is_contiguous(memory_format=layout) and w.dtype is torch.float32
        assert np.isfinite(summary["best_val_psnr"])
        load_checkpoint(tmp_path / f"run-{amp}" / "best.pt")  # its digest checks out


def test_a_cpu_run_resumes_where_loss_scaling_is_on(dataset, tmp_path, monkeypatch):
    """A run begun without a loss scaler (CPU) resumes with one (as on CUDA), and back."""
    from napari_sbd.training import loop

    out = tmp_path / "run"
    Trainer(_config(dataset, out, epochs=1)).fit()
    real = torch.amp.GradScaler

    def scaler_on(_device, enabled=True):  # what float16 on CUDA gets, on the CPU
        return real("cpu", enabled=True)

    monkeypatch.setattr(loop.torch.amp, "GradScaler", scaler_on)
    summary = Trainer(_config(dataset, out, epochs=2, resume=True)).fit()
    assert summary["epochs"] == 2
    monkeypatch.setattr(loop.torch.amp, "GradScaler", real)
    assert Trainer(_config(dataset, out, epochs=3, resume=True)).fit()["epochs"] == 3


def test_a_resume_needs_only_the_data_and_the_folder(dataset, tmp_path, capsys):
    """--resume takes the run's own options from its config.json; a different one is refused."""
    out = tmp_path / "run"
    first = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY,
             "--dose-range", "0.2:2", "--lr", "3e-4", "--seed", "5", "--where", "contrast=white"]
    assert main([*first, "--epochs", "1"]) == 0
    assert main([str(dataset), "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    with open(out / "log.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["1", "2"]
    _net, meta = load_checkpoint(out / "last.pt")
    assert meta["dose_range"] == [0.2, 2.0]  # the run's envelope, not the default single dose
    capsys.readouterr()
    assert main([str(dataset), "--out", str(out), "--resume", "--epochs", "3", "--patch", "64",
                 "--quiet"]) == 2
    assert "patch: run has 48, now 64" in capsys.readouterr().err
    # the run's whole command again (list options included) resumes as before
    assert main([*first, "--epochs", "3", "--resume"]) == 0


def test_a_plain_resume_keeps_the_runs_patience_and_early_stop(dataset, tmp_path, monkeypatch):
    import json

    import napari_sbd.training.loop as loop

    out = tmp_path / "run"
    args = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY, "--quiet"]
    assert main([*args, "--epochs", "1", "--early-stop", "40", "--lr-patience", "9"]) == 0
    seen = {}

    def capture(cfg, **_kw):  # the config the resumed run is built with
        seen["cfg"] = cfg
        return {"best_val_psnr": 0.0, "stopped": "epochs", "out": str(out), "epochs": 1}

    with monkeypatch.context() as m:
        m.setattr(loop, "train", capture)
        assert main([str(dataset), "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert (seen["cfg"].early_stop, seen["cfg"].lr_patience) == (40, 9)  # not the defaults 10, 3
    # given on a resume: used, and recorded for the next one; the schedule takes the patience
    assert main([str(dataset), "--out", str(out), "--resume", "--epochs", "2", "--quiet",
                 "--early-stop", "20", "--lr-patience", "4"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert (record["early_stop"], record["lr_patience"]) == (20, 4)
    st = torch.load(out / "state.pt", weights_only=True)
    assert st["scheduler"]["patience"] == 4


def test_weight_average_is_validated_saved_and_resumed(dataset, tmp_path):
    out = tmp_path / "run"
    args = [str(dataset), "--out", str(out), "--val-fraction", "0.25", *TINY]
    # a run begun without the average switches it on at a resume (it starts from the weights)
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "3", "--resume", "--ema", "0.5"]) == 0
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["val_psnr_raw"] == "" and all(np.isfinite(float(r["val_psnr_raw"]))
                                                 for r in rows[1:])
    st = torch.load(out / "state.pt", weights_only=True)
    avg = {k.removeprefix("module."): v for k, v in st["ema"].items() if k.startswith("module.")}
    assert int(st["ema"]["n_averaged"]) == 2 * 3  # every step of the two resumed epochs
    last = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    # last.pt holds the average, which is not the raw weights
    assert last.keys() == avg.keys()
    for k in last:
        torch.testing.assert_close(last[k], avg[k])
    assert any(not torch.equal(avg[k], st["model"][k]) for k in avg)
    # the logged validation is the average's; the raw weights' is beside it
    assert float(rows[-1]["val_psnr"]) != float(rows[-1]["val_psnr_raw"])
    # a resume continues the same average (not a fresh one from the weights), also one that
    # leaves --ema out (config.json now records it)
    assert json.loads((out / "config.json").read_text())["ema"] == 0.5
    assert main([str(dataset), "--out", str(out), "--resume", "--epochs", "4", "--quiet"]) == 0
    st2 = torch.load(out / "state.pt", weights_only=True)
    assert int(st2["ema"]["n_averaged"]) == 3 * 3


def test_weight_average_follows_its_decay():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    net = torch.nn.Linear(2, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
        ema.update_parameters(net)  # the first update takes the weights
        net.weight.fill_(2.0)
        ema.update_parameters(net)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 2.0))
