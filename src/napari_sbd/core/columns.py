"""Atomic columns in a denoised frame: detection, surface/bulk split, recovery metrics.

Detection is Laplacian-of-Gaussian blob detection (scikit-image ``blob_log``,
as in the Microsc. Microanal. paper) on the denoised frame, with every
parameter in physical units, followed by a sub-pixel centroid refinement and a
contrast test that keeps only columns standing out from their surroundings by
at least ``min_contrast`` counts per pixel (so the flat vacuum of a denoised
frame yields no column).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull, QhullError

from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.core.vacuum import VacuumNotFound, vacuum_mask

__all__ = [
    "Columns",
    "RecoveryMetrics",
    "detect_columns",
    "recovery_metrics",
    "structure_recovery",
    "surface_mask",
]


@dataclass
class Columns:
    """Detected atomic columns of one frame.

    Attributes
    ----------
    centres : numpy.ndarray
        (N, 2) float row/col, pixels (sub-pixel).
    sigma : numpy.ndarray
        (N,) LoG scale of each column, pixels.
    peak : numpy.ndarray
        (N,) denoised value at the centre, counts per pixel.
    contrast : numpy.ndarray
        (N,) peak minus the local background, counts per pixel (negative
        columns, in ``dark`` mode, are reported as positive contrast).
    pixel_size_pm : float
        Pixel size used for the physical parameters.
    """

    centres: np.ndarray
    sigma: np.ndarray
    peak: np.ndarray
    contrast: np.ndarray
    pixel_size_pm: float
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        """Return the number of columns."""
        return len(self.centres)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: D105 - numpy protocol
        return np.asarray(self.centres, dtype=dtype)

    @property
    def sigma_a(self) -> np.ndarray:
        """Column scale in Angstrom."""
        return self.sigma * self.pixel_size_pm / 100.0

    def subset(self, keep: np.ndarray) -> Columns:
        """Return the columns selected by a boolean mask or index array (e.g. a region of interest)."""
        keep = np.asarray(keep)
        return Columns(self.centres[keep], self.sigma[keep], self.peak[keep], self.contrast[keep],
                       self.pixel_size_pm, dict(self.params))

    @classmethod
    def empty(cls, pixel_size_pm: float) -> Columns:
        """No columns."""
        z = np.zeros(0)
        return cls(np.zeros((0, 2)), z, z.copy(), z.copy(), pixel_size_pm)


def _vacuum_texture(img: np.ndarray, detail: np.ndarray, pixel_size_pm: float,
                    vacuum: np.ndarray | None) -> float | None:
    """Robust std (1.4826 MAD) of the detail image in the vacuum; None without vacuum."""
    if vacuum is None:
        try:
            vacuum = vacuum_mask(img, pixel_size_pm)
        except VacuumNotFound:
            return None
    vacuum = np.asarray(vacuum, dtype=bool)
    if vacuum.shape != img.shape:
        raise ValueError(f"the vacuum mask has shape {vacuum.shape}, the frame {img.shape}")
    if vacuum.sum() < 100:
        return None
    d = detail[vacuum]
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def _refine(img: np.ndarray, centres: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Background-subtracted intensity centroid, iterated (sub-pixel positions)."""
    h, w = img.shape
    out = centres.astype(np.float64).copy()
    for _ in range(3):
        for k, (r0, c0) in enumerate(out):
            rad = max(2.0, float(radius[k]))
            y0, y1 = int(max(0, np.floor(r0 - rad))), int(min(h, np.ceil(r0 + rad) + 1))
            x0, x1 = int(max(0, np.floor(c0 - rad))), int(min(w, np.ceil(c0 + rad) + 1))
            yy, xx = np.mgrid[y0:y1, x0:x1]
            win = img[y0:y1, x0:x1]
            inside = (yy - r0) ** 2 + (xx - c0) ** 2 <= rad**2
            wts = np.where(inside, win - win[inside].min(), 0.0)
            total = wts.sum()
            if total > 0:
                new = np.array([(wts * yy).sum() / total, (wts * xx).sum() / total])
                # never let the refinement walk off to a neighbour
                if np.hypot(*(new - centres[k])) <= rad:
                    out[k] = new
    return out


