"""The scale and the polarity of atomic columns, read from the frame itself.

:func:`column_spacing` finds the distance between neighbouring columns from
the frame's autocorrelation (the strongest off-centre peaks of a lattice are
its nearest-neighbour vectors); :func:`column_polarity` decides whether the
columns are brighter or darker than their surroundings (HAADF and white-contrast
HRTEM: bright; black-contrast HRTEM: dark) from the skew of the frame's detail.
Both work in any intensity units: counts, normalised or detector units.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["LatticeNotFound", "column_polarity", "column_spacing", "counts_polarity", "high_pass"]

# An autocorrelation peak this strong (relative to the zero-lag value) is a lattice;
# a frame of pure noise gives about 1/sqrt(pixels), a few percent at most.
MIN_LATTICE_STRENGTH = 0.15


class LatticeNotFound(ValueError):
    """The frame shows no periodic arrangement of columns."""


def wide_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a wide ``sigma_px``, computed on a block-averaged copy.

    A blur that wide has nothing finer than a few pixels left, so it is taken
    on blocks of about sigma/4 pixels and interpolated back (linear): the same
    result to a fraction of a percent of the image's range, tens of times faster
    than the direct 8-sigma-wide convolution.
    """
    from scipy.ndimage import map_coordinates

    img = np.asarray(image, dtype=np.float64)
    f = int(sigma_px // 4)
    if f < 2:
        return gaussian_filter(img, sigma_px, mode="nearest")
    h, w = img.shape
    pad = np.pad(img, ((0, -h % f), (0, -w % f)), mode="edge")
    small = pad.reshape(pad.shape[0] // f, f, pad.shape[1] // f, f).mean(axis=(1, 3))
    small = gaussian_filter(small, sigma_px / f, mode="nearest")
    # block centres sit at (f - 1) / 2 + f k: sample there, edges held
    rows = np.clip((np.arange(h) - (f - 1) / 2) / f, 0, small.shape[0] - 1)
    cols = np.clip((np.arange(w) - (f - 1) / 2) / f, 0, small.shape[1] - 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return map_coordinates(small, [rr, cc], order=1, mode="nearest")


def high_pass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Return ``image`` minus its Gaussian blur of ``sigma_px`` (slow variations removed)."""
    img = np.asarray(image, dtype=np.float64)
    return img - wide_blur(img, sigma_px)


def _autocorrelation(detail: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation (zero lag = 1) of a Hann-windowed image, centred.

    Zero-padded to twice the size (no wrap-around) and divided by the window's
    own autocorrelation, so a lattice's peaks keep their height at large lags.
    """
    from scipy import fft

    h, w = detail.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    a = (detail - detail.mean()) * win
    size = (fft.next_fast_len(2 * h, real=True), fft.next_fast_len(2 * w, real=True))
    acf = fft.irfft2(np.abs(fft.rfft2(a, s=size, workers=-1)) ** 2, s=size, workers=-1)
    norm = fft.irfft2(np.abs(fft.rfft2(win, s=size, workers=-1)) ** 2, s=size, workers=-1)
    acf = np.fft.fftshift(acf / np.maximum(norm, norm.max() * 1e-3))
    return acf / acf[size[0] // 2, size[1] // 2]


def column_spacing(image: np.ndarray) -> tuple[float, float]:
    """Return the nearest-neighbour column distance (pixels) and how periodic the frame is.

    The autocorrelation of the frame's detail (slow variations removed) has a
    central peak (one column's own shape) surrounded by peaks at the vectors
    between columns. The nearest of the strong peaks (at least a fifth of the
    strongest) is the nearest-neighbour distance; with several lattices in
    the frame (a particle on its support) it is the smallest one that shows.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) frame, any units.

    Returns
    -------
    spacing_px : float
        Nearest-neighbour distance between columns, pixels.
    strength : float
        Height of the strongest lattice peak relative to the zero-lag value,
        after a 1-pixel blur that takes most pixel noise out of it (1:
        perfectly periodic; noise: a few hundredths).

    Raises
    ------
    LatticeNotFound
        No lattice peak stands out (noise, vacuum, an amorphous frame).
    """
    from skimage.feature import peak_local_max

    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    # a light blur first: pixel noise (uncorrelated) would otherwise fill the zero lag
    acf = _autocorrelation(gaussian_filter(high_pass(img, max(min(h, w) / 16, 8.0)), 1.0))
    r_max = min(h, w) // 4  # at least four periods fit in the frame
    cy, cx = acf.shape[0] // 2, acf.shape[1] // 2
    sub = acf[cy - r_max:cy + r_max + 1, cx - r_max:cx + r_max + 1]
    yy, xx = np.mgrid[-r_max:r_max + 1, -r_max:r_max + 1]
    r = np.hypot(yy, xx)
    ri = r.astype(int).ravel()
    profile = np.bincount(ri, sub.ravel()) / np.bincount(ri)
    # the central peak ends at the first minimum of the radial profile
    r0 = next((i for i in range(1, len(profile) - 1)
               if profile[i] <= profile[i - 1] and profile[i] <= profile[i + 1]), len(profile))
    peaks = peak_local_max(np.where(r > max(r0, 1.5), sub, -np.inf), min_distance=2,
                           threshold_abs=0.0, exclude_border=False)
    values = sub[peaks[:, 0], peaks[:, 1]] if len(peaks) else np.zeros(0)
    strength = float(values.max()) if len(values) else 0.0
    if strength < MIN_LATTICE_STRENGTH:
        raise LatticeNotFound(
            f"no atomic lattice found in this frame (its autocorrelation peaks reach "
            f"{strength:.2f} of the zero-lag value, a lattice gives {MIN_LATTICE_STRENGTH} or "
            "more): if it holds columns, give their spacing (spacing_a, Angstrom)")
    strong = values >= 0.2 * strength
    return float(r[peaks[strong, 0], peaks[strong, 1]].min()), strength


def column_polarity(detail: np.ndarray) -> str:
    """Return "bright" or "dark": the sign of the columns' contrast in a high-passed frame.

    Columns are compact peaks on a smoother surrounding, so the pixel values
    of the textured part of the frame are skewed towards the columns' side.
    The vacuum and flat areas (the least textured half) are left out.
    """
    d = np.asarray(detail, dtype=np.float64)
    local = gaussian_filter(d * d, 4.0)
    textured = d[local >= np.median(local)]
    centred = textured - np.median(textured)
    skew = float(np.mean(centred**3)) / max(float(np.mean(centred**2)) ** 1.5, 1e-300)
    return "bright" if skew >= 0 else "dark"


def counts_polarity(counts: np.ndarray, spacing_px: float, smooth_px: float) -> str:
    """Return "bright" or "dark" for raw counts: :func:`column_polarity` after the Anscombe transform.

    Poisson noise is itself skewed towards bright (by 1/sqrt(counts)), enough
    to outvote dark columns at a few counts per pixel; the Anscombe transform
    makes it symmetric. The detail is the transformed frame high-passed at
    ``spacing_px`` and smoothed by ``smooth_px``.
    """
    from napari_sbd.core.baselines import anscombe

    detail = high_pass(anscombe(np.clip(counts, 0, None)), spacing_px)
    return column_polarity(gaussian_filter(detail, smooth_px, mode="nearest"))
