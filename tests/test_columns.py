"""core.columns: detection on known lattices and on the reference images; metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial import cKDTree
from skimage.transform import rescale

from napari_sbd.core.columns import (
    detect_columns,
    recovery_metrics,
    structure_recovery,
    surface_mask,
)
from napari_sbd.core.phantom import gaussian_columns, pt_on_ceo2_phantom

from .conftest import reference_images


def test_finds_a_lattice_of_gaussians_with_subpixel_accuracy():
    rng = np.random.default_rng(0)
    grid = np.mgrid[40:360:40, 40:360:40].reshape(2, -1).T.astype(float)
    truth = grid + rng.uniform(-0.5, 0.5, grid.shape)  # sub-pixel centres
    img = gaussian_columns((400, 400), truth, sigma_px=6.0, amplitudes=0.2, background=0.45)
    cols = detect_columns(img, pixel_size_pm=6.1)
    assert len(cols) == len(truth)
    d, _ = cKDTree(cols.centres).query(truth)
    assert d.max() < 0.15  # pixels
    np.testing.assert_allclose(cols.peak, 0.65, atol=0.01)
    assert np.all((cols.sigma_a > 0.2) & (cols.sigma_a < 0.7))
    top = cols.subset(cols.centres[:, 0] < 180)  # a region of interest keeps every field aligned
    assert len(top) == np.sum(truth[:, 0] < 180)
    np.testing.assert_array_equal(top.peak, cols.peak[cols.centres[:, 0] < 180])
    assert top.params == cols.params and top.pixel_size_pm == 6.1


@pytest.mark.parametrize("amplitude", [0.15, -0.15], ids=["bright", "dark"])
def test_bright_or_dark_columns_are_recognised(amplitude):
    truth = np.mgrid[40:200:40, 40:200:40].reshape(2, -1).T.astype(float)
    img = gaussian_columns((240, 240), truth, 6.0, amplitude, 0.45)
    found = detect_columns(img)
    kind = "bright" if amplitude > 0 else "dark"
    assert found.params["polarity"] == kind
    assert recovery_metrics(truth, found.centres, match_distance_a=0.1).f1 == 1.0
    assert np.all(found.contrast > 0.1)
    # forced to the wrong polarity it finds the gaps between the columns, never the columns
    other = detect_columns(img, polarity="dark" if amplitude > 0 else "bright")
    assert recovery_metrics(truth, other.centres, match_distance_a=0.5).matched == 0


def test_phantom_particle_and_support_columns():
    ph = pt_on_ceo2_phantom((512, 512), seed=3)
    cols = detect_columns(ph.image)
    h, w = ph.image.shape
    edge = 2.0 / 0.061 + 2  # the default border exclusion, 2 A, in pixels, plus a margin
    inner = ph.columns[(ph.columns.min(axis=1) > edge) & (ph.columns[:, 0] < h - edge)
                       & (ph.columns[:, 1] < w - edge)]
    m = recovery_metrics(inner, cols.centres, match_distance_a=0.2)
    assert m.recall == 1.0
    assert m.precision > 0.95  # only columns cut by the frame edge are extra


def test_reference_images_columns_stable_and_none_in_vacuum():
    counts = []
    for clean in reference_images():
        img = rescale(clean, 0.8, order=1, anti_aliasing=False)  # 4.88 -> 6.1 pm
        cols = detect_columns(img, pixel_size_pm=6.1)
        counts.append(len(cols))
        # the top 150 rows (about 9 A) are vacuum in all four images
        assert not np.any(cols.centres[:, 0] < 150)
    assert min(counts) > 100 and max(counts) - min(counts) <= 5


def test_vacuum_floor_drops_texture_columns_and_keeps_real_ones():
    from scipy.ndimage import gaussian_filter

    # a denoiser's leftover in the vacuum: a smooth random texture at the column scale
    rng = np.random.default_rng(4)
    real = np.mgrid[300:480:40, 100:420:40].reshape(2, -1).T.astype(float)
    img = gaussian_columns((512, 512), real, 6.0, 0.12, 0.45)
    texture = gaussian_filter(rng.standard_normal(img.shape), 5.0)
    img += 0.012 * texture / texture.std()
    vacuum = np.zeros(img.shape, bool)
    vacuum[:250] = True
    # a permissive relative threshold, so that only the floor stands between texture and columns
    plain = detect_columns(img, vacuum_floor=None, threshold=0.25)
    floored = detect_columns(img, vacuum=vacuum, threshold=0.25)
    assert np.sum(plain.centres[:, 0] < 250) >= 5  # texture passes without the floor
    assert np.sum(floored.centres[:, 0] < 250) <= 1
    assert recovery_metrics(real, floored.centres, match_distance_a=0.2).recall == 1.0
    assert floored.params["contrast_threshold"] > 0.03
    with pytest.raises(ValueError, match="vacuum mask has shape"):
        detect_columns(img, vacuum=vacuum[:10])


def test_surface_mask_on_a_hexagon_of_columns():
    pts = np.array([(r, c) for r in range(0, 50, 10) for c in range(0, 50, 10)], float)
    surface = surface_mask(pts)
    # a 5x5 square grid: the 16 boundary points are surface, the 9 inside are bulk
    assert surface.sum() == 16
    assert not surface[(pts[:, 0] == 20) & (pts[:, 1] == 20)].any()


def test_recovery_metrics_on_hand_made_sets():
    a = np.array([[0, 0], [0, 40], [40, 0], [40, 40]], float)
    exact = recovery_metrics(a, a + 1.0)
    assert (exact.precision, exact.recall, exact.f1, exact.jaccard) == (1, 1, 1, 1)
    extra = recovery_metrics(a, np.vstack([a, [[80, 80]]]))
    assert extra.precision == pytest.approx(0.8) and extra.recall == 1.0
    assert extra.jaccard == pytest.approx(0.8) and extra.f1 == pytest.approx(8 / 9)
    missing = recovery_metrics(a, a[:3])
    assert missing.recall == pytest.approx(0.75) and missing.jaccard == pytest.approx(0.75)
    far = recovery_metrics(a, a + 20.0, match_distance_a=0.5)  # 20 px = 1.2 A: no match
    assert far.matched == 0 and far.f1 == 0.0
    assert recovery_metrics(np.zeros((0, 2)), np.zeros((0, 2))).jaccard == 1.0


def test_structure_recovery_splits_surface_and_bulk():
    a = np.array([(r, c) for r in range(0, 50, 10) for c in range(0, 50, 10)], float)
    # a bulk column lost in denoising: bulk recall drops, the surface is intact
    lost = structure_recovery(a, a[~((a[:, 0] == 20) & (a[:, 1] == 20))])
    assert lost["bulk"].recall == pytest.approx(8 / 9) and lost["bulk"].precision == 1.0
    assert lost["surface"].f1 == 1.0 and lost["surface"].n_reference == 16
    # a spurious adatom above the top facet is a surface false positive
    extra = structure_recovery(a, np.vstack([a, [[-10, 20]]]))
    assert extra["surface"].precision < 1.0 and extra["surface"].recall < 1.0
    assert extra["surface"].n_detected + extra["bulk"].n_detected == 26


def test_vacuum_floor_on_the_bundled_model_keeps_the_particle_and_drops_vacuum_texture():
    # the real case: the sample's clean abTEM frame, one Poisson draw, the bundled model
    from napari_sbd.core.inference import load_model
    from napari_sbd.core.likelihood import vacuum_mask
    from napari_sbd.sample_data import clean_frame

    clean, info = clean_frame()
    px = info["pixel_size_pm"]
    noisy = np.random.default_rng(0).poisson(clean).astype(np.float32)
    den = load_model("default", device="cpu").denoise(noisy)
    truth = detect_columns(clean, px)
    vac = vacuum_mask(clean, px)  # where the true vacuum is
    in_vac = lambda c: vac[tuple(np.round(c.centres).astype(int).T)].sum()  # noqa: E731
    plain = detect_columns(den, px, vacuum_floor=None)
    floored = detect_columns(den, px)
    assert in_vac(truth) == 0
    assert in_vac(floored) <= in_vac(plain) and in_vac(floored) <= 1
    assert floored.params["vacuum_texture"] is not None
    # the particle's columns are still found: no loss of recall for the gain in precision
    rec = lambda c: recovery_metrics(truth.centres, c.centres, match_distance_a=0.5, pixel_size_pm=px)  # noqa: E731
    assert rec(floored).recall >= max(0.95, rec(plain).recall - 0.02)
    assert rec(floored).precision >= rec(plain).precision


def _lattice(noise: float = 0.0, seed: int = 0, shape=(320, 320), spacing=32.0):
    """A square lattice of Gaussian columns on a flat background, with optional pixel noise."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[spacing:shape[0] - spacing / 2:spacing,
                    spacing:shape[1] - spacing / 2:spacing].reshape(2, -1).T
    truth = grid + rng.uniform(-0.5, 0.5, grid.shape)
    img = gaussian_columns(shape, truth, 5.0, 0.2, 0.45)
    return truth, img + noise * rng.standard_normal(shape)


