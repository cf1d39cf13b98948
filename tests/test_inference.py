"""core.inference: shapes, tiling, devices, stacks, progress, and bad input."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sbd.core.checkpoint import CheckpointError, save_checkpoint
from napari_sbd.core.inference import (
    EDGE_PAD,
    Denoiser,
    DenoisingCancelled,
    estimate_dose,
    load_model,
    resolve_device,
    tile_bounds,
)
from napari_sbd.core.inputs import InputError
from napari_sbd.core.models import BiasFreeUNet, DnCNN, SmallUNet

from .conftest import randomise_bn, randomise_gain


@pytest.fixture
def denoiser(tiny_unet):
    return Denoiser(tiny_unet, {"dose": 0.45, "pixel_size_pm": 6.1})


def _reference(net, frame):
    """Whole-frame forward of the unfolded network, mirror-padded by hand."""
    m, e = net.size_multiple, EDGE_PAD
    h, w = frame.shape
    padded = np.pad(frame, ((e, e + (-(h + 2 * e)) % m), (e, e + (-(w + 2 * e)) % m)), mode="reflect")
    x = torch.from_numpy(padded)[None, None]
    with torch.no_grad():
        return net(x)[0, 0, e : e + h, e : e + w].numpy()


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (100, 17 + 64)])
def test_any_frame_size_is_padded_and_cropped_back(denoiser, tiny_unet, rng, shape):
    # mirrored edges (even wider than a small frame), then up to the pooling grid
    frame = rng.poisson(0.45, shape).astype(np.float32)
    out = denoiser.denoise(frame)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(tiny_unet, frame), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "net",
    [BiasFreeUNet(3, 4), BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0), DnCNN(5, 4),
     SmallUNet(4), BiasFreeUNet(2, 4, unshuffle=2, centre_sigma=2.0, level_gain=True)],
    ids=["unet", "unet-unshuffle-centred", "dncnn", "small-unet", "unet-level-gain"],
)
def test_tiled_inference_equals_whole_frame(net, rng):
    torch.manual_seed(3)
    net = randomise_bn(net)
    if net.conditioned:  # every tile is given the whole frame's count level
        net = randomise_gain(net)
    den = Denoiser(net, {})
    frame = rng.poisson(0.45, (203, 261)).astype(np.float32)
    whole = den.denoise(frame, tile_size=None)
    tiled = den.denoise(frame, tile_size=32)
    assert den.margin() >= den.receptive_radius
    # the tiles really were used: the frame is larger than one tile plus margins
    assert 32 + 2 * den.margin() < 203 or 32 + 2 * den.margin() < 261
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * np.abs(whole).max())


def test_out_of_memory_halves_the_tiles_and_gives_the_same_result(denoiser, rng, monkeypatch):
    """A pass too large for the device's memory is run again in smaller tiles (exact tiling)."""
    frame = rng.poisson(0.45, (1100, 1100)).astype(np.float32)
    whole = denoiser.denoise(frame, tile_size=None)
    run, sides = denoiser._run, []

    def scarce(x, level=None):  # this device fits no pass wider than 700 pixels
        sides.append(int(x.shape[-1]))
        if x.shape[-1] > 700:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run(x, level)

    monkeypatch.setattr(denoiser, "_run", scarce)
    with pytest.warns(RuntimeWarning, match="out of CPU memory in tiles of 1164 pixels: "
                      "continuing in tiles of 582"):
        tiled = denoiser.denoise(frame, tile_size=None)
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * np.abs(whole).max())
    assert denoiser.tile_cap == 582 and max(sides[1:]) <= 700
    sides.clear()  # the next frame starts at the size that fitted: no failed pass, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoiser.denoise(frame, tile_size=None)
    assert max(sides) <= 700


def test_out_of_memory_even_in_small_tiles_is_one_clear_error(denoiser, rng, monkeypatch):
    def none_fits(x, level=None):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 8589934592 bytes")

    monkeypatch.setattr(denoiser, "_run", none_fits)
    frame = rng.poisson(0.45, (600, 600)).astype(np.float32)
    with pytest.raises(MemoryError, match="not enough CPU memory to denoise") as err, \
            pytest.warns(RuntimeWarning, match="continuing in tiles of"):
        denoiser.denoise(frame, tile_size=None)
    assert "tiles of 332 pixels" in str(err.value)
    monkeypatch.setattr(denoiser, "_run", lambda x, level=None: (_ for _ in ()).throw(RuntimeError("bad")))
    with pytest.raises(RuntimeError, match="bad"):  # other errors are not memory: raised as is
        denoiser.denoise(frame)