def detect_columns(
    denoised: np.ndarray,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    *,
    min_sigma_a: float = 0.2,
    max_sigma_a: float = 0.7,
    num_sigma: int = 6,
    min_contrast: float = 0.03,
    min_distance_a: float = 1.0,
    dark: bool = False,
    exclude_border_a: float = 2.0,
    vacuum_floor: float | None = 4.0,
    vacuum: np.ndarray | None = None,
) -> Columns:
    """Find atomic columns in a denoised frame by LoG blob detection.

    Parameters
    ----------
    denoised : numpy.ndarray
        (H, W) denoised frame, counts per pixel.
    pixel_size_pm : float
        Pixel size in picometres (6.1 for the papers' data).
    min_sigma_a, max_sigma_a : float
        Range of the column's Gaussian sigma, Angstrom (HRTEM columns at
        300 kV: about 0.3-0.6 A).
    num_sigma : int
        Scales tried between them.
    min_contrast : float
        Minimum peak height above the local background, counts per pixel
        (0.03 is about 7% of the papers' vacuum level).
    min_distance_a : float
        Two detections closer than this are one column, Angstrom.
    dark : bool
        Look for dark columns (contrast reversal at other defoci).
    exclude_border_a : float
        Ignore detections this close to the frame edge, Angstrom (the
        network sees less context there: its edge artefacts look like columns).
    vacuum_floor : float or None
        Raise the contrast threshold to this many robust standard deviations
        of the denoised vacuum's local detail: a network leaves a faint
        texture in the vacuum, and LoG finds "columns" in it. None: off; also
        off when the frame has no vacuum.
    vacuum : numpy.ndarray, optional
        (H, W) bool vacuum mask; by default found with
        :func:`napari_sbd.core.vacuum.vacuum_mask`.

    Returns
    -------
    Columns
        Centres (sub-pixel row/col), sigma, peak value and contrast; ``params``
        records the contrast threshold used and the vacuum texture it came from.
    """
    from skimage.feature import blob_log

    img = np.asarray(denoised, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"detect_columns works on one (H, W) frame, got shape {img.shape}")
    if min(img.shape) < 8:
        raise ValueError(f"the frame is {img.shape[0]}x{img.shape[1]} pixels: too small to hold "
                         "atomic columns (at least 8x8)")
    if not np.isfinite(img).all():
        raise ValueError("the denoised frame has NaN or infinite values")
    if not pixel_size_pm > 0:
        raise ValueError(f"pixel_size_pm must be positive, got {pixel_size_pm}")
    if not 0 < min_sigma_a <= max_sigma_a:
        raise ValueError("need 0 < min_sigma_a <= max_sigma_a (Angstrom)")
    px_a = pixel_size_pm / 100.0
    signed = -img if dark else img
    smin, smax = min_sigma_a / px_a, max_sigma_a / px_a
    # local background: a wide average removes the vacuum level and slow variations
    background = gaussian_filter(signed, 3 * smax, mode="nearest")
    detail = signed - background
    texture = _vacuum_texture(img, detail, pixel_size_pm, vacuum) if vacuum_floor else None
    threshold = (max(min_contrast, vacuum_floor * texture)
                 if vacuum_floor and texture is not None else min_contrast)
    params = dict(min_sigma_a=min_sigma_a, max_sigma_a=max_sigma_a, min_contrast=min_contrast,
                  dark=dark, min_distance_a=min_distance_a, vacuum_floor=vacuum_floor,
                  vacuum_texture=texture, contrast_threshold=threshold)
    blobs = blob_log(detail, min_sigma=smin, max_sigma=smax, num_sigma=num_sigma,
                     threshold=min_contrast / 10, overlap=0.5, exclude_border=False)
    if len(blobs) == 0:
        out = Columns.empty(pixel_size_pm)
        out.params = params
        return out
    centres = blobs[:, :2]
    sigma = blobs[:, 2]
    centres = _refine(detail, centres, 1.5 * sigma)
    # contrast: centre value against the mean of a ring just outside the column
    h, w = img.shape
    rc = np.clip(np.round(centres).astype(int), [0, 0], [h - 1, w - 1])
    peak_signed = signed[rc[:, 0], rc[:, 1]]
    ring = uniform_filter(signed, size=int(2 * np.ceil(3 * smax) + 1), mode="nearest")
    contrast = peak_signed - ring[rc[:, 0], rc[:, 1]]
    border = exclude_border_a / px_a
    keep = (contrast >= threshold) & (centres[:, 0] >= border) & (centres[:, 0] <= h - 1 - border)
    keep &= (centres[:, 1] >= border) & (centres[:, 1] <= w - 1 - border)
    centres, sigma, contrast = centres[keep], sigma[keep], contrast[keep]
    # merge duplicates (the strongest wins)
    order = np.argsort(-contrast)
    taken: list[int] = []
    dmin = min_distance_a / px_a
    for i in order:
        if all(np.hypot(*(centres[i] - centres[j])) >= dmin for j in taken):
            taken.append(i)
    idx = np.array(sorted(taken, key=lambda i: (centres[i, 0], centres[i, 1])), dtype=int)
    centres, sigma, contrast = centres[idx], sigma[idx], contrast[idx]
    rc = np.clip(np.round(centres).astype(int), [0, 0], [h - 1, w - 1])
    return Columns(centres, sigma, img[rc[:, 0], rc[:, 1]], contrast, pixel_size_pm, params)


