"""Atomic columns in a frame: detection, sub-pixel positions, surface/bulk split, recovery metrics.

Detection reads its scale and thresholds from the frame (:func:`detect_columns`):
the column spacing from the autocorrelation, bright or dark columns from the
skew, a contrast threshold relative to the frame's own strong columns and
noise (and to the texture of its vacuum, where it has one), then a 2-D
Gaussian fit of every column with the standard error of its position. So it
works at any pixel size and in any intensity units, with or without vacuum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.optimize import linear_sum_assignment
from scipy.spatial import ConvexHull, QhullError

from napari_sbd.core.baselines import anscombe
from napari_sbd.core.inputs import real_values
from napari_sbd.core.lattice import (
    LatticeNotFound,
    column_polarity,
    column_spacing,
    counts_polarity,
    high_pass,
)
from napari_sbd.core.units import PAPERS_PIXEL_SIZE_PM
from napari_sbd.core.vacuum import VacuumNotFound, vacuum_mask

__all__ = [
    "Columns",
    "LatticeNotFound",
    "RecoveryMetrics",
    "detect_columns",
    "fit_gaussians",
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
        (N,) Gaussian sigma of each column from the fit, pixels (NaN where the
        fit failed and the smoothed peak's position was kept).
    peak : numpy.ndarray
        (N,) image value at the centre, in the image's units.
    contrast : numpy.ndarray
        (N,) height of the fitted Gaussian above its local background, image
        units (dark columns are reported as positive contrast).
    pixel_size_pm : float
        Pixel size used for the physical parameters.
    params : dict
        How the columns were found (spacing, polarity, thresholds).
    position_error_pm : numpy.ndarray
        (N,) standard error of each position from the Gaussian fit, pm (NaN
        where the fit failed).
    intensity : numpy.ndarray
        (N,) integrated intensity of the fitted Gaussian above its background,
        image units x pixels (an occupancy proxy: more atoms, more intensity).
    """

    centres: np.ndarray
    sigma: np.ndarray
    peak: np.ndarray
    contrast: np.ndarray
    pixel_size_pm: float
    params: dict = field(default_factory=dict)
    position_error_pm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intensity: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        """Fill the fit's fields with NaN when they were not given."""
        n = len(self.centres)
        if len(self.position_error_pm) != n:
            self.position_error_pm = np.full(n, np.nan)
        if len(self.intensity) != n:
            self.intensity = np.full(n, np.nan)

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
                       self.pixel_size_pm, dict(self.params), self.position_error_pm[keep],
                       self.intensity[keep])

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


