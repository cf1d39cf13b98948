"""Classical denoisers the network is measured against (the papers' Table 1).

All take a noisy frame in counts and return float32 counts. Parameters are
tuned on simulated validation images by the benchmark scripts, never on the
test images. BM3D is optional (``pip install "napari-sbd[baselines]"``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM

__all__ = [
    "adaptive_wiener",
    "anscombe",
    "binned_vst_bm3d",
    "fourier_lowpass",
    "gaussian_blur",
    "inverse_anscombe_unbiased",
    "median_filter",
    "vst_bm3d",
    "vst_nlm",
]


def gaussian_blur(noisy: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of standard deviation ``sigma_px`` pixels (reflecting edges)."""
    return ndimage.gaussian_filter(np.asarray(noisy, dtype=np.float64), sigma_px,
                                   mode="reflect").astype(np.float32)


def median_filter(noisy: np.ndarray, size_px: int = 3) -> np.ndarray:
    """Median of a ``size_px`` square (the journal paper's Fig. 2c: 3x3).

    Useless at 0.45 counts/pixel (the median of Poisson(0.45) is 0); kept as the
    papers' reference point.
    """
    return ndimage.median_filter(np.asarray(noisy, dtype=np.float32), size=size_px, mode="reflect")


def fourier_lowpass(
    noisy: np.ndarray,
    cutoff_per_a: float = 1.35,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    order: int | None = None,
) -> np.ndarray:
    """Fourier low-pass at ``cutoff_per_a`` (1/A; the instrument's 1.35 1/A information limit).

    ``order=None`` is the ideal (hard) filter of the papers; an integer gives a
    Butterworth filter of that order, which rings much less.
    """
    y = np.asarray(noisy, dtype=np.float64)
    ky = np.fft.fftfreq(y.shape[0], pixel_size_pm / 100.0)
    kx = np.fft.rfftfreq(y.shape[1], pixel_size_pm / 100.0)
    k = np.hypot(ky[:, None], kx[None, :])
    if order is None:
        h = (k <= cutoff_per_a).astype(float)
    else:
        h = 1.0 / (1.0 + (k / cutoff_per_a) ** (2 * order))
    return np.fft.irfft2(np.fft.rfft2(y) * h, s=y.shape).astype(np.float32)


def adaptive_wiener(noisy: np.ndarray, window_px: int = 13) -> np.ndarray:
    """Adaptive (local mean and variance) Wiener filter of Lim (1990), as in the papers (window 13).

    ``out = m + max(v - n, 0) / v * (y - m)`` with the local mean m and variance
    v over the window and the noise power n = mean(v). Where v = 0 (a window of
    identical counts, common in the vacuum at 0.45 counts/pixel) the output is
    m; scipy.signal.wiener divides by zero there and returns NaN.
    """
    y = np.asarray(noisy, dtype=np.float64)
    w = int(window_px) | 1
    m = ndimage.uniform_filter(y, w, mode="reflect")
    v = np.maximum(ndimage.uniform_filter(y * y, w, mode="reflect") - m * m, 0.0)
    n = v.mean()
    gain = np.divide(np.maximum(v - n, 0.0), v, out=np.zeros_like(v), where=v > 0)
    return (m + gain * (y - m)).astype(np.float32)


def vst_nlm(noisy: np.ndarray, h: float = 2.0, patch_px: int = 11, distance_px: int = 13) -> np.ndarray:
    """Anscombe, non-local means, exact unbiased inverse.

    After the Anscombe transform at 0.45 counts/pixel the noise std is about
    0.66, not 1 (../shared/notes/baselines.md): it is estimated from the data
    rather than assumed, and ``h`` is in units of it.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    z = anscombe(noisy)
    sigma = float(estimate_sigma(z))
    d = denoise_nl_means(z, h=h * sigma, sigma=sigma, patch_size=patch_px, patch_distance=distance_px,
                         fast_mode=True)
    return np.clip(inverse_anscombe_unbiased(d), 0, None).astype(np.float32)


def anscombe(x: np.ndarray) -> np.ndarray:
    """Anscombe transform 2 sqrt(x + 3/8): Poisson counts -> noise of unit variance."""
    return 2.0 * np.sqrt(np.asarray(x, dtype=np.float64) + 3.0 / 8.0)


def inverse_anscombe_unbiased(d: np.ndarray) -> np.ndarray:
    """Exact unbiased inverse of the Anscombe transform (Makitalo & Foi, closed form).

    The algebraic inverse (d/2)^2 - 3/8 is biased at low counts and costs about
    10 dB here (../shared/notes/baselines.md).
    """
    d = np.maximum(np.asarray(d, dtype=np.float64), 0.8)  # the formula's domain
    s = np.sqrt(1.5)
    return 0.25 * d**2 + 0.25 * s / d - 11.0 / 8.0 / d**2 + 5.0 / 8.0 * s / d**3 - 1.0 / 8.0


# the bm3d package's compiled code can crash the process on images of a few of its 8-pixel
# blocks (seen with an 8 x 8 image): smaller inputs get an error instead
BM3D_MIN_SIDE = 16


def _bm3d(z: np.ndarray, sigma: float, hint: str = "") -> np.ndarray:
    if min(z.shape) < BM3D_MIN_SIDE:
        raise ValueError(f"BM3D needs an image of at least {BM3D_MIN_SIDE} x {BM3D_MIN_SIDE} "
                         f"pixels; this one is {z.shape[0]} x {z.shape[1]}{hint}")
    try:
        import bm3d
    except ImportError:
        raise ImportError('BM3D needs the bm3d package: pip install "napari-sbd[baselines]"') from None
    return np.asarray(bm3d.bm3d(z, sigma_psd=sigma), dtype=np.float64)


def vst_bm3d(noisy: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Anscombe, BM3D with noise level ``sigma``, exact unbiased inverse."""
    return np.clip(inverse_anscombe_unbiased(_bm3d(anscombe(noisy), sigma)), 0, None).astype(np.float32)


def binned_vst_bm3d(noisy: np.ndarray, factor: int = 12, sigma: float = 1.0) -> np.ndarray:
    """B x b binning, Anscombe, BM3D, unbiased inverse, cubic upsampling back.

    Binning sums counts (still Poisson, b^2 times the dose), which the VST and
    BM3D handle far better than 0.45 counts/pixel; the strongest classical
    method measured here (../shared/notes/baselines.md).

    Parameters
    ----------
    noisy : numpy.ndarray
        (H, W) counts.
    factor : int
        Bin size b in pixels.
    sigma : float
        BM3D noise level in the VST domain (1 = the nominal unit variance).

    Returns
    -------
    numpy.ndarray
        float32 (H, W) counts per pixel.
    """
    y = np.asarray(noisy, dtype=np.float64)
    h, w = y.shape
    b = int(factor)
    ph, pw = (-h) % b, (-w) % b
    yp = np.pad(y, ((0, ph), (0, pw)), mode="reflect")
    binned = yp.reshape(yp.shape[0] // b, b, yp.shape[1] // b, b).sum(axis=(1, 3))
    hint = (f" after {b} x {b} binning: use a bin factor of at most "
            f"{max(1, min(h, w) // BM3D_MIN_SIDE)} or a larger frame")
    est = inverse_anscombe_unbiased(_bm3d(anscombe(binned), sigma, hint)) / (b * b)
    # cubic upsampling on the bin-centre grid, then crop the padding
    up = ndimage.zoom(est, b, order=3, mode="nearest", grid_mode=True)
    return np.clip(up[:h, :w], 0, None).astype(np.float32)
