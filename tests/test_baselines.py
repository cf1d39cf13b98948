"""core.baselines: each classical method denoises, keeps the mean, and respects its own physics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.core import baselines as bl
from napari_sbd.core.metrics import psnr
from napari_sbd.sample_data import clean_frame


@pytest.fixture(scope="module")
def pair():
    clean = clean_frame()[0][:256, 150:406]
    return clean, np.random.default_rng(0).poisson(clean).astype(np.float32)


def test_unbiased_inverse_anscombe_beats_the_algebraic_one():
    rng = np.random.default_rng(0)
    for lam in (0.45, 1.0, 5.0):
        z = bl.anscombe(rng.poisson(lam, 200_000)).mean()  # E[A(y)]
        assert bl.inverse_anscombe_unbiased(z) == pytest.approx(lam, rel=0.03)
        assert abs((z / 2) ** 2 - 3 / 8 - lam) > abs(bl.inverse_anscombe_unbiased(z) - lam)


@pytest.mark.parametrize(
    ("method", "kwargs", "min_gain_db"),
    [
        (bl.gaussian_blur, {"sigma_px": 8.0}, 20),
        (bl.fourier_lowpass, {"cutoff_per_a": 0.5, "order": 2}, 15),
        (bl.fourier_lowpass, {}, 8),  # the papers' hard cut at 1.35 1/A keeps much noise
        (bl.adaptive_wiener, {"window_px": 27}, 12),
        (bl.vst_nlm, {}, 15),
        (bl.binned_vst_bm3d, {"factor": 12}, 20),
    ],
)
def test_classical_methods_denoise_and_keep_the_mean(pair, method, kwargs, min_gain_db):
    if method is bl.binned_vst_bm3d:
        pytest.importorskip("bm3d")
    clean, noisy = pair
    out = method(noisy, **kwargs)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert psnr(clean, out) > psnr(clean, noisy) + min_gain_db
    # scipy's adaptive Wiener shrinks Poisson spikes towards the local mean: about 5% low
    tol = 0.06 if method is bl.adaptive_wiener else 0.02
    assert abs(out.mean() - clean.mean()) < tol * clean.mean()
    np.testing.assert_array_equal(noisy, np.random.default_rng(0).poisson(clean))  # input intact


def test_adaptive_wiener_is_finite_where_the_window_is_flat():
    # a vacuum patch of zeros next to counts: scipy's wiener divides 0 by 0 there
    y = np.zeros((64, 64), np.float32)
    y[:, 32:] = np.random.default_rng(1).poisson(2.0, (64, 32))
    out = bl.adaptive_wiener(y, 5)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, :10], 0.0)  # flat zero window: the local mean, 0


def test_median_filter_is_useless_at_this_dose(pair):
    _clean, noisy = pair
    # the median of Poisson(0.45) is 0: the 3x3 median is mostly zeros
    assert np.mean(bl.median_filter(noisy) == 0) > 0.5


def test_bm3d_on_too_small_an_image_is_a_clear_error_not_a_crash():
    pytest.importorskip("bm3d")
    from napari_sbd.core.baselines import binned_vst_bm3d, vst_bm3d

    frame = np.random.default_rng(0).poisson(0.45, (100, 120)).astype(np.float32)
    # 100 px binned 10 x 10 is 10 px a side: the bm3d package can crash on so few blocks
    with pytest.raises(ValueError, match=r"10 x 12 after 10 x 10 binning: use a bin factor of "
                                         r"at most 6"):
        binned_vst_bm3d(frame, factor=10)
    with pytest.raises(ValueError, match="at least 16 x 16 pixels; this one is 8 x 8"):
        vst_bm3d(frame[:8, :8])
    assert binned_vst_bm3d(frame, factor=6).shape == frame.shape  # 17 x 20 binned: allowed