def pixel_noise(image: np.ndarray) -> float:
    """Robust standard deviation of a frame's pixel noise, in the frame's units.

    From the diagonal detail of 2x2 blocks, ``(a - b - c + d) / 2``: white
    noise of standard deviation s gives exactly s there (no calibration
    factor to get wrong), and smooth structure cancels to second order. The
    median absolute deviation keeps a particle's edges and columns out.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    q = img[:h, :w]
    hh = (q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) / 2
    return 1.4826 * float(np.median(np.abs(hh - np.median(hh))))


def _is_counts(img: np.ndarray) -> bool:
    """Whether a frame looks like raw electron counts: non-negative whole numbers."""
    return bool(img.min() >= 0 and np.array_equal(img, np.round(img)))


def is_poisson_counts(image: np.ndarray) -> bool:
    """Whether a frame holds raw electron counts with Poisson noise (one count per electron).

    Non-negative whole numbers whose pixel noise (:func:`pixel_noise`) agrees
    with Poisson's ``sqrt(mean)``. Integers that disagree are read as detector
    units: a detail above 1.5x the Poisson value is a gain (several counts per
    electron), one under half of it in a frame without zeros an offset (which
    the mean includes and the noise does not). Below about 0.3 counts per
    pixel the detail rounds to zero, and the frame's zeros say it is counts.
    Finely sampled columns inflate the detail (1.3x at 3.75 px apart and 200
    counts), within the band.
    """
    img = np.asarray(image, dtype=np.float64)
    return _is_counts(img) and _noise_is_poissons(img, pixel_noise(img))


def _noise_is_poissons(counts: np.ndarray, detail: float) -> bool:
    """Whether whole-number ``counts`` with pixel noise ``detail`` are one count per electron."""
    poisson = float(np.sqrt(counts.mean()))
    gain = detail > 1.5 * poisson
    offset = detail < 0.5 * poisson and counts.min() > 0
    return not (gain or offset)


def _hysteresis(points: np.ndarray, score: np.ndarray, strong: float, weak: float,
                spacing: float, neighbours: int = 3) -> np.ndarray:
    """Keep strong points, and weak ones where the lattice has a column.

    Strong: scoring ``strong`` or more. Weak: scoring ``weak`` or more, with at
    least ``neighbours`` kept points one lattice step away (0.75-1.25
    ``spacing``) and none closer; grown from the strong ones until nothing
    changes.

    Hysteresis, as in Canny's edge detector: a candidate a little above the
    noise is a column when it sits where the lattice has a column, inside it
    (a lattice site beyond a straight edge has at most two neighbours), and
    noise when it stands alone, between columns or beyond the lattice's edge.
    """
    from scipy.spatial import cKDTree

    keep = score >= strong
    maybe = np.flatnonzero((score >= weak) & ~keep)
    while len(maybe) and keep.any():
        tree = cKDTree(points[keep])
        inner = np.array([len(g) for g in tree.query_ball_point(points[maybe], 0.75 * spacing)])
        outer = np.array([len(g) for g in tree.query_ball_point(points[maybe], 1.25 * spacing)])
        ok = (inner == 0) & (outer - inner >= neighbours)
        if not ok.any():
            break
        chosen: list[int] = []  # two weak candidates close together: the stronger one
        for i in maybe[ok][np.argsort(-score[maybe[ok]], kind="stable")]:
            if all(np.hypot(*(points[i] - points[j])) >= 0.75 * spacing for j in chosen):
                chosen.append(int(i))
        keep[chosen] = True
        maybe = maybe[(inner == 0) & ~keep[maybe]]
    return keep


def _windows(img: np.ndarray, centres: np.ndarray, radius: int):
    """Square windows (N, 2r+1, 2r+1) around rounded centres, edge-replicated, and their origins."""
    pad = np.pad(img, radius, mode="edge")
    rc = np.round(centres).astype(int)
    k = np.arange(-radius, radius + 1)
    rows = rc[:, 0, None, None] + radius + k[None, :, None]
    cols = rc[:, 1, None, None] + radius + k[None, None, :]
    return pad[rows, cols], rc


def fit_gaussians(img: np.ndarray, centres: np.ndarray, sigma0: np.ndarray | float,
                  radius: int, iterations: int = 20) -> dict[str, np.ndarray]:
    """Least-squares fit of an isotropic 2-D Gaussian on a constant to every column at once.

    Model ``B + A exp(-|p - c|^2 / (2 s^2))`` on a disc of ``radius`` pixels
    around each start, by Levenberg-Marquardt steps batched over all
    columns (numpy, no per-column Python loop). The standard errors come from
    the fit's residuals: sqrt(diag(RSS / (n - 5) (J^T J)^-1)).

    Parameters
    ----------
    img : numpy.ndarray
        (H, W) image with the columns as positive peaks.
    centres : numpy.ndarray
        (N, 2) starting row/col, pixels.
    sigma0 : float or numpy.ndarray
        Starting sigma, pixels.
    radius : int
        Fit disc radius, pixels (about half the distance to the neighbours).
    iterations : int
        Levenberg-Marquardt steps.

    Returns
    -------
    dict
        ``centres`` (N, 2), ``sigma``, ``amplitude``, ``background``,
        ``centre_error`` (standard error of the position, pixels, the mean of
        the two axes' variances), ``ok`` (converged inside the disc with a
        positive amplitude and a sigma between 0.3 px and the radius).
    """
    n = len(centres)
    if n == 0:
        z = np.zeros(0)
        return {"centres": np.zeros((0, 2)), "sigma": z, "amplitude": z, "background": z,
                "centre_error": z, "ok": np.zeros(0, dtype=bool)}
    win, rc = _windows(np.asarray(img, dtype=np.float64), centres, radius)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    yy, xx = np.meshgrid(k, k, indexing="ij")
    disc = (yy**2 + xx**2 <= radius**2).ravel()
    y, x = yy.ravel()[disc], xx.ravel()[disc]
    data = win.reshape(n, -1)[:, disc]
    m = disc.sum()
    # parameters: amplitude, row, col (relative to the rounded start), sigma, background
    bg0 = np.percentile(data, 10, axis=1)
    p = np.stack([data.max(axis=1) - bg0, centres[:, 0] - rc[:, 0], centres[:, 1] - rc[:, 1],
                  np.broadcast_to(np.asarray(sigma0, dtype=np.float64), (n,)).copy(), bg0], axis=1)
    lam = np.full(n, 1e-2)

    def model(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amp, r0, c0, sg, bg = (q[:, i, None] for i in range(5))
        dy, dx = y[None] - r0, x[None] - c0
        g = np.exp(-(dy**2 + dx**2) / (2 * sg**2))
        jac = np.stack([g, amp * g * dy / sg**2, amp * g * dx / sg**2,
                        amp * g * (dy**2 + dx**2) / sg**3, np.ones_like(g)], axis=2)
        return bg + amp * g, jac

    fit, jac = model(p)
    cost = ((fit - data) ** 2).sum(axis=1)
    eye = np.eye(5)
    for _ in range(iterations):
        jtj = np.einsum("nmi,nmj->nij", jac, jac)
        jtr = np.einsum("nmi,nm->ni", jac, data - fit)
        damp = jtj + lam[:, None, None] * (jtj * eye)
        try:
            step = np.linalg.solve(damp + 1e-12 * eye, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        trial = p + step
        trial[:, 3] = np.abs(trial[:, 3]) + 1e-3
        tfit, tjac = model(trial)
        tcost = ((tfit - data) ** 2).sum(axis=1)
        better = np.isfinite(tcost) & (tcost < cost)
        p[better], fit[better], jac[better] = trial[better], tfit[better], tjac[better]
        cost[better] = tcost[better]
        lam = np.where(better, lam / 3, lam * 4)
    jtj = np.einsum("nmi,nmj->nij", jac, jac)
    with np.errstate(invalid="ignore"):
        cov = np.linalg.pinv(jtj) * (cost / max(m - 5, 1))[:, None, None]
        err = np.sqrt(np.clip((cov[:, 1, 1] + cov[:, 2, 2]) / 2, 0, None))
    shift = np.hypot(p[:, 1] - (centres[:, 0] - rc[:, 0]), p[:, 2] - (centres[:, 1] - rc[:, 1]))
    ok = (np.isfinite(p).all(axis=1) & (p[:, 0] > 0) & (p[:, 3] > 0.3) & (p[:, 3] < radius)
          & (shift < radius / 2))
    return {"centres": np.stack([rc[:, 0] + p[:, 1], rc[:, 1] + p[:, 2]], axis=1),
            "sigma": p[:, 3], "amplitude": p[:, 0], "background": p[:, 4],
            "centre_error": err, "ok": ok}


def detect_columns(
    image: np.ndarray,
    pixel_size_pm: float = PAPERS_PIXEL_SIZE_PM,
    *,
    spacing_a: float | None = None,
    polarity: str = "auto",
    threshold: float = 0.4,
    min_contrast: float | None = None,
    vacuum_floor: float | None = 4.0,
    vacuum: np.ndarray | None = None,
    exclude_border_a: float | None = None,
) -> Columns:
    """Find atomic columns, with every scale and threshold read from the frame itself.

    1. **Scale**: the nearest-neighbour column spacing ``d`` from the frame's
       autocorrelation (:func:`~napari_sbd.core.lattice.column_spacing`),
       unless ``spacing_a`` gives it. Everything else follows from ``d``:
       slow variations removed above ``d``, smoothing ``d/8``, candidates
       at least ``d/2`` apart, fit discs of ``0.35 d``.
    2. **Polarity**: bright or dark columns from the skew of the frame's
       detail (``polarity="auto"``; on raw counts after the Anscombe
       transform, since Poisson noise is itself skewed), or as given.
    3. **Threshold, relative**: a candidate is a column when its contrast
       (smoothed peak minus the mean of its ``d``-wide neighbourhood) reaches
       ``threshold`` times the typical contrast of the frame's strongest
       columns, and stands above the frame's own pixel noise (3 robust
       standard deviations) and, where the frame has a vacuum, above
       ``vacuum_floor`` standard deviations of the vacuum's texture (a
       network leaves a faint texture there). So counts, normalised and
       detector-unit frames behave alike; ``min_contrast`` adds an absolute
       floor in the image's units. Raw counts (:func:`is_poisson_counts`)
       are judged after the Anscombe transform, where the Poisson noise is
       the same everywhere, unless ``min_contrast`` is given (``params
       ["units"]`` says which units the thresholds are in). Hysteresis: a
       candidate above the relative threshold but under the noise-driven floors (down to 2
       standard deviations of the pixel noise; a vacuum's texture beyond the
       pixel noise is never relaxed) is a column where the lattice has one:
       with at least three kept columns one spacing away and none closer.
    4. **Sub-pixel refinement**: a 2-D Gaussian fit of every column
       (:func:`fit_gaussians`), with the standard error of its position.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) frame (denoised, or any clean-enough image), any units.
    pixel_size_pm : float
        Pixel size in picometres; converts to Angstrom only.
    spacing_a : float, optional
        Nearest-neighbour column spacing, Angstrom (estimated when omitted).
    polarity : {"auto", "bright", "dark"}
        Columns brighter or darker than their surroundings.
    threshold : float
        Minimum contrast relative to the frame's strong columns (0-1). The
        default was chosen on validation structures (seeds 8000+, never the
        test sets) denoised by the bundled default: ``benchmarks/column_defaults.py``
        (docs/column-defaults.md).
    min_contrast : float, optional
        Absolute minimum contrast, in the image's units.
    vacuum_floor : float or None
        Robust standard deviations of the vacuum's texture a column must
        exceed (None: off; also off when the frame has no vacuum).
    vacuum : numpy.ndarray, optional
        (H, W) bool vacuum mask; by default found with
        :func:`napari_sbd.core.vacuum.vacuum_mask`.
    exclude_border_a : float, optional
        Ignore columns this close to the frame edge, Angstrom. By default half
        the column spacing: a column whose fit disc (0.35 d) lies inside the
        frame is kept, so the last row of a support at the frame's edge is
        marked.

    Returns
    -------
    Columns
        ``params`` records the spacing, polarity and thresholds used.

    Raises
    ------
    ValueError
        Bad input; :class:`~napari_sbd.core.lattice.LatticeNotFound` when no
        spacing is given and the frame shows no lattice.
    """
    from skimage.feature import peak_local_max

    img = real_values(image, "the frame")
    if img.ndim != 2:
        raise ValueError(f"detect_columns works on one (H, W) frame, got shape {img.shape}")
    if min(img.shape) < 8:
        raise ValueError(f"the frame is {img.shape[0]}x{img.shape[1]} pixels: too small to hold "
                         "atomic columns (at least 8x8)")
    if not np.isfinite(img).all():
        raise ValueError("the frame has NaN or infinite values")
    if not pixel_size_pm > 0:
        raise ValueError(f"pixel_size_pm must be positive, got {pixel_size_pm}")
    if polarity not in ("auto", "bright", "dark"):
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is relative to the strong columns: 0 <= threshold < 1, got {threshold}")
    px_a = pixel_size_pm / 100.0
    if float(img.max() - img.min()) <= 0:
        raise LatticeNotFound("the frame is uniform: no columns")
    if spacing_a is not None:
        if not spacing_a > 0:
            raise ValueError(f"spacing_a must be a positive distance in Angstrom, got {spacing_a}")
        spacing, strength = spacing_a / px_a, float("nan")
    else:
        spacing, strength = column_spacing(img)
    if spacing < 3:
        message = (f"columns {spacing:.1f} px apart are too finely sampled to locate (at least "
                   "3 px apart): record at a finer pixel size")
        if spacing_a is None:  # a periodicity that fine is noise or texture, not columns
            raise LatticeNotFound(f"no atomic lattice found in this frame ({message}); if it "
                                  "holds columns, give their spacing (spacing_a, Angstrom)")
        raise ValueError(message)
    # Raw counts are judged after the Anscombe transform, where Poisson noise has unit
    # variance everywhere: each candidate against its own noise (a dark column has fewer
    # counts, so less noise, than the background around it; the pixel detail also reads
    # finely sampled columns as noise). An absolute min_contrast keeps the frame's units.
    counts, detail_noise = _is_counts(img), pixel_noise(img)
    stabilise = min_contrast is None and counts and _noise_is_poissons(img, detail_noise)
    detail = high_pass(anscombe(img) if stabilise else img, spacing)
    smooth_px = max(0.7, spacing / 8)
    smooth = gaussian_filter(detail, smooth_px, mode="nearest")
    if polarity == "auto":  # on the smoothed detail: pixel noise has a skew of its own
        if counts and not stabilise:
            polarity = counts_polarity(img, spacing, smooth_px)
        else:
            polarity = column_polarity(smooth)
    if polarity == "dark":
        smooth = -smooth
    # pixel noise, carried through the smoothing: 1 after the transform (a little less
    # under a count per pixel: the floors then err on the side of fewer columns)
    noise = 1.0 if stabilise else detail_noise
    smooth_noise = noise / (2 * np.sqrt(np.pi) * smooth_px)
    noise_floor = 3 * smooth_noise
    texture = _vacuum_texture(img, smooth, pixel_size_pm, vacuum) if vacuum_floor else None
    h, w = img.shape
    border = int(np.ceil(spacing / 2 if exclude_border_a is None else exclude_border_a / px_a))
    params: dict = dict(spacing_a=spacing * px_a, lattice_strength=strength, polarity=polarity,
                        units="anscombe" if stabilise else "frame",
                        threshold=threshold, min_contrast=min_contrast, vacuum_floor=vacuum_floor,
                        vacuum_texture=texture, noise=noise)
    peaks = peak_local_max(smooth, min_distance=max(1, int(spacing / 2)),
                           exclude_border=max(border, 1))
    if len(peaks) == 0:
        out = Columns.empty(pixel_size_pm)
        out.params = params | {"contrast_threshold": float("nan")}
        return out
    ring = uniform_filter(smooth, size=int(2 * np.ceil(spacing / 2) + 1), mode="nearest")
    contrast = smooth[peaks[:, 0], peaks[:, 1]] - ring[peaks[:, 0], peaks[:, 1]]
    top = np.sort(contrast)[::-1][: max(5, len(contrast) // 10)]
    floors = [threshold * float(np.median(top)), noise_floor]
    weak = [floors[0], 2 * smooth_noise]
    if texture is not None and vacuum_floor:
        floors.append(vacuum_floor * texture)
        # texture beyond the pixel noise (what a network leaves in the vacuum) is never
        # relaxed; the part that is pixel noise (all of it in a raw frame) is, like the
        # noise floor, for candidates where the lattice has a column
        weak.append(vacuum_floor * float(np.sqrt(max(texture**2 - smooth_noise**2, 0.0))))
    if min_contrast is not None:
        floors.append(float(min_contrast))
        weak.append(float(min_contrast))
    cut = max(floors)
    params["contrast_threshold"] = cut
    params["weak_contrast_threshold"] = max(weak)
    keep = _hysteresis(peaks, contrast, cut, max(weak), spacing)
    peaks, contrast = peaks[keep], contrast[keep]
    radius = max(2, round(0.35 * spacing))
    # the fit sees the image itself (a high-pass would bend the columns at a lattice's edge)
    fit = fit_gaussians(-img if polarity == "dark" else img, peaks.astype(np.float64),
                        max(1.0, spacing / 6), radius)
    centres = np.where(fit["ok"][:, None], fit["centres"], peaks.astype(np.float64))
    sigma = np.where(fit["ok"], fit["sigma"], np.nan)
    error = np.where(fit["ok"], fit["centre_error"], np.nan)
    inside = ((centres[:, 0] >= border) & (centres[:, 0] <= h - 1 - border)
              & (centres[:, 1] >= border) & (centres[:, 1] <= w - 1 - border))
    order = np.lexsort((centres[inside, 1], centres[inside, 0]))
    idx = np.flatnonzero(inside)[order]
    rc = np.clip(np.round(centres[idx]).astype(int), [0, 0], [h - 1, w - 1])
    # reported contrast: the fitted peak height above the fitted background (the smoothed
    # contrast, which decided, where the fit failed)
    amp = np.where(fit["ok"], fit["amplitude"], contrast)[idx]
    return Columns(centres[idx], sigma[idx], img[rc[:, 0], rc[:, 1]], amp, pixel_size_pm,
                   params, position_error_pm=error[idx] * pixel_size_pm,
                   intensity=2 * np.pi * amp * np.nan_to_num(sigma[idx], nan=spacing / 6) ** 2)


def keyword_defaults(func: Any) -> dict[str, Any]:
    """Return the defaults of ``func``'s keyword parameters, read from its signature."""
    import inspect

    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def detection_defaults() -> dict[str, Any]:
    """Return the keyword defaults of :func:`detect_columns` (one source: CLI and dock)."""
    return keyword_defaults(detect_columns)


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
