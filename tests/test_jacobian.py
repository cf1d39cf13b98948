"""core.jacobian: the crop filter equals the whole-frame gradient; Euler's identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sbd.core.inference import EDGE_PAD, Denoiser, dihedral, dihedral_inverse
from napari_sbd.core.jacobian import _filter, effective_filter, filter_crop
from napari_sbd.core.models import BiasFreeUNet

from .conftest import randomise_bn, randomise_gain


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(7)
    net = randomise_bn(BiasFreeUNet(scales=3, base=4, centre_sigma=2.0))
    return Denoiser(net, {"dose": 0.45})


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(3).poisson(0.45, (150, 173)).astype(np.float32)


def _whole_frame_gradient(model, frame, pixel):
    """Gradient through a whole-frame pass, with the mirror padding done by torch."""
    m, e = model.size_multiple, EDGE_PAD
    x = torch.from_numpy(frame)[None, None].requires_grad_(True)
    h, w = frame.shape
    xp = torch.nn.functional.pad(x, (e, e + (-(w + 2 * e)) % m, e, e + (-(h + 2 * e)) % m), mode="reflect")
    model.network(xp)[0, 0, pixel[0] + e, pixel[1] + e].backward()
    return x.grad[0, 0].numpy()


@pytest.mark.parametrize("pixel", [(75, 86), (2, 90), (149, 3), (0, 0), (149, 172), (70, 170)],
                         ids=["interior", "top-edge", "bottom-left", "corner", "far-corner", "right"])
def test_crop_filter_equals_whole_frame_gradient(model, frame, pixel):
    filt, (r0, c0) = effective_filter(model, frame, pixel)
    full = _whole_frame_gradient(model, frame, pixel)
    placed = np.zeros_like(full)
    placed[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]] = filt
    assert np.abs(full).max() > 0
    np.testing.assert_allclose(placed, full, atol=1e-6 * np.abs(full).max() + 1e-9)


def test_bias_free_identity(model, frame):
    den = model.denoise(frame, tile_size=None)
    for pixel in [(75, 86), (0, 0), (149, 172)]:
        filt, (r0, c0) = effective_filter(model, frame, pixel)
        crop = frame[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]]
        value = float((filt.astype(np.float64) * crop).sum())
        assert value == pytest.approx(float(den[pixel]), rel=1e-4)


def test_crop_geometry():
    # interior: aligned to the grid, covers the receptive radius on both sides
    r0, r1, c0, _c1 = filter_crop((1024, 1024), (500, 300), 122, 16)
    assert r0 % 16 == 0 and c0 % 16 == 0 and r0 <= 500 - 122 and r1 > 500 + 122
    assert (r1 - r0) <= 2 * 122 + 2 * 16
    assert filter_crop((100, 100), (5, 95), 122, 16) == (0, 100, 0, 100)


def test_pixel_outside_the_frame(model, frame):
    with pytest.raises(ValueError, match="outside"):
        effective_filter(model, frame, (150, 0))


def test_ensemble_filter_identity_and_symmetry(model, frame):
    # the 8-fold ensemble is bias-free too: its filter reproduces its output exactly
    den = model.denoise(frame, tile_size=None, ensemble=True)
    plain = model.denoise(frame, tile_size=None)
    assert np.abs(den - plain).max() > 1e-4  # a different estimator
    for pixel in [(75, 86), (0, 0), (149, 172), (3, 120)]:
        filt, (r0, c0) = effective_filter(model, frame, pixel, ensemble=True)
        crop = frame[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]]
        value = float((filt.astype(np.float64) * crop).sum())
        assert value == pytest.approx(float(den[pixel]), rel=1e-4)
    # the ensemble is equivariant: denoising a flipped frame gives the flipped result
    np.testing.assert_allclose(model.denoise(frame[::-1].copy(), tile_size=None, ensemble=True),
                               den[::-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pixel_pm, ensemble", [(3.0, False), (2.0, False), (3.0, True)],
                         ids=["binned-2x2", "binned-3x3", "binned-ensemble"])
def test_filter_of_a_frame_binned_into_the_models_range(model, frame, pixel_pm, ensemble):
    """Finer than the model's range: the filter of bin -> network -> interpolation back."""
    env = Denoiser(model.network, {"dose": 0.45, "dose_range": [0.1, 5.0],  # binned: not split
                                   "pixel_size_range_pm": [5.0, 10.0]})
    assert env.binning_for(pixel_pm) == int(np.ceil(5.0 / pixel_pm))
    den = env.denoise(frame, tile_size=None, pixel_size_pm=pixel_pm, ensemble=ensemble)
    rng = np.random.default_rng(0)
    step = np.abs(rng.normal(size=frame.shape)).astype(np.float32) * 0.02  # counts stay >= 0
    ahead = env.denoise(frame + step, tile_size=None, pixel_size_pm=pixel_pm, ensemble=ensemble)
    for pixel in [(75, 86), (0, 0), (149, 172), (1, 171)]:
        filt, (r0, c0) = effective_filter(env, frame, pixel, ensemble=ensemble,
                                          pixel_size_pm=pixel_pm)
        crop = (slice(r0, r0 + filt.shape[0]), slice(c0, c0 + filt.shape[1]))
        # Euler's identity for the whole pipeline (it is bias-free too)
        assert float((filt.astype(np.float64) * frame[crop]).sum()) == pytest.approx(
            float(den[pixel]), rel=1e-4)
        # and every direction, not only y's: a small step moves the output by filter . step
        moved = float(ahead[pixel] - den[pixel])
        assert float((filt.astype(np.float64) * step[crop]).sum()) == pytest.approx(
            moved, rel=0.05, abs=1e-6)
    # a card that bins only frames with few counts: a frame holding more is not binned, and
    # the filter follows the same rule on the same frame
    few = Denoiser(model.network, {**env.metadata, "bin_to_pm": 8.0, "bin_below_dose": 0.01})
    assert few.binning_for(pixel_pm) > env.binning_for(pixel_pm)
    assert few.binning_for(pixel_pm, float(frame.mean())) == env.binning_for(pixel_pm)
    filt, (r0, c0) = effective_filter(few, frame, (75, 86), ensemble=ensemble, pixel_size_pm=pixel_pm)
    assert float((filt.astype(np.float64) * frame[r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum()
                 ) == pytest.approx(float(den[75, 86]), rel=1e-4)
    # a frame of a movie binned by the movie's dose (fewer counts than this frame's):
    # the filter given that dose is the filter of that output
    movie_den = few.denoise_frame(frame, tile_size=None, pixel_size_pm=pixel_pm, ensemble=ensemble,
                                  dose=0.001)
    assert abs(float(movie_den[75, 86]) - float(den[75, 86])) > 1e-3 * abs(float(den[75, 86]))
    filt, (r0, c0) = effective_filter(few, frame, (75, 86), ensemble=ensemble, pixel_size_pm=pixel_pm,
                                      dose=0.001)
    assert float((filt.astype(np.float64) * frame[r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum()
                 ) == pytest.approx(float(movie_den[75, 86]), rel=1e-4)
    # the plain network's filter is another function's: it does not reproduce the binned output
    filt, (r0, c0) = effective_filter(env, frame, (75, 86), ensemble=ensemble)
    plain = float((filt.astype(np.float64) * frame[r0:r0 + filt.shape[0], c0:c0 + filt.shape[1]]).sum())
    assert abs(plain - float(den[75, 86])) > 1e-3 * abs(float(den[75, 86]))


def test_filter_refuses_data_that_are_not_counts_like_denoising_does(model):
    from napari_sbd.core.inputs import InputError

    offset = np.random.default_rng(0).poisson(0.45, (64, 64)).astype(np.float32) + 100
    with pytest.raises(InputError, match="do not look like counts"):
        effective_filter(model, offset, (10, 10))


def test_filter_of_a_level_conditioned_network(frame):
    """Level gains: the frame's level is held fixed, so the filter is exact and complete."""
    torch.manual_seed(5)
    net = randomise_gain(BiasFreeUNet(scales=3, base=4, centre_sigma=2.0, activation="leaky_relu",
                                      norm="none", level_gain=True))
    model = Denoiser(net, {"dose": 0.45})
    den = model.denoise(frame, tile_size=None)
    for pixel in [(75, 86), (0, 0), (149, 172)]:
        filt, (r0, c0) = effective_filter(model, frame, pixel)
        crop = frame[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]]
        assert float((filt.astype(np.float64) * crop).sum()) == pytest.approx(float(den[pixel]),
                                                                             rel=1e-4)
    # the crop's own mean would give another function: the frame's level is what was used
    brighter = Denoiser(net, {"dose": 0.45})
    brighter.level_of = lambda f: torch.tensor([2 * float(frame.mean())])  # type: ignore[method-assign]
    filt, (r0, c0) = effective_filter(brighter, frame, (75, 86))
    crop = frame[r0 : r0 + filt.shape[0], c0 : c0 + filt.shape[1]]
    assert abs(float((filt.astype(np.float64) * crop).sum()) - float(den[75, 86])) > 1e-3


def test_no_memory_for_the_filter_is_one_clear_error(model, frame, monkeypatch):
    def scarce(x, level=None):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.network, "forward", scarce)
    with pytest.raises(MemoryError, match="not enough CPU memory for the effective filter"):
        effective_filter(model, frame, (75, 86))
    monkeypatch.setattr(model.network, "forward", lambda x, level=None: (_ for _ in ()).throw(
        RuntimeError("bad")))
    with pytest.raises(RuntimeError, match="bad"):  # other errors are not memory: raised as is
        effective_filter(model, frame, (75, 86))


@pytest.mark.parametrize("ensemble", [False, True], ids=["fast", "best"])
def test_filter_of_a_frame_split_to_the_models_dose(model, ensemble):
    """Above the model's dose: the parts' filters, averaged; the identity holds for every part."""
    frame = np.random.default_rng(4).poisson(0.45 * 2.4, (150, 173)).astype(np.float32)
    entries, norm = model.split_plan(frame, ensemble)
    entries = list(entries)
    den = model.denoise(frame, tile_size=None, ensemble=ensemble)
    for pixel in [(75, 86), (0, 0), (149, 172)]:
        filt, (r0, c0) = effective_filter(model, frame, pixel, ensemble=ensemble)
        crop = (slice(r0, r0 + filt.shape[0]), slice(c0, c0 + filt.shape[1]))
        # exact: the output is the sum over the parts of each part's filter times the part
        parts_value = 0.0
        placed = np.zeros(frame.shape)
        index = np.arange(frame.size).reshape(frame.shape)
        for turns, flip, t_frame in entries:  # the network's own filter on each (turned) part
            t_index = dihedral(index, turns, flip)
            tp = tuple(int(v[0]) for v in np.nonzero(t_index == pixel[0] * frame.shape[1] + pixel[1]))
            one, (q0, s0) = _filter(model, t_frame, tp)
            parts_value += float((one.astype(np.float64)
                                  * t_frame[q0 : q0 + one.shape[0], s0 : s0 + one.shape[1]]).sum())
            t_full = np.zeros(t_frame.shape)
            t_full[q0 : q0 + one.shape[0], s0 : s0 + one.shape[1]] = one
            placed += dihedral_inverse(t_full, turns, flip)
        assert parts_value / norm == pytest.approx(float(den[pixel]), rel=1e-4)
        # the filter shown is the average of the parts' filters ...
        full = np.zeros(frame.shape)
        full[crop] = filt
        np.testing.assert_allclose(full, placed / len(entries), atol=1e-6 * np.abs(full).max())
        # ... and applied to the frame itself it gives the output to the noise of the split
        assert float((filt.astype(np.float64) * frame[crop]).sum()) == pytest.approx(
            float(den[pixel]), rel=0.15)


@pytest.mark.parametrize("ensemble", [False, True], ids=["fast", "best"])
def test_filter_of_a_blend_is_its_members_filters_averaged(model, frame, ensemble):
    """A blend of a plain and a binning model: its filter is exact (Euler and every direction)."""
    from napari_sbd.core.inference import Blend

    torch.manual_seed(8)
    other = Denoiser(randomise_bn(BiasFreeUNet(scales=2, base=4, centre_sigma=2.0)),
                     {"dose": 0.45, "dose_range": [0.1, 5.0], "pixel_size_range_pm": [5.0, 10.0]})
    blend = Blend([(model, 0.3), (other, 0.7)], "test blend")
    px = 3.0  # the second member bins 2x2, the first does not
    den = blend.denoise(frame, tile_size=None, pixel_size_pm=px, ensemble=ensemble)
    np.testing.assert_allclose(
        den, 0.3 * model.denoise(frame, tile_size=None, pixel_size_pm=px, ensemble=ensemble)
        + 0.7 * other.denoise(frame, tile_size=None, pixel_size_pm=px, ensemble=ensemble),
        rtol=1e-5, atol=1e-6)
    step = np.abs(np.random.default_rng(1).normal(size=frame.shape)).astype(np.float32) * 0.02
    ahead = blend.denoise(frame + step, tile_size=None, pixel_size_pm=px, ensemble=ensemble)
    for pixel in [(75, 86), (0, 0), (149, 172)]:
        filt, (r0, c0) = effective_filter(blend, frame, pixel, ensemble=ensemble,
                                          pixel_size_pm=px)
        crop = (slice(r0, r0 + filt.shape[0]), slice(c0, c0 + filt.shape[1]))
        assert float((filt.astype(np.float64) * frame[crop]).sum()) == pytest.approx(
            float(den[pixel]), rel=1e-4)
        assert float((filt.astype(np.float64) * step[crop]).sum()) == pytest.approx(
            float(ahead[pixel] - den[pixel]), rel=0.05, abs=1e-6)
