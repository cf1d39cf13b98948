"""Image quality in the papers' convention.

Both images in counts per pixel, peak value (data range) 1, no rescaling. At
0.45 counts/pixel the clean images lie within about 0.3-0.65 counts, so a
range of 1 is what the authors' code used (it multiplies by 255 and clamps to
[0, 255] with a range of 255). The papers' raw noisy frame scores 3.56 dB: that
is the *unclipped* noisy image (clipping it to [0, 1] first gives about
6.3 dB); clipping changes nothing for denoised outputs. Hence ``clip=False``
by default; ``clip=True`` reproduces the authors' code exactly.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from napari_sbd.core.inputs import real_values

__all__ = ["psnr", "ssim"]


def _pair(clean: np.ndarray, estimate: np.ndarray, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = real_values(clean, "the clean image"), real_values(estimate, "the estimate")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: clean {a.shape}, estimate {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (T, H, W) images, got shape {a.shape}")
    if clip:
        a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
    return a, b


def psnr(
    clean: np.ndarray, estimate: np.ndarray, *, data_range: float = 1.0, clip: bool = False
) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)``.

    Parameters
    ----------
    clean, estimate : numpy.ndarray
        (H, W) images, or (T, H, W) stacks compared frame by frame.
    data_range : float
        Peak value (1 count in the papers' convention).
    clip : bool
        Clip both to [0, 1] first (the authors' code; matters only for raw frames).

    Returns
    -------
    float or numpy.ndarray
        PSNR of the image, or one per frame.
    """
    a, b = _pair(clean, estimate, clip)
    mse = np.mean((a - b) ** 2, axis=(-2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(data_range**2 / mse)
    return float(out) if np.ndim(out) == 0 else out


def ssim(
    clean: np.ndarray, estimate: np.ndarray, *, data_range: float = 1.0, clip: bool = False
) -> float | np.ndarray:
    """Structural similarity (scikit-image defaults: 7x7 window), data range 1.

    Parameters
    ----------
    clean, estimate : numpy.ndarray
        (H, W) images, or (T, H, W) stacks compared frame by frame.
    data_range : float
        Dynamic range used in SSIM's stabilising constants (1 count).
    clip : bool
        Clip both to [0, 1] first.

    Returns
    -------
    float or numpy.ndarray
        SSIM of the image, or one per frame.
    """
    a, b = _pair(clean, estimate, clip)
    if a.ndim == 2:
        return float(structural_similarity(a, b, data_range=data_range))
    return np.array([structural_similarity(x, y, data_range=data_range) for x, y in zip(a, b)])
