"""core.likelihood: LLR against the closed form, the map, the vacuum, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sbd.core.likelihood import (
    LLR_REAL,
    LLR_SPURIOUS,
    VacuumNotFound,
    column_log_likelihood_ratios,
    estimate_vacuum_level,
    likelihood_map,
    vacuum_mask,
)
from napari_sbd.core.phantom import pt_on_ceo2_phantom


def _expected_llr(lam_true, lam1, lam0):
    # E[y] log(l1/l0) - (l1 - l0) with y ~ Poisson(lam_true)
    return lam_true * np.log(lam1 / lam0) - (lam1 - lam0)


def test_llr_sign_and_closed_form_mean():
    rng = np.random.default_rng(0)
    lam0, lam1 = 0.45, 0.6
    shape = (200, 200)
    centres = np.array([[100.0, 100.0]])
    den = np.full(shape, lam1)
    draws_real, draws_fake = [], []
    for _ in range(400):
        real = rng.poisson(lam1, shape)  # the column is there
        fake = rng.poisson(lam0, shape)  # only vacuum
        draws_real.append(column_log_likelihood_ratios(real, den, centres, lam0)[0])
        draws_fake.append(column_log_likelihood_ratios(fake, den, centres, lam0)[0])
    assert np.mean(draws_real) > 0 > np.mean(draws_fake)
    assert np.mean(draws_real) == pytest.approx(_expected_llr(lam1, lam1, lam0), abs=0.004)
    assert np.mean(draws_fake) == pytest.approx(_expected_llr(lam0, lam1, lam0), abs=0.004)
    assert (LLR_REAL, LLR_SPURIOUS) == (0.005, -0.006)


def test_llr_exact_value_on_a_fixed_region():
    y = np.zeros((50, 50))
    y[25, 25] = 3  # the region (r = 0.7 A = 11.5 px) holds this pixel and zeros
    den = np.full((50, 50), 0.5)
    (llr,) = column_log_likelihood_ratios(y, den, np.array([[25.0, 25.0]]), 0.45,
                                          pixel_size_pm=6.1)
    n = sum(1 for dy in range(-12, 13) for dx in range(-12, 13) if dy * dy + dx * dx <= (70 / 6.1) ** 2)
    assert llr == pytest.approx(3 / n * np.log(0.5 / 0.45) - 0.05, rel=1e-9)


def test_map_paints_the_right_values_in_the_right_places():
    centres = np.array([[20.0, 20.0], [60.0, 70.0]])
    lmap = likelihood_map((100, 100), centres, np.array([0.01, -0.02]), radius_a=0.3)
    r = 0.3 / 0.061
    assert lmap.dtype == np.float32 and lmap.shape == (100, 100)
    assert lmap[20, 20] == pytest.approx(0.01) and lmap[60, 70] == pytest.approx(-0.02)
    assert lmap[20, 20 + int(r)] == pytest.approx(0.01) and np.isnan(lmap[20, 20 + int(r) + 1])
    assert np.isnan(lmap[0, 0]) and np.isnan(lmap[40, 40])
    assert (~np.isnan(lmap)).sum() == 2 * (~np.isnan(lmap[:50, :50])).sum()
    with pytest.raises(ValueError, match="2 columns but 1"):
        likelihood_map((100, 100), centres, np.array([0.0]))


def test_vacuum_found_in_a_particle_frame_and_missing_in_a_crystal():
    ph = pt_on_ceo2_phantom((384, 384), particle_radius_a=5.0, seed=1)
    mask = vacuum_mask(ph.image)
    # the vacuum is the top of the frame, away from the particle
    assert mask[:40].mean() > 0.9 and mask[300:].mean() < 0.05
    noisy = np.random.default_rng(0).poisson(ph.image)
    assert estimate_vacuum_level(noisy, ph.image) == pytest.approx(0.45, abs=0.02)
    from napari_sbd.sample_data import clean_frame

    crystal = np.tile(clean_frame()[0][400:], (3, 1))  # the simulated CeO2 support only
    with pytest.raises(VacuumNotFound, match="give the vacuum level"):
        vacuum_mask(crystal)


def test_real_and_missing_columns_of_a_phantom():
    ph = pt_on_ceo2_phantom((384, 384), seed=2)
    rng = np.random.default_rng(5)
    llr_real, llr_fake = [], []
    fake_centres = np.array([[40.0, 60.0], [50.0, 300.0]])  # in the vacuum
    den = ph.image.copy()
    from napari_sbd.core.phantom import gaussian_columns

    den_fake = gaussian_columns(den.shape, fake_centres, 7.0, 0.2, den)
    for _ in range(20):
        noisy = rng.poisson(ph.image)
        llr_real.append(column_log_likelihood_ratios(noisy, den, ph.columns[ph.is_particle], 0.45))
        llr_fake.append(column_log_likelihood_ratios(noisy, den_fake, fake_centres, 0.45))
    assert np.median(np.concatenate(llr_real)) > LLR_REAL
    assert np.median(np.concatenate(llr_fake)) < LLR_SPURIOUS


@pytest.mark.parametrize(
    ("raw", "match"),
    [(-np.ones((64, 64)), "negative"), (np.full((64, 64), 0.37), "not integer counts"),
     (np.full((64, 64), np.nan), "NaN")],
)
def test_not_counts_is_an_error(raw, match):
    with pytest.raises(ValueError, match=match):
        column_log_likelihood_ratios(raw, np.ones((64, 64)), np.array([[30.0, 30.0]]), 0.45)


def test_shape_mismatch_and_bad_vacuum():
    with pytest.raises(ValueError, match="same"):
        column_log_likelihood_ratios(np.zeros((10, 10)), np.zeros((12, 10)), np.zeros((0, 2)), 0.45)
    with pytest.raises(ValueError, match="positive"):
        column_log_likelihood_ratios(np.zeros((10, 10)), np.zeros((10, 10)), np.zeros((0, 2)), 0.0)


def test_llr_classes_use_the_papers_thresholds():
    from napari_sbd.core.likelihood import llr_classes

    assert llr_classes(np.array([0.005, 0.02, -0.006, -0.1, 0.0, 0.0049, np.nan])) == (2, 2, 3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pixel_size_pm": 0.0}, "pixel_size_pm must be a positive"),
    ({"pixel_size_pm": float("nan")}, "pixel_size_pm must be a positive"),
    ({"radius_a": 1e4}, "larger than"),
    ({"radius_a": -1.0}, "radius_a must be a positive"),
])
def test_llr_geometry_is_checked(kwargs, message):
    from napari_sbd.core.likelihood import column_log_likelihood_ratios, likelihood_map

    y = np.random.default_rng(0).poisson(0.45, (64, 64)).astype(np.float32)
    den = np.full((64, 64), 0.45, np.float32)
    cols = np.array([[32.0, 32.0]])
    with pytest.raises(ValueError, match=message):
        column_log_likelihood_ratios(y, den, cols, 0.45, **kwargs)
    with pytest.raises(ValueError, match=message):
        likelihood_map((64, 64), cols, np.zeros(1), **kwargs)


def test_llr_refuses_a_denoised_frame_that_is_not_counts():
    from napari_sbd.core.likelihood import column_log_likelihood_ratios

    y = np.random.default_rng(0).poisson(0.45, (64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="positive mean"):
        column_log_likelihood_ratios(y, -np.full((64, 64), 0.45, np.float32),
                                     np.array([[32.0, 32.0]]), 0.45)


def test_detect_columns_on_an_empty_frame_is_a_clear_error():
    from napari_sbd.core.columns import detect_columns

    for shape in ((0, 0), (3, 50)):
        with pytest.raises(ValueError, match="too small"):
            detect_columns(np.zeros(shape, np.float32))