def test_units_do_not_matter_counts_normalised_and_detector_units_agree():
    truth, img = _lattice(noise=0.01)
    found = [detect_columns(img), detect_columns((img - img.mean()) / img.std()),
             detect_columns(img * 250.0 + 1200.0)]  # detector units: gain and offset
    for cols in found:  # every column, the outer ring (a spacing from the edge) included
        m = recovery_metrics(truth, cols.centres, match_distance_a=0.1)
        assert m.recall == 1.0 and m.precision == 1.0
    np.testing.assert_allclose(found[1].centres, found[0].centres, atol=1e-6)
    np.testing.assert_allclose(found[2].centres, found[0].centres, atol=1e-6)


def test_the_spacing_is_read_from_the_frame_and_a_given_one_agrees():
    _, img = _lattice(spacing=32.0)
    auto = detect_columns(img, pixel_size_pm=10.0)
    assert auto.params["spacing_a"] == pytest.approx(3.2, abs=0.1)  # 32 px x 10 pm
    given = detect_columns(img, pixel_size_pm=10.0, spacing_a=3.2)
    np.testing.assert_allclose(given.centres, auto.centres, atol=1e-6)
    # the pixel size only converts: the same image at another calibration finds the same columns
    other = detect_columns(img, pixel_size_pm=40.0)
    np.testing.assert_allclose(other.centres, auto.centres, atol=1e-6)
    assert other.params["spacing_a"] == pytest.approx(4 * auto.params["spacing_a"])