@pytest.mark.parametrize("n", [32, 96, 1088, 2112, 4160, 4192])
def test_tile_bounds_cover_the_axis_within_the_memory_bound(n):
    core, margin = 1024 if n > 100 else 32, 288 if n > 100 else 16
    bounds = tile_bounds(n, core, margin)
    # the kept parts tile the axis exactly, in order
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    for out0, out1, in0, in1 in bounds:
        assert in1 - in0 <= core + 2 * margin  # the window a tile reads
        # full context on every side that has any
        assert out0 - in0 >= min(margin, out0) and in1 - out1 >= min(margin, n - out1)
    # a 2048-pixel frame (2112 padded) runs in 2 tiles per axis, not 3
    if n == 2112:
        assert len(bounds) == 2


def test_folded_channels_last_matches_plain(tiny_unet, rng):
    frame = rng.poisson(0.45, (96, 80)).astype(np.float32)
    plain = Denoiser(tiny_unet, {}, fold=False, channels_last=False).denoise(frame)
    fast = Denoiser(tiny_unet, {}, fold=True, channels_last=True).denoise(frame)
    np.testing.assert_allclose(fast, plain, atol=1e-5 * np.abs(plain).max())


def test_stack_is_denoised_frame_by_frame(denoiser, rng):
    stack = rng.poisson(0.45, (3, 40, 48)).astype(np.uint16)
    out = denoiser.denoise(stack)
    assert out.shape == stack.shape and out.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(out[i], denoiser.denoise(stack[i]))


def test_memory_mapped_stack_and_iteration(denoiser, rng, tmp_path):
    stack = np.lib.format.open_memmap(tmp_path / "s.npy", "w+", np.float32, (4, 32, 32))
    stack[:] = rng.poisson(0.45, stack.shape)
    seen = [i for i, _ in denoiser.iter_denoise(stack, start=1, stop=3)]
    assert seen == [1, 2]


def test_progress_and_cancel(denoiser, rng):
    stack = rng.poisson(0.45, (5, 32, 32)).astype(np.float32)
    calls = []
    denoiser.denoise(stack, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
    with pytest.raises(DenoisingCancelled, match="after 2 of 5"):
        denoiser.denoise(stack, progress=lambda d, t: calls.append(d),
                         should_stop=lambda: len(calls) >= 7)


def test_caller_array_is_never_modified(denoiser, rng):
    for dtype in (np.float32, np.float64, np.uint16, np.int32):
        stack = rng.poisson(0.45, (2, 32, 32)).astype(dtype)
        before = stack.copy()
        denoiser.denoise(stack)
        np.testing.assert_array_equal(stack, before)


def test_integer_counts_are_converted(denoiser, rng):
    counts = rng.poisson(0.45, (32, 32))
    np.testing.assert_allclose(
        denoiser.denoise(counts.astype(np.uint8)), denoiser.denoise(counts.astype(np.float32))
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((64, 64, 4), np.uint8), "RGBA"),
        (np.zeros((2, 2, 64, 64), np.float32), "4-D"),
        (np.zeros(64, np.float32), "2-D frame or a 3-D stack"),
        (np.zeros((0, 64, 64), np.float32), "empty"),
        (np.zeros((8, 8), np.float32), "too small"),
        (np.zeros((64, 64), bool), "boolean"),
        (np.zeros((64, 64), np.complex64), "complex"),
    ],
    ids=["rgb", "rgba", "4d", "1d", "empty", "tiny", "bool", "complex"],
)
def test_bad_shapes_and_dtypes(denoiser, data, match):
    with pytest.raises(InputError, match=match):
        denoiser.denoise(data)


def test_bad_values(denoiser, rng):
    frame = rng.poisson(0.45, (32, 32)).astype(np.float32)
    nan = frame.copy()
    nan[3, 4] = np.nan
    with pytest.raises(InputError, match="1 NaN or infinite"):
        denoiser.denoise(nan)
    inf = frame.copy()
    inf[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        denoiser.denoise(inf)
    with pytest.raises(InputError, match="negative"):
        denoiser.denoise(frame - 1)
    stack = np.stack([frame, frame - 2])
    with pytest.raises(InputError, match=r"frame 1"):
        denoiser.denoise(stack)
    huge = frame.astype(np.float64)
    huge[1, 1] = 1e300  # finite in float64, not in float32: a scaling problem, not a NaN
    with pytest.raises(InputError, match="beyond what float32 holds"):
        denoiser.denoise(huge)


def test_data_that_are_not_counts(denoiser, rng):
    # a uint16 detector image with a 100-count offset: not counts at 0.45/pixel
    offset = (rng.poisson(0.45, (32, 32)) + 100).astype(np.uint16)
    with pytest.raises(InputError, match="do not look like counts"):
        denoiser.denoise(offset)


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match=r"unknown device|not supported"):
        resolve_device("tpu")


