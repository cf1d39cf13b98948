"""core.noise and core.metrics, including the papers' convention on the reference images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.core.metrics import psnr, ssim
from napari_sbd.core.noise import estimate_clean_vacuum_level, poisson_noise, scale_to_dose

from .conftest import reference_images


def test_poisson_noise_has_poisson_statistics():
    clean = np.full((400, 400), 0.45, np.float32)
    noisy = poisson_noise(clean, rng=0)
    assert noisy.dtype == np.float32 and np.all(noisy == np.round(noisy))
    assert abs(noisy.mean() - 0.45) < 0.01 and abs(noisy.var() - 0.45) < 0.015


def test_poisson_noise_at_a_dose_and_reproducibility():
    clean = np.full((300, 300), 0.9, np.float32)
    noisy = poisson_noise(clean, dose=0.45, rng=1)
    assert abs(noisy.mean() - 0.45) < 0.01
    np.testing.assert_array_equal(noisy, poisson_noise(clean, dose=0.45, rng=1))
    assert not np.array_equal(noisy, poisson_noise(clean, dose=0.45, rng=2))


def test_dose_scaling_and_errors():
    clean = np.array([[0.45, 0.45], [0.45, 0.9]], np.float32)
    assert estimate_clean_vacuum_level(clean) == pytest.approx(0.45)
    np.testing.assert_allclose(scale_to_dose(clean, 1.0), clean / 0.45, rtol=1e-6)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="dose"):
            scale_to_dose(clean, bad)
    with pytest.raises(ValueError, match="non-negative"):
        poisson_noise(-clean)


def test_psnr_closed_form_and_stacks():
    a = np.zeros((10, 10))
    b = np.full((10, 10), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)  # MSE 0.01, range 1
    per_frame = psnr(np.zeros((2, 8, 8)), np.stack([np.full((8, 8), 0.1), np.full((8, 8), 0.01)]))
    np.testing.assert_allclose(per_frame, [20.0, 40.0])
    assert ssim(a + 0.5, a + 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:5])


def test_papers_convention_on_the_reference_images():
    # Raw noisy frames of the papers' test images score about 3.5 dB (ICLR
    # Table 1: 3.56 +- 0.03): counts, data range 1, no clipping.
    scores, scores_clipped, ssims = [], [], []
    for i, clean in enumerate(reference_images()):
        noisy = poisson_noise(clean, rng=i)
        scores.append(psnr(clean, noisy))
        scores_clipped.append(psnr(clean, noisy, clip=True))
        ssims.append(ssim(clean, noisy))
    assert 3.3 < np.mean(scores) < 3.8
    assert np.std(scores) < 0.1
    assert np.mean(scores_clipped) > np.mean(scores) + 2  # why the default is unclipped
    assert max(ssims) < 0.02  # papers: 0.00
    # the clean image against itself, and a flat vacuum guess (sanity anchors)
    clean = reference_images()[0]
    assert psnr(clean, clean) == np.inf
    assert 20 < psnr(clean, np.full_like(clean, 0.45)) < 35