def test_no_vacuum_is_needed():
    truth, img = _lattice(noise=0.01, shape=(384, 384))  # lattice edge to edge
    for floor in (4.0, None):  # the vacuum floor is a refinement, never a requirement
        cols = detect_columns(img, vacuum_floor=floor)
        m = recovery_metrics(truth, cols.centres, match_distance_a=0.1)
        assert m.recall == 1.0 and m.precision == 1.0


def test_position_errors_are_the_size_of_the_real_errors():
    errors, reported = [], []
    for seed in range(4):
        truth, img = _lattice(noise=0.03, seed=seed)
        cols = detect_columns(img, pixel_size_pm=10.0)
        d, i = cKDTree(cols.centres).query(truth)
        errors.append(d * 10.0)  # pm
        reported.append(cols.position_error_pm[i])
    errors, reported = np.concatenate(errors), np.concatenate(reported)
    assert np.all(np.isfinite(reported)) and np.median(errors) < 10  # sub-pixel at 10 pm/px
    # the 2-D error's median is about 1.18 x the per-axis standard error (Rayleigh)
    ratio = np.median(errors) / (1.18 * np.median(reported))
    assert 0.5 < ratio < 2.0
    # the integrated intensity is the Gaussian's: 2 pi A sigma^2
    truth, img = _lattice()
    cols = detect_columns(img)
    np.testing.assert_allclose(cols.intensity, 2 * np.pi * 0.2 * 5.0**2, rtol=1e-3)


@pytest.mark.parametrize("frame", ["noise", "uniform", "smooth"])
def test_a_frame_without_a_lattice_is_a_clear_message(frame):
    from napari_sbd.core.columns import LatticeNotFound

    rng = np.random.default_rng(1)
    img = {"noise": rng.poisson(0.45, (256, 256)).astype(float),
           "uniform": np.full((256, 256), 0.45),
           "smooth": 0.45 + 0.01 * rng.standard_normal((256, 256))}[frame]
    with pytest.raises(LatticeNotFound, match=r"no atomic lattice|uniform"):
        detect_columns(img)