def test_denoiser_places_network_on_its_device(tiny_unet):
    den = Denoiser(tiny_unet, {}, device="cpu")
    assert all(p.device.type == "cpu" for p in den.network.parameters())


def test_load_model_from_a_checkpoint(tmp_path, tiny_unet, rng):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_unet, architecture="bf_unet", params={"scales": 2, "base": 4},
                    dose=0.45, pixel_size_pm=6.1, contrast="white")
    model = load_model(path, device="cpu")
    assert model.metadata["dose"] == 0.45 and model.receptive_field == tiny_unet.receptive_field
    frame = rng.poisson(0.45, (48, 48)).astype(np.float32)
    np.testing.assert_allclose(model.denoise(frame), _reference(tiny_unet, frame), atol=1e-5)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_compatibility_warnings(denoiser):
    assert denoiser.compatibility_warnings(0.455, 6.0) == []
    (low,) = denoiser.compatibility_warnings(0.2, None)
    assert "trained at 0.45" in low and "poor" in low
    # more counts than the model knows: said, and what is done about it (frames are split)
    (thin,) = denoiser.compatibility_warnings(0.5, 6.0)
    assert "thinned at random to 0.45 counts/pixel" in thin and "trained at 0.45" in thin
    (many,) = denoiser.compatibility_warnings(5.0, None)
    assert "11 parts of 0.45 counts/pixel" in many and "exact for Poisson counts" in many
    (pix_msg,) = denoiser.compatibility_warnings(None, 12.2)
    assert "pm/pixel" in pix_msg and "+100%" in pix_msg


def test_estimate_dose(rng):
    stack = rng.poisson(0.45, (10, 128, 128))
    assert abs(estimate_dose(stack) - 0.45) < 0.02
    assert abs(estimate_dose(stack[0]) - 0.45) < 0.03


def test_non_finite_network_output_is_an_error_not_a_result(tiny_unet):
    import torch

    from napari_sbd.core.inference import Denoiser

    with torch.no_grad():
        next(iter(tiny_unet.parameters())).fill_(float("nan"))
    den = Denoiser(tiny_unet, {"dose": 0.45}, device="cpu")
    with pytest.raises(ValueError, match="NaN or infinite values"):
        den.denoise(np.ones((2, 40, 40), np.float32) * 0.45)


def test_envelope_models_warn_only_outside_their_ranges(denoiser):
    import copy

    env = copy.copy(denoiser)
    env.metadata = {**denoiser.metadata, "dose_range": [0.1, 5.0], "pixel_size_range_pm": [5, 10]}
    assert env.dose_range == (0.1, 5.0) and env.pixel_size_range_pm == (5.0, 10.0)
    assert env.compatibility_warnings(4.0, 9.5) == []  # far from 0.45 and 6.1, inside the card
    assert env.compatibility_warnings(0.1, 5.0) == []  # the ends are inside
    (d,) = env.compatibility_warnings(8.0, None)
    assert "outside the 0.1-5" in d
    (fine,) = env.compatibility_warnings(None, 3.0)
    assert "binned 2x2" in fine
    (coarse,) = env.compatibility_warnings(None, 12.0)
    assert "coarser pixels cannot" in coarse
    assert "0.1-5 counts/pixel, 5-10 pm/pixel" in env.describe()