def surface_mask(centres: np.ndarray, tolerance_px: float = 2.0) -> np.ndarray:
    """Return True for columns on the convex hull of ``centres`` (the surface), False inside (bulk).

    As in the Microsc. Microanal. paper (a Graham scan on the particle's
    columns): a column is at the surface when it lies on the hull's boundary,
    within ``tolerance_px`` of one of its edges (so columns along a flat facet
    count, not only the corners).

    Parameters
    ----------
    centres : numpy.ndarray
        (N, 2) column centres of ONE particle.
    tolerance_px : float
        Distance to a hull edge still counted as on it, pixels.

    Returns
    -------
    numpy.ndarray
        (N,) bool.
    """
    pts = np.asarray(centres, dtype=np.float64)
    n = len(pts)
    if n <= 3:
        return np.ones(n, dtype=bool)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # all on a line: everything is surface
        return np.ones(n, dtype=bool)
    # hull.equations: a.x + b <= 0 inside; distance to each facet line
    dist = -(pts @ hull.equations[:, :2].T + hull.equations[:, 2])
    return dist.min(axis=1) <= tolerance_px


@dataclass(frozen=True)
class RecoveryMetrics:
    """Set agreement between reference columns A and detected columns B."""

    precision: float
    recall: float
    f1: float
    jaccard: float
    matched: int
    n_reference: int
    n_detected: int


def recovery_metrics(
    reference: np.ndarray,
    detected: np.ndarray,
    match_distance_a: float = 0.5,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
) -> RecoveryMetrics:
    """Precision |A and B|/|B|, recall |A and B|/|A|, F1 and Jaccard |A and B|/|A or B|.

    Two columns are the same when a one-to-one matching (Hungarian, minimum
    total distance) pairs them within ``match_distance_a``.

    Parameters
    ----------
    reference, detected : numpy.ndarray
        (N, 2) and (M, 2) centres, pixels.
    match_distance_a : float
        Largest distance between matched columns, Angstrom.
    pixel_size_pm : float
        Pixel size, picometres.

    Returns
    -------
    RecoveryMetrics
        The four metrics (1.0 for two empty sets).
    """
    a = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    matched = 0
    if len(a) and len(b):
        d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
        limit = match_distance_a / (pixel_size_pm / 100.0)
        cost = np.where(d <= limit, d, 1e6)
        ri, ci = linear_sum_assignment(cost)
        matched = int((cost[ri, ci] <= limit).sum())
    na, nb = len(a), len(b)
    precision = matched / nb if nb else (1.0 if na == 0 else 0.0)
    recall = matched / na if na else (1.0 if nb == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    union = na + nb - matched
    jaccard = matched / union if union else 1.0
    return RecoveryMetrics(precision, recall, f1, jaccard, matched, na, nb)


def structure_recovery(
    reference: np.ndarray,
    detected: np.ndarray,
    match_distance_a: float = 0.5,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    tolerance_px: float = 2.0,
) -> dict[str, RecoveryMetrics]:
    """Return the papers' surface and bulk recovery metrics (Microsc. Microanal. Fig. 5).

    The surface of each set is found on that set's own convex hull (A's
    surface from the reference, B's from the detection), then the metrics are
    computed for surface and bulk apart.

    Parameters
    ----------
    reference, detected : numpy.ndarray
        Column centres of the particle, pixels.
    match_distance_a : float
        Matching distance, Angstrom.
    pixel_size_pm : float
        Pixel size, picometres.
    tolerance_px : float
        See :func:`surface_mask`.

    Returns
    -------
    dict
        ``{"surface": RecoveryMetrics, "bulk": RecoveryMetrics}``.
    """
    a = np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    sa, sb = surface_mask(a, tolerance_px), surface_mask(b, tolerance_px)
    return {
        "surface": recovery_metrics(a[sa], b[sb], match_distance_a, pixel_size_pm),
        "bulk": recovery_metrics(a[~sa], b[~sb], match_distance_a, pixel_size_pm),
    }
