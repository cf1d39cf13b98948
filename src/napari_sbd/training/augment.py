"""Random training patches: rotation, rescaling, flips, crop; then Poisson noise.

The papers' recipe (ICLR C.4, Microsc. Microanal. "CNN Training and Testing"):
flips, rotations in [-45, 45] degrees and rescaling by 0.955-1.055, so that the
network does not overfit the orientation and scale of the simulations (ICLR
Fig. 12). The patch is sampled directly through the rotated and scaled grid
(bilinear), centred where the whole rotated patch lies inside the image: a
valid crop, never padding.

Training over a pixel-size envelope (``napari-sbd-train --pixel-size-range``)
widens the same rescaling: the scale is then drawn log-uniformly, so that each
octave of pixel size gets the same share of patches. HRTEM images are band-
limited by the optics far below the Nyquist frequency of 5-10 pm pixels, so
bilinear sampling of the clean image at a coarser or finer grid is faithful
(no anti-aliasing filter is needed); the noise is drawn after resampling, at
the patch's own pixel size, as a detector would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

__all__ = ["Augmentation", "centre_resample", "max_patch_size", "random_patch"]


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random geometric augmentation."""

    max_angle_deg: float = 45.0
    scale_range: tuple[float, float] = (0.955, 1.055)
    flips: bool = True
    log_scale: bool = False  # draw the scale log-uniformly (pixel-size envelopes)

    def draw_scale(self, rng: np.random.Generator) -> float:
        """One random scale (output pixels per input pixel) from ``scale_range``."""
        lo, hi = self.scale_range
        if self.log_scale:
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return float(rng.uniform(lo, hi))


def _half_extent(size: int, angle_rad: float, scale: float) -> float:
    return (size - 1) / 2 * (abs(np.cos(angle_rad)) + abs(np.sin(angle_rad))) / scale


def max_patch_size(shape: tuple[int, int], aug: Augmentation) -> int:
    """Largest patch side that fits in ``shape`` at every allowed angle and scale."""
    worst = np.deg2rad(min(aug.max_angle_deg, 45.0))
    factor = (abs(np.cos(worst)) + abs(np.sin(worst))) / min(aug.scale_range)
    return int(np.floor((min(shape) - 2) / factor)) + 1


def random_patch(
    image: np.ndarray, size: int, rng: np.random.Generator, aug: Augmentation = Augmentation()
) -> np.ndarray:
    """Sample one augmented ``size`` x ``size`` patch of a clean image.

    Parameters
    ----------
    image : numpy.ndarray
        Clean (H, W) image.
    size : int
        Patch side in pixels.
    rng : numpy.random.Generator
        Source of randomness.
    aug : Augmentation
        Ranges of angle, scale and flips.

    Returns
    -------
    numpy.ndarray
        float32 patch.
    """
    h, w = image.shape
    angle = np.deg2rad(rng.uniform(-aug.max_angle_deg, aug.max_angle_deg))
    scale = aug.draw_scale(rng)
    e = _half_extent(size, angle, scale)
    if 2 * e > min(h, w) - 1:
        raise ValueError(f"patch {size} px does not fit in a {h}x{w} image at this angle/scale")
    cy = rng.uniform(e, h - 1 - e)
    cx = rng.uniform(e, w - 1 - e)
    u = np.arange(size) - (size - 1) / 2
    uu, vv = np.meshgrid(u, u, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    rows = cy + (c * uu - s * vv) / scale
    cols = cx + (s * uu + c * vv) / scale
    patch = map_coordinates(image, [rows, cols], order=1, mode="nearest", prefilter=False)
    if aug.flips:
        if rng.random() < 0.5:
            patch = patch[::-1]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
    return np.ascontiguousarray(patch, dtype=np.float32)


def centre_resample(image: np.ndarray, size: int, scale: float, multiple: int = 1) -> np.ndarray:
    """Return the centre of ``image`` resampled by ``scale`` (no rotation): validation at other pixel sizes.

    Parameters
    ----------
    image : numpy.ndarray
        Clean (H, W) image.
    size : int
        Wanted side in output pixels; reduced to what the image holds.
    scale : float
        Output pixels per input pixel (> 1: finer pixels, < 1: coarser).
    multiple : int
        The side is rounded down to a multiple of this (the network's grid).

    Returns
    -------
    numpy.ndarray
        float32 (n, n) crop with ``n <= size``.
    """
    h, w = image.shape
    n = min(size, int(np.floor((min(h, w) - 2) * scale)) + 1) // multiple * multiple
    if n < multiple or n < 1:
        raise ValueError(f"a {h}x{w} image is too small to resample by {scale:g}")
    u = (np.arange(n) - (n - 1) / 2) / scale
    rows, cols = np.meshgrid((h - 1) / 2 + u, (w - 1) / 2 + u, indexing="ij")
    out = map_coordinates(image, [rows, cols], order=1, mode="nearest", prefilter=False)
    return np.ascontiguousarray(out, dtype=np.float32)