def test_binning_brings_fine_frames_into_the_models_range(denoiser):
    import copy

    from napari_sbd.core.inference import bin_counts, unbin

    counts = np.random.default_rng(5).poisson(0.45, (2, 50, 61)).astype(np.float32)
    binned = bin_counts(counts[0], 2)
    assert binned.shape == (25, 31)
    assert binned[:, :30].sum() == counts[0, :, :60].sum()  # counts are summed, none lost
    ramp = np.add.outer(np.arange(40.0), 2 * np.arange(40.0)).astype(np.float32)
    back = unbin(bin_counts(ramp, 4), 4, ramp.shape)  # a linear image survives bin + unbin
    np.testing.assert_allclose(back[4:-4, 4:-4], ramp[4:-4, 4:-4], atol=1e-3)

    env = copy.copy(denoiser)
    env.metadata = {**denoiser.metadata, "pixel_size_range_pm": [5.0, 10.0]}
    assert [env.binning_for(p) for p in (None, 2.0, 3.0, 4.9, 5.0, 12.0)] == [1, 3, 2, 2, 1, 1]
    assert denoiser.binning_for(3.0) == 1  # a single-pixel-size model never bins
    (note,) = env.compatibility_warnings(None, 3.0)
    assert "binned 2x2" in note and "6 pm" in note
    out = env.denoise(counts, pixel_size_pm=3.0)
    assert out.shape == counts.shape and out.dtype == np.float32
    expected = unbin(env.denoise(bin_counts(counts[1], 2)), 2, counts.shape[1:])
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(env.denoise(counts, pixel_size_pm=6.0), env.denoise(counts))


def test_a_card_that_asks_for_coarser_pixels_bins_up_to_them_inside_its_range(denoiser):
    import copy

    from napari_sbd.core.checkpoint import ModelCard
    from napari_sbd.core.inference import bin_counts, binning_into, unbin

    # the smallest k reaching the target; a smaller one when k x pixel would leave the
    # range, never below what the range's lower edge needs
    assert binning_into(4.88, 6.0, (4.8, 10.5)) == 2  # 9.76 pm
    assert binning_into(5.5, 6.0, (4.8, 10.5)) == 1  # 11 pm would leave the range
    assert binning_into(2.5, 6.0, (4.8, 10.5)) == 3  # 7.5 pm
    assert binning_into(1.0, 6.0, (4.8, 5.0)) == 5  # the range's lower edge wins
    assert binning_into(6.1, 6.0, (4.8, 10.5)) == binning_into(None, 6.0) == 1
    env = copy.copy(denoiser)
    env.metadata = {**denoiser.metadata, "pixel_size_range_pm": [4.8, 10.5], "bin_to_pm": 6.0}
    assert env.card.bin_to_pm == 6.0
    assert ModelCard.from_metadata({"bin_to_pm": "?"}).bin_to_pm is None  # hand-written labels
    assert [env.binning_for(p) for p in (None, 2.5, 3.4, 4.88, 5.2, 5.5, 6.1)] == [1, 3, 2, 2, 2, 1, 1]
    (note,) = env.compatibility_warnings(None, 4.88)  # inside the range: said, not a failure
    assert "binned 2x2" in note and "from which this model does best" in note
    assert "binned up to it" in env.describe()
    counts = np.random.default_rng(6).poisson(0.45, (40, 44)).astype(np.float32)
    np.testing.assert_allclose(env.denoise(counts, pixel_size_pm=4.88),
                               unbin(env.denoise(bin_counts(counts, 2)), 2, counts.shape),
                               rtol=1e-5, atol=1e-6)
    # bin_below_dose: the preferred binning only for frames holding fewer counts than it;
    # into the range (the lower edge's need) at any dose
    env.metadata = {**env.metadata, "bin_below_dose": 1.2, "dose_range": [0.1, 5.0]}  # (no split)
    assert env.card.bin_below_dose == 1.2
    assert [env.binning_for(4.88, d) for d in (None, 0.45, 1.19, 1.2, 4.0, float("nan"))] == [
        2, 2, 2, 1, 1, 2]
    assert [env.binning_for(2.5, d) for d in (0.45, 4.0)] == [3, 2]  # 2x2 reaches 4.8 pm
    assert env.binning_for(4.0, 4.0) == 2
    from napari_sbd.core.inference import binning_target  # the rule auto reads as well

    assert [binning_target((4.8, 10.5), 6.0, 1.2, d) for d in (None, 1.0, 1.2)] == [6.0, 6.0, 4.8]
    assert binning_target((4.8, 10.5), None, 1.2, 0.1) == 4.8  # no preference: the need
    assert binning_target((4.8, 10.5), 6.0, None, 9.0) == 6.0  # no dose limit on the card
    assert env.compatibility_warnings(4.0, 4.88) == []  # not binned: nothing to say
    (note,) = env.compatibility_warnings(0.45, 4.88)
    assert "binned 2x2" in note and "under 1.2 counts/pixel" in note
    assert "while they hold under 1.2 counts/pixel" in env.describe()
    bright = np.random.default_rng(7).poisson(4.0, (40, 44)).astype(np.float32)
    np.testing.assert_allclose(env.denoise(bright, pixel_size_pm=4.88), env.denoise(bright),
                               rtol=1e-5, atol=1e-6)  # the frame's own dose decides
    np.testing.assert_allclose(env.denoise(counts, pixel_size_pm=4.88),
                               unbin(env.denoise(bin_counts(counts, 2)), 2, counts.shape),
                               rtol=1e-5, atol=1e-6)
    # a movie is binned alike throughout, by its first frames' dose (as its warnings read
    # it), whichever frames are denoised: a dose drifting across 1.2 counts/pixel does not
    # switch the binning (and so the output's texture and intensities) between frames
    from napari_sbd.core.inference import binning_dose

    movie = np.stack([counts] * 4 + [bright] * 2)
    assert binning_dose(movie) == pytest.approx(float(counts.mean()))
    whole = env.denoise(movie, pixel_size_pm=4.88)
    for i in (0, 5):
        np.testing.assert_allclose(whole[i], unbin(env.denoise(bin_counts(movie[i], 2)), 2,
                                                   counts.shape), rtol=1e-5, atol=1e-6)
    (i, part), = env.iter_denoise(movie, indices=[5], pixel_size_pm=4.88)
    np.testing.assert_array_equal(part, whole[5])  # a partial or resumed run: the same frames
    np.testing.assert_allclose(env.denoise(movie[4:], pixel_size_pm=4.88)[0],
                               env.denoise(bright), rtol=1e-5, atol=1e-6)  # its own first frames
    np.testing.assert_array_equal(env.denoise(movie, pixel_size_pm=4.88, dose=4.0)[0],
                                  env.denoise_frame(counts, pixel_size_pm=4.88, dose=4.0))
    np.testing.assert_allclose(env.denoise_frame(counts, pixel_size_pm=4.88, dose=4.0),
                               env.denoise(counts), rtol=1e-5, atol=1e-6)  # told the dose
    damaged = movie.copy()
    damaged[0, 0, 0] = np.nan
    assert binning_dose(damaged) is None  # each frame's own mean decides then


