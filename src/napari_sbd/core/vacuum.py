"""The vacuum of a frame: where it is, and its level in counts.

The likelihood test needs the vacuum level lambda0, and column detection
uses the denoised vacuum's texture as a contrast floor: both find the vacuum
as the largest flat region of the denoised frame. Kept apart from columns and
likelihood so that neither imports the other for it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM

__all__ = ["VacuumNotFound", "estimate_vacuum_level", "vacuum_mask"]


class VacuumNotFound(ValueError):
    """No vacuum region large enough to estimate the vacuum level."""


def vacuum_mask(
    denoised: np.ndarray,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    *,
    window_a: float = 3.0,
    min_area_fraction: float = 0.03,
    min_contrast_ratio: float = 1.5,
) -> np.ndarray:
    """Return the vacuum: the largest flat region of the denoised frame.

    Vacuum is where the denoised frame is featureless. The local standard
    deviation over ``window_a`` splits the frame (Otsu's threshold on its
    logarithm) into flat and textured pixels; the flat ones must be at least
    ``min_contrast_ratio`` times smoother (medians) than the textured ones, and
    the largest connected flat region, which must cover ``min_area_fraction``
    of the frame, is the vacuum.

    Parameters
    ----------
    denoised : numpy.ndarray
        (H, W) denoised frame, counts.
    pixel_size_pm : float
        Pixel size, picometres.
    window_a : float
        Side of the local-statistics window, Angstrom (longer than the lattice
        periods, so that a crystal looks uniformly textured).
    min_area_fraction : float
        Minimum size of the vacuum region, as a fraction of the frame.
    min_contrast_ratio : float
        How much smoother the vacuum must be than the material.

    Returns
    -------
    numpy.ndarray
        (H, W) bool mask.

    Raises
    ------
    VacuumNotFound
        When no flat region is large enough.
    """
    from skimage.filters import threshold_otsu

    den = np.asarray(denoised, dtype=np.float64)
    size = max(3, round(window_a / (pixel_size_pm / 100.0)) | 1)
    mean = ndimage.uniform_filter(den, size, mode="nearest")
    var = ndimage.uniform_filter(den * den, size, mode="nearest") - mean**2
    log_std = np.log(np.sqrt(np.clip(var, 0, None)) + 1e-9)
    # two populations of local roughness, flat (vacuum) and textured (material),
    # split where they separate best (Otsu); the flat one must be clearly flatter
    try:
        cut = threshold_otsu(log_std)
    except ValueError:  # a constant frame: all vacuum
        return np.ones(den.shape, dtype=bool)
    flat = log_std < cut
    if flat.all() or not flat.any():
        raise VacuumNotFound(_NO_VACUUM)
    if np.median(log_std[~flat]) - np.median(log_std[flat]) < np.log(min_contrast_ratio):
        raise VacuumNotFound(_NO_VACUUM)
    flat = ndimage.binary_opening(flat, iterations=2)
    labels, n = ndimage.label(flat)
    if n == 0:
        raise VacuumNotFound(_NO_VACUUM)
    areas = ndimage.sum(flat, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(areas)) + 1
    if areas[best - 1] < min_area_fraction * den.size:
        raise VacuumNotFound(_NO_VACUUM)
    return labels == best


_NO_VACUUM = (
    "no vacuum region found in this frame (no flat area covering at least a few % of it); "
    "give the vacuum level explicitly (counts/pixel per frame, e.g. 0.45), measured on a frame "
    "that shows vacuum"
)


def estimate_vacuum_level(
    noisy: np.ndarray, denoised: np.ndarray, pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM
) -> float:
    """Mean raw counts per pixel over the vacuum region found in the denoised frame.

    Parameters
    ----------
    noisy : numpy.ndarray
        Raw counts (H, W).
    denoised : numpy.ndarray
        Denoised frame (H, W).
    pixel_size_pm : float
        Pixel size, picometres.

    Returns
    -------
    float
        lambda0, counts per pixel.
    """
    mask = vacuum_mask(denoised, pixel_size_pm)
    return float(np.asarray(noisy, dtype=np.float64)[mask].mean())