def test_nothing_above_the_threshold_is_an_empty_result_not_an_error():
    from napari_sbd.core.columns import fit_gaussians

    assert len(fit_gaussians(np.zeros((20, 20)), np.zeros((0, 2)), 2.0, 3)["centres"]) == 0
    rng = np.random.default_rng(2)
    flat = 0.45 + 1e-3 * rng.standard_normal((128, 128))
    cols = detect_columns(flat, spacing_a=2.4, min_contrast=1.0)  # given spacing: no lattice test
    assert len(cols) == 0 and not cols.params["contrast_threshold"] < 1.0  # (NaN: no candidate)


def _hexagonal(d: float, n: int = 8) -> np.ndarray:
    """Points of an n x n close-packed (hexagonal) lattice of spacing d."""
    return np.array([(r * d * np.sqrt(3) / 2, c * d + (r % 2) * d / 2)
                     for r in range(n) for c in range(n)]) + 2 * d


def test_hysteresis_keeps_weak_columns_inside_the_lattice_and_nothing_else():
    from napari_sbd.core.columns import _hysteresis

    d = 10.0
    lattice = _hexagonal(d)
    inner = np.flatnonzero(np.all((lattice > 3 * d) & (lattice < 7 * d), axis=1))[:3]
    beyond = lattice[lattice[:, 0].argmin()] - [d * np.sqrt(3) / 2, d / 2]  # next row up: a site
    points = np.vstack([lattice, beyond, lattice[0] + [0, d / 2],  # between two columns
                        [200.0, 200.0], lattice[inner[0]] + [0.3, 0]])  # far away; a weak twin
    score = np.full(len(points), 10.0)
    score[inner[:2]] = 3.0      # weak columns inside: kept
    score[len(lattice):] = 3.0  # the weak site beyond the edge, the gap, the loner, the twin
    score[-1] = 2.5             # the twin of a weak column: the stronger of the two
    score[inner[2]] = 1.0       # under the weak floor: dropped whatever its place
    keep = _hysteresis(points, score, strong=5.0, weak=2.0, spacing=d)
    assert keep[inner[:2]].all() and not keep[inner[2]]
    assert keep[:len(lattice)].sum() == len(lattice) - 1
    assert not keep[len(lattice):].any()
    assert not _hysteresis(points, np.full(len(points), 3.0), 5.0, 2.0, d).any()  # no seed


def test_pixel_noise_is_the_noise_even_on_a_finely_sampled_lattice():
    from napari_sbd.core.columns import pixel_noise

    rng = np.random.default_rng(1)
    truth = _hexagonal(4.0, n=40)  # columns 4 px apart, 0.6 px wide: as fine as the noise
    lattice = gaussian_columns((180, 180), truth, 0.6, 1.0, 0.0).astype(np.float64)
    noise = rng.standard_normal(lattice.shape)
    assert pixel_noise(noise) == pytest.approx(1.0, rel=0.02)
    assert pixel_noise(3 * noise + 100) == pytest.approx(3 * pixel_noise(noise))
    assert pixel_noise(lattice + noise) == pytest.approx(1.0, rel=0.02)


def test_dark_columns_in_raw_low_counts_are_dark():
    # Poisson noise at a few counts is skewed towards bright: on the raw counts it used to
    # outvote dark columns (HRTEM at 20 pm, 10 counts per pixel)
    rng = np.random.default_rng(3)
    truth = _hexagonal(7.5)
    dark = gaussian_columns((90, 90), truth, 1.1, -6.0, 10.0)
    halo = gaussian_columns((90, 90), truth, 2.2, 1.3, 0.0)
    counts = rng.poisson(np.clip(dark + halo, 0, None)).astype(np.float64)
    cols = detect_columns(counts, pixel_size_pm=20.0, spacing_a=1.5)
    assert cols.params["polarity"] == "dark"
    assert detect_columns(counts + 0.5, pixel_size_pm=20.0, spacing_a=1.5).params["polarity"] in (
        "dark", "bright")  # not counts: the plain test, whatever it says