def test_the_frame_on_screen_is_denoised_first(denoiser, rng):
    stack = rng.poisson(0.45, (5, 32, 32)).astype(np.float32)
    order = [i for i, _ in denoiser.iter_denoise(stack, first=3)]
    assert order == [3, 0, 1, 2, 4]
    assert [i for i, _ in denoiser.iter_denoise(stack, start=1, stop=3, first=4)] == [1, 2]


def test_the_bundled_envelope_model_and_the_default_pointing_to_it():
    from napari_sbd.core.checkpoint import CheckpointError
    from napari_sbd.core.inference import BUNDLED, load_model

    assert set(BUNDLED) == {"default", "envelope", "black", "high-dose"}
    env = load_model("envelope", device="cpu")
    lo, hi = env.dose_range
    assert lo <= 0.15 and hi >= 4.0
    plo, phi = env.pixel_size_range_pm
    assert plo <= 4.88 and phi >= 10.0
    assert env.compatibility_warnings(2.0, 9.0) == []  # inside its envelope
    default = load_model("default", device="cpu")
    (msg,) = default.compatibility_warnings(0.15, None)
    assert "model='envelope'" in msg
    (msg,) = default.compatibility_warnings(2.0, None)  # more counts: split, not refused
    assert "4 parts of 0.45" in msg
    # the high-dose model covers the same envelope, which auto's binning rule assumes
    from napari_sbd.core.inference import ENVELOPE_PIXEL_RANGE_PM

    high = load_model("high-dose", device="cpu")
    assert env.pixel_size_range_pm == high.pixel_size_range_pm == ENVELOPE_PIXEL_RANGE_PM
    # and the binning its card asks for (auto reads the constant, not the file)
    from napari_sbd.core.inference import HIGH_DOSE_BIN_TO_PM

    assert high.card.bin_to_pm == HIGH_DOSE_BIN_TO_PM and env.card.bin_to_pm is None
    from napari_sbd.core.inference import HIGH_DOSE_BIN_BELOW_DOSE

    assert high.card.bin_below_dose == HIGH_DOSE_BIN_BELOW_DOSE
    assert high.dose_range == env.dose_range
    black = load_model("black", device="cpu")  # the default's point, dark columns
    assert (black.card.contrast, black.card.dose, black.card.pixel_size_pm) == ("black", 0.45, 6.1)
    with pytest.raises(CheckpointError, match="bundled: default, envelope"):
        from napari_sbd.core.inference import bundled_model_path

        bundled_model_path("nope")


