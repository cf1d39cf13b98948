"""A fast synthetic stand-in for an HRTEM frame of a Pt particle on CeO2.

Not a multislice simulation (see :mod:`napari_sbd.simulate` for that): atomic
columns are Gaussian bumps at known positions on the projected lattices of Pt
(fcc, [110]) and CeO2 (fluorite, [110]), over a vacuum level in counts. It
gives tests and the sample data a scene whose column centres are known
exactly, at the papers' scale (6.1 pm/pixel, 0.45 counts/pixel in vacuum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM

__all__ = ["Phantom", "gaussian_columns", "pt_on_ceo2_phantom"]

PT_A = 3.924  # Angstrom, fcc lattice constant
CEO2_A = 5.411  # Angstrom, fluorite lattice constant


@dataclass(frozen=True)
class Phantom:
    """A clean synthetic frame and the truth behind it.

    Attributes
    ----------
    image : numpy.ndarray
        float32 (H, W) expected counts per pixel.
    columns : numpy.ndarray
        (N, 2) float64 row/col centres of the columns, pixels.
    is_particle : numpy.ndarray
        (N,) bool: True for Pt particle columns, False for support columns.
    pixel_size_pm : float
        Pixel size.
    vacuum_level : float
        Counts per pixel in vacuum.
    """

    image: np.ndarray
    columns: np.ndarray
    is_particle: np.ndarray
    pixel_size_pm: float
    vacuum_level: float


def gaussian_columns(
    shape: tuple[int, int],
    centres: np.ndarray,
    sigma_px: float,
    amplitudes: np.ndarray | float,
    background: np.ndarray | float,
) -> np.ndarray:
    """Sum of isotropic Gaussians (peak ``amplitudes``) on ``background``.

    Parameters
    ----------
    shape : tuple of int
        Output (H, W).
    centres : numpy.ndarray
        (N, 2) row/col centres in pixels (sub-pixel allowed).
    sigma_px : float
        Gaussian standard deviation, pixels.
    amplitudes : float or numpy.ndarray
        Peak height of each column (negative for dark columns).
    background : float or numpy.ndarray
        Level under the columns.

    Returns
    -------
    numpy.ndarray
        float32 image.
    """
    img = np.zeros(shape, dtype=np.float64) + background
    amps = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (len(centres),))
    r = int(np.ceil(5 * sigma_px))
    for (cy, cx), a in zip(np.asarray(centres, dtype=np.float64), amps):
        y0, y1 = max(0, int(cy) - r), min(shape[0], int(cy) + r + 2)
        x0, x1 = max(0, int(cx) - r), min(shape[1], int(cx) + r + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px**2))
    return img.astype(np.float32)


def _lattice(a1: np.ndarray, a2: np.ndarray, basis: list[tuple[float, float]], extent: float):
    n = int(np.ceil(extent / min(np.linalg.norm(a1), np.linalg.norm(a2)))) + 2
    pts = []
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            for b1, b2 in basis:
                pts.append((i + b1) * a1 + (j + b2) * a2)
    return np.array(pts)


def pt_on_ceo2_phantom(
    shape: tuple[int, int] = (512, 512),
    *,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    vacuum_level: float = 0.45,
    particle_radius_a: float = 10.0,
    rotation_deg: float = 0.0,
    seed: int | None = 0,
) -> Phantom:
    """Return a particle of Pt columns on a CeO2 support, white-column contrast.

    The support fills the bottom quarter of the frame, the particle (a
    truncated disc of about ``particle_radius_a``) sits on it, vacuum above.
    Column positions get a small random jitter (``seed``) so that detection is
    not tested on a perfect grid only.

    Parameters
    ----------
    shape : tuple of int
        Frame size (H, W) in pixels.
    pixel_size_pm : float
        Pixel size in picometres.
    vacuum_level : float
        Counts per pixel in vacuum.
    particle_radius_a : float
        Particle radius in Angstrom.
    rotation_deg : float
        In-plane rotation of both lattices, degrees.
    seed : int, optional
        Seed of the jitter.

    Returns
    -------
    Phantom
        The clean image and its column truth.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    px = pixel_size_pm / 100.0  # Angstrom per pixel
    th = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    surface_row = h * 0.75
    centre = np.array([surface_row - 0.85 * particle_radius_a / px, w / 2])
    extent = max(h, w) * px
    # Pt [110]: rectangular a x a/sqrt2 cell with a centred column (rows, cols in A)
    pt = _lattice(np.array([PT_A, 0.0]), np.array([0.0, PT_A / np.sqrt(2)]),
                  [(0, 0), (0.5, 0.5)], extent)
    # CeO2 [110], Ce sublattice (fcc, a = 5.411): same motif, larger cell
    ce = _lattice(np.array([CEO2_A, 0.0]), np.array([0.0, CEO2_A / np.sqrt(2)]),
                  [(0, 0), (0.5, 0.5)], extent)
    pt = pt @ rot.T / px + centre
    ce = ce @ rot.T / px + np.array([surface_row + 1.2 / px, w / 2])
    d = np.linalg.norm(pt - centre, axis=1)
    in_particle = (d < particle_radius_a / px) & (pt[:, 0] < surface_row)
    in_support = ce[:, 0] > surface_row
    pts = np.concatenate([pt[in_particle], ce[in_support]])
    is_particle = np.concatenate([np.ones(in_particle.sum(), bool), np.zeros(in_support.sum(), bool)])
    pts = pts + rng.normal(0, 0.05 / px, pts.shape)  # 5 pm jitter
    inside = (pts[:, 0] > -20) & (pts[:, 0] < h + 20) & (pts[:, 1] > -20) & (pts[:, 1] < w + 20)
    pts, is_particle = pts[inside], is_particle[inside]
    sigma = 0.45 / px  # column half-width ~0.5 A
    amps = np.where(is_particle, 0.22, 0.14) * vacuum_level / 0.45
    # material absorbs/scatters a little: a slightly darker background inside
    yy = np.arange(h)[:, None]
    bg = np.where(yy > surface_row, 0.9, 1.0) * np.ones((1, w))
    rr = np.hypot(yy - centre[0], np.arange(w)[None, :] - centre[1])
    bg = np.where((rr < particle_radius_a / px + 0.3 / px) & (yy <= surface_row), 0.92, bg)
    from scipy.ndimage import gaussian_filter

    bg = gaussian_filter(bg, 0.8 / px) * vacuum_level
    img = gaussian_columns(shape, pts, sigma, amps, bg)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    return Phantom(img, pts[keep], is_particle[keep], pixel_size_pm, vacuum_level)