def test_raw_counts_with_a_vacuum_find_the_columns_and_nothing_in_the_vacuum():
    # a raw frame's vacuum holds only pixel noise: its floor keeps the vacuum empty, and is
    # relaxed (hysteresis) only where the lattice has a column
    rng = np.random.default_rng(5)
    truth = _hexagonal(12.0, n=10)[:, ::-1] + [0, 140]  # the lattice on the right, vacuum left
    clean = gaussian_columns((150, 280), truth, 1.5, 8.0, 4.0)
    counts = rng.poisson(clean).astype(np.float64)
    vacuum = np.zeros(counts.shape, bool)
    vacuum[:, :110] = True
    inside = truth[(truth.min(axis=1) > 12) & (truth[:, 0] < 138) & (truth[:, 1] < 268)]
    for threshold in (0.4, 0.3):  # the default, and one where the noise floors decide
        cols = detect_columns(counts, pixel_size_pm=20.0, vacuum=vacuum, threshold=threshold)
        assert not np.any(cols.centres[:, 1] < 120)  # the vacuum: 0-120 px
        rec = recovery_metrics(inside, cols.centres, match_distance_a=0.5, pixel_size_pm=20.0)
        assert rec.recall >= 0.95, threshold
    assert cols.params["weak_contrast_threshold"] < 0.75 * cols.params["contrast_threshold"]


def test_raw_counts_are_told_from_detector_units():
    from napari_sbd.core.columns import is_poisson_counts, pixel_noise

    rng = np.random.default_rng(2)
    for dose in (0.1, 0.45, 1.0, 20.0):
        assert is_poisson_counts(rng.poisson(dose, (256, 256)).astype(np.float64))
    assert pixel_noise(rng.poisson(0.1, (256, 256)).astype(np.float64)) == 0.0  # rounds away
    # a finely sampled lattice inflates the detail, and stays counts: HRTEM-like dark
    # columns 3.75 px apart, 0.56 px wide, with a halo, at 200 counts (as in atomap_compare)
    truth = _hexagonal(3.75, n=40)
    dog = (0.35 * gaussian_columns((150, 150), truth, 1.12, 1.0, 0.0)
           - gaussian_columns((150, 150), truth, 0.56, 1.0, 0.0))
    counts = rng.poisson(np.clip(200 * (1 + 0.6 * dog), 0, None)).astype(np.float64)
    assert pixel_noise(counts) > 1.1 * np.sqrt(counts.mean()) and is_poisson_counts(counts)
    cols = detect_columns(counts, pixel_size_pm=40.0, spacing_a=1.5)
    assert cols.params["units"] == "anscombe" and cols.params["polarity"] == "dark"
    inner = lambda p: p[(p.min(axis=1) > 8) & (p.max(axis=1) < 142)]  # noqa: E731
    assert recovery_metrics(inner(truth), inner(cols.centres), match_distance_a=0.5,
                            pixel_size_pm=40.0).f1 >= 0.97
    # integers that are not one count per electron, and non-integers, are detector units
    assert not is_poisson_counts(8 * rng.poisson(2.0, (256, 256)).astype(np.float64))  # gain 8
    assert not is_poisson_counts(100 + rng.poisson(2.0, (256, 256)).astype(np.float64))  # offset
    assert not is_poisson_counts(rng.poisson(2.0, (256, 256)) / 8.0)
    # an absolute floor is in the frame's units: no transform then
    floored = detect_columns(counts, pixel_size_pm=40.0, spacing_a=1.5, min_contrast=1.0)
    assert floored.params["units"] == "frame"


@pytest.mark.parametrize("kind", ["complex", "bool"])
def test_complex_or_boolean_frames_are_refused_by_name(kind):
    from napari_sbd.core.likelihood import column_log_likelihood_ratios
    from napari_sbd.core.metrics import psnr

    rng = np.random.default_rng(0)
    real = rng.poisson(2.0, (64, 64)).astype(np.float64)
    bad = real * (1 + 1j) if kind == "complex" else real > 2
    word = "complex-valued" if kind == "complex" else "boolean"
    calls = [lambda: detect_columns(bad), lambda: psnr(real, bad),
             lambda: column_log_likelihood_ratios(bad, real, np.array([[32.0, 32.0]]), 0.45)]
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ComplexWarning on the way: refused first
            with pytest.raises(ValueError, match=word):
                call()