def test_warnings_ignore_a_dose_estimate_that_is_not_a_number(denoiser):
    assert denoiser.compatibility_warnings(float("nan"), float("nan")) == []
    assert all("nan" not in w for w in denoiser.compatibility_warnings(float("inf"), 6.1))


def test_bundled_models_outputs_are_unchanged():
    # tests/data/bundled_outputs.npz: each bundled model's output on one fixed noisy
    # frame, written before the network interface became SBDNetwork (issue 17). A
    # refactor must keep them: anything beyond float rounding is a changed model.
    # (envelope: rewritten when the envelope run's epoch-119 model replaced epoch 63;
    # default: when default96, the same network trained on all 96 structures, replaced it,
    # when its epoch 339 (warm restarts with a weight average) replaced epoch 145,
    # when its epoch 644 (a further warm restart) replaced 339, and when the 512-px patch
    # run's epoch 94 (model-training/study/patch-ab/p512) replaced 644, and when its
    # epoch 270 replaced 94;
    # high-dose: when the leader's epoch 1141 (its weight average) replaced epoch 594, when
    # its epoch 1247 replaced 1141, and when its run on 320-px patches (epoch 197,
    # model-training/study/leader-p320) replaced 1247)
    ref = np.load(Path(__file__).parent / "data" / "bundled_outputs.npz")
    # black, high-dose: written when each was bundled
    for name in ("default", "envelope", "black", "high-dose"):
        out = load_model(name, device="cpu").denoise(ref["input"])
        np.testing.assert_allclose(out, ref[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_auto_picks_the_default_only_where_it_beats_the_envelope_models():
    from napari_sbd.core.inference import AUTO_DEFAULT_DOSE, AUTO_HIGH_DOSE, choose_bundled_model

    assert choose_bundled_model(0.45, 6.1)[0] == "default"
    assert choose_bundled_model(None, None)[0] == "default"  # unknown: the default's own
    # more counts than the default's dose: it splits them, and wins up to its window's top
    assert choose_bundled_model(0.9, 6.1)[0] == "default"
    below = 0.95 * AUTO_HIGH_DOSE
    for dose, px in [(below, 8.0), (below, 6.1), (below, 10.0), (below, 5.28), (below / 4, 4.0)]:
        name, why = choose_bundled_model(dose, px)
        assert name == "envelope" and "outside" in why, (dose, px)
    # many counts per pixel: the high-dose model, also for a fine frame that binning fills
    for dose, px in [(1.05 * AUTO_DEFAULT_DOSE[1], 6.1), (1.05 * AUTO_HIGH_DOSE, 8.0),
                     (4.0, None), (0.3 * AUTO_HIGH_DOSE, 4.0)]:
        name, why = choose_bundled_model(dose, px)
        assert name == "high-dose" and "high-dose model is best" in why, (dose, px)
    assert "2x2 binned" in choose_bundled_model(0.3 * AUTO_HIGH_DOSE, 4.0)[1]
    # a frame the high-dose model bins and the envelope model would not: high-dose at any dose
    for dose, px in [(0.1, 4.88), (0.45, 5.2), (0.1, 2.5)]:
        name, why = choose_bundled_model(dose, px)
        assert name == "high-dose" and "bins the frames" in why, (dose, px)
    # ... only while it does: from HIGH_DOSE_BIN_BELOW_DOSE counts/pixel up it bins no more
    # than the envelope model, and the dose rule decides
    from napari_sbd.core.inference import HIGH_DOSE_BIN_BELOW_DOSE

    name, why = choose_bundled_model(1.05 * HIGH_DOSE_BIN_BELOW_DOSE, 4.88)
    assert name == "high-dose" and "bins the frames" not in why and "binned" not in why


@pytest.mark.parametrize("amplitude, expected", [(0.25, "white"), (-0.25, "black")])
def test_contrast_is_read_from_one_raw_frame_at_the_papers_dose(amplitude, expected):
    from napari_sbd.core.inference import estimate_contrast
    from napari_sbd.core.phantom import gaussian_columns

    # columns 2.3 A apart at 6.1 pm, 0.45 counts/pixel: mostly zeros and ones per pixel
    rng = np.random.default_rng(2)
    centres = np.mgrid[20:500:38, 20:500:38].reshape(2, -1).T.astype(float)
    clean = gaussian_columns((512, 512), centres, 6.0, amplitude, 0.45)
    frames = rng.poisson(np.clip(clean, 0, None), size=(3, 512, 512)).astype(np.float32)
    assert estimate_contrast(frames[0], 6.1) == expected
    assert estimate_contrast(frames, 6.1) == expected  # a stack: its first frames summed
    assert estimate_contrast(frames[0, :100, :100], 6.1) is None  # too small to tell


def test_contrast_of_the_sample_movie_is_white():
    from napari_sbd.core.inference import estimate_contrast
    from napari_sbd.sample_data import clean_frame

    clean, info = clean_frame()
    noisy = np.random.default_rng(0).poisson(clean).astype(np.float32)
    assert estimate_contrast(noisy, info["pixel_size_pm"]) == "white"


def test_auto_picks_the_black_contrast_model_for_black_data_at_its_point(monkeypatch, tmp_path):
    from napari_sbd.core import inference

    real = inference.bundled_model_path
    # without a bundled black-contrast model, black data get the white-contrast choice
    monkeypatch.setattr(inference, "bundled_model_path",
                        lambda name="default": tmp_path / "none.pt" if name == "black" else real(name))
    name, why = inference.choose_bundled_model(0.45, 6.1, "black")
    assert name == "default" and "black contrast" in why
    # with one: black data at its training point get it, white data and other points do not
    (tmp_path / "black.pt").write_bytes(b"")
    monkeypatch.setattr(inference, "bundled_model_path",
                        lambda name="default": tmp_path / "black.pt" if name == "black" else real(name))
    assert inference.choose_bundled_model(0.45, 6.1, "black")[0] == "black"
    assert inference.choose_bundled_model(None, None, "black")[0] == "black"
    assert inference.choose_bundled_model(0.45, 6.1, "white")[0] == "default"
    assert inference.choose_bundled_model(0.45, 6.1)[0] == "default"
    name, why = inference.choose_bundled_model(0.2, 6.1, "black")
    assert name in ("envelope", "high-dose") and "trained at" in why


def test_split_counts_gives_independent_poisson_parts():
    from napari_sbd.core.inference import split_counts

    lam = 2.7
    y = np.random.default_rng(5).poisson(lam, (400, 400)).astype(np.float32)
    parts = split_counts(y, 3, 0.6, np.random.default_rng(6))
    assert len(parts) == 3 and all(p.dtype == np.float32 and p.shape == y.shape for p in parts)
    total = np.sum(parts, axis=0)
    assert np.all(total <= y) and np.all(np.rint(total) == total)  # thinned counts, dealt out
    want = lam * 0.6 / 3
    for p in parts:  # Poisson at keep * lambda / parts: mean and variance both
        assert p.mean() == pytest.approx(want, rel=0.02)
        assert p.var() == pytest.approx(want, rel=0.04)
    # independent parts (a multinomial split of Poisson counts), unlike the kept total
    assert abs(np.corrcoef(parts[0].ravel(), parts[1].ravel())[0, 1]) < 0.01
    np.testing.assert_array_equal(split_counts(y, 1, 1.0, np.random.default_rng(0))[0], y)
    with pytest.raises(ValueError, match="parts >= 1"):
        split_counts(y, 0, 0.5, np.random.default_rng(0))


def test_frames_above_the_models_dose_are_split_into_parts_at_it(denoiser, rng):
    from napari_sbd.core.inference import DIHEDRAL, dihedral_inverse

    frame = rng.poisson(0.45 * 2.5, (64, 64)).astype(np.float32)
    parts, keep = denoiser.dose_split(frame)
    assert parts == 2 and keep * frame.mean() / parts == pytest.approx(0.45)
    entries, norm = denoiser.split_plan(frame)
    entries = list(entries)
    assert norm == keep and len(entries) == 2  # one split: 2 passes
    expected = sum(denoiser._network_frame(p, None) for _, _, p in entries) / keep
    out = denoiser.denoise(frame, tile_size=None)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out, denoiser.denoise(frame.copy(), tile_size=None))  # seeded
    # "best": one split for each of the 8 rotations and flips
    entries, _ = denoiser.split_plan(frame, ensemble=True)
    entries = list(entries)
    assert len(entries) == 2 * len(DIHEDRAL)
    best = sum(dihedral_inverse(denoiser._network_frame(p, None), t, f)
               for t, f, p in entries) / (len(DIHEDRAL) * keep)
    np.testing.assert_allclose(denoiser.denoise(frame, tile_size=None, ensemble=True), best,
                               rtol=1e-5, atol=1e-6)
    # 1.5x: thinned to one part, twice (at least 2 passes), the two estimates averaged
    one = rng.poisson(0.45 * 1.5, (64, 64)).astype(np.float32)
    assert denoiser.dose_split(one)[0] == 1
    entries, norm = denoiser.split_plan(one)
    entries = list(entries)
    assert len(entries) == 2 and norm == pytest.approx(2 * 0.45 / one.mean())
    assert not np.array_equal(entries[0][2], entries[1][2])  # two different thinnings
    # just under 2x (a frame's mean is a little under its vacuum's): 2 parts, nothing thrown
    near = rng.poisson(0.45 * 1.99, (256, 256)).astype(np.float32)
    assert denoiser.dose_split(near) == (2, 1.0)
    # at the model's dose, and for data that are not integer counts: as they are
    assert denoiser.dose_split(np.full((32, 32), 0.45, np.float32)) is None
    assert denoiser.dose_split(frame + 0.25) is None
    np.testing.assert_array_equal(denoiser.denoise(frame + 0.25, tile_size=None),
                                  denoiser._network_frame(frame + 0.25, None))


def test_a_dose_range_model_never_splits(denoiser, rng):
    import copy

    env = copy.copy(denoiser)
    env.metadata = {**denoiser.metadata, "dose_range": [0.1, 5.0]}
    for dose in (4.0, 12.0):  # inside, and above (where it does better as it is)
        assert env.dose_split(rng.poisson(dose, (64, 64)).astype(np.float32)) is None


def test_a_blend_averages_its_members_and_says_what_it_is(tiny_unet):
    from napari_sbd.core.inference import Blend

    a = Denoiser(tiny_unet, {"dose": 0.45, "pixel_size_pm": 6.1, "contrast": "white"})
    b = Denoiser(tiny_unet, {"dose": 0.45, "dose_range": [0.1, 5.0],
                                "pixel_size_range_pm": [4.8, 10.5], "contrast": "white"})
    blend = Blend([(a, 0.5), (b, 0.5)], "ab")
    frame = np.random.default_rng(2).poisson(1.35, (96, 80)).astype(np.float32)
    # the single-dose member splits the frame (3 parts), the dose-range member does not
    assert a.dose_split(frame) is not None and b.dose_split(frame) is None
    np.testing.assert_allclose(blend.denoise(frame), 0.5 * a.denoise(frame) + 0.5 * b.denoise(frame),
                               rtol=1e-5, atol=1e-6)
    assert blend.dose_split(frame) == a.dose_split(frame)  # what the filter dock reports
    assert blend.card.contrast == "white" and blend.card.pixel_size_pm == 6.1
    assert blend.receptive_field == max(a.receptive_field, b.receptive_field)
    assert "2 models averaged" in blend.describe() and "50%" in blend.describe()
    # each member's warnings, naming it: the split of the single-dose one at 1.35
    warns = blend.compatibility_warnings(1.35, 6.1)
    assert len(warns) == 1 and "of the blend" in warns[0] and "split at random" in warns[0]
    for bad in ([(a, 0.5)], [(a, 0.6), (b, 0.6)], [(a, 1.2), (b, -0.2)], [(blend, 0.5), (a, 0.5)]):
        with pytest.raises(ValueError, match="blend"):
            Blend(bad)
    # candidates scored on one frame: each network runs once, a blend reuses its members'
    from napari_sbd.core.inference import network_once

    runs: list[Denoiser] = []
    cache: dict = {}

    def run(m):
        runs.append(m)
        return m.denoise(frame)

    outs = [network_once(m, run, cache) for m in (a, blend, b, blend)]
    assert runs == [a, b]
    np.testing.assert_allclose(outs[1], blend.denoise(frame), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outs[0], a.denoise(frame))


def test_the_bundled_blends_load_by_name_and_auto_can_return_them():
    from napari_sbd.core.inference import BLENDS, Blend, blend_installed, choose_bundled_model

    if not all(blend_installed(n) for n in BLENDS):
        pytest.skip("the bundled default and high-dose models are needed")
    blend = load_model("blend-70", device="cpu")
    assert isinstance(blend, Blend) and [w for _, w in blend.members] == [0.3, 0.7]
    assert [Path(m["path"]).name for m in blend.metadata["members"]] == ["default.pt",
                                                                       "high-dose.pt"]
    name, why = choose_bundled_model(1.35, 6.1, "white", "blend-70")
    assert name == "blend-70" and "averaged" in why and "30%" in why
    # dark columns at the default's point: the black-contrast model, whatever else was read
    assert choose_bundled_model(1.35, 6.1, "black", "blend-70")[0] == "black"
